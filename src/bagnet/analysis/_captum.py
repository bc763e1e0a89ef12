"""White-box attributions of reference networks through captum, reduced to image cells.

captum's DeepLift and LRP walk a network's *modules*: they break on a ReLU module used
twice (torchvision's ResNet blocks reuse ``self.relu``), and LRP silently produces
garbage on residual additions written as ``out += identity``. :func:`captum_ready`
rewrites a copy of the network with ``torch.fx`` so that every ReLU call has its own
module and every tensor addition is captum's ``Addition_Module``; it computes exactly
the same function (checked in the tests, and LRP with a vanishing epsilon then equals
gradient x input, as it must for ReLU networks).

Attributions are taken with respect to the *normalized* input the network receives
(captum's usual set-up); cells are ranked by the channel sum of attributions in each
cell. Completeness-style methods (integrated gradients, DeepLift, LRP) give the same
values in pixel space since normalization is affine; saliency differs by the per-channel
``1/std`` factor only.
"""

from __future__ import annotations

import copy
import logging
import operator
import warnings
import weakref
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .._extras import require
from ._cells import cell_sums, channel_mean
from ._classifier import Classifier

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "UnsupportedModelError", "attribution_cells", "captum_ready", "check_lrp_supported"]

METHODS = ("saliency", "integrated_gradients", "deeplift", "lrp", "occlusion")

# DeepLift's summation-to-delta property may be off by this fraction of |f(x) - f(baseline)|
# before we warn. captum's max-pooling rule breaks it for baselines other than zero, and
# operations without a DeepLift rule (SiLU, GELU, products) are treated as gradients.
DEEPLIFT_DELTA_WARN = 0.05


class UnsupportedModelError(ValueError):
    """An attribution method cannot be applied faithfully to this network."""


# captum versions this module is tested with. Its LRP needs three names captum does not
# export (the addition module and epsilon rule its LRP knows, and the table of layers with
# rules); captum_internals() is the one place that reaches them, and
# tests/analysis/test_captum.py checks that they are still there and behave as used.
CAPTUM_TESTED = ">=0.7,<0.10"


def captum_attr() -> ModuleType:
    """``captum.attr``, the public API of the attribution methods (the ``[analysis]`` extra)."""
    return require("captum.attr", "captum's attributions (saliency, integrated gradients, DeepLift, LRP, occlusion)")


def captum_internals() -> SimpleNamespace:
    """captum's non-public names this module relies on, or one clear error if captum moved them.

    Returns:
        ``Addition_Module``, ``EpsilonRule``, ``SUPPORTED_LAYERS_WITH_RULES`` and
        ``SUPPORTED_NON_LINEAR_LAYERS``.
    """
    captum = require("captum", "captum's LRP and DeepLift")
    try:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
        from captum.attr._utils.custom_modules import Addition_Module
        from captum.attr._utils.lrp_rules import EpsilonRule
    except ImportError as e:
        raise ImportError(
            f"captum {getattr(captum, '__version__', '?')} no longer has the internals bagnet's LRP uses ({e}); "
            f"install a tested version: pip install 'captum{CAPTUM_TESTED}'"
        ) from None
    return SimpleNamespace(
        Addition_Module=Addition_Module,
        EpsilonRule=EpsilonRule,
        SUPPORTED_LAYERS_WITH_RULES=SUPPORTED_LAYERS_WITH_RULES,
        SUPPORTED_NON_LINEAR_LAYERS=SUPPORTED_NON_LINEAR_LAYERS,
    )


# Functional calls that fx records and that are linear re-arrangements LRP passes through.
_STRUCTURAL_FUNCTIONS = {torch.flatten, torch.cat, operator.getitem, getattr, torch.reshape}
_STRUCTURAL_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "dim"}
_ADDS = {operator.add, operator.iadd, torch.add}


def captum_ready(model: nn.Module) -> nn.Module:
    """A functionally identical copy of ``model`` that captum's DeepLift and LRP can walk.

    Every ReLU call site gets its own non-inplace ``nn.ReLU``, functional ReLUs and
    adaptive average pools become modules, tensor additions become captum's
    ``Addition_Module`` and ``nn.Identity`` calls disappear. Parameters are frozen
    (attributions need gradients of the input only).

    Raises:
        UnsupportedModelError: the model cannot be traced by ``torch.fx``.
    """
    Addition_Module = captum_internals().Addition_Module

    src = copy.deepcopy(model).eval()
    try:
        gm = torch.fx.symbolic_trace(src)
    except Exception as e:
        raise UnsupportedModelError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e})") from None
    modules = dict(gm.named_modules())
    counter = 0

    def add(module: nn.Module) -> str:
        nonlocal counter
        name = f"_captum_{counter}"
        counter += 1
        gm.add_submodule(name, module)
        return name

    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, nn.ReLU):
                node.target = add(nn.ReLU(inplace=False))
            elif isinstance(mod, nn.Identity):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
            continue
        new_module, args = None, node.args
        if node.op == "call_function":
            if node.target in (F.relu, torch.relu, torch.relu_):
                new_module, args = nn.ReLU(inplace=False), node.args[:1]
            elif node.target is F.adaptive_avg_pool2d:
                size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
                new_module, args = nn.AdaptiveAvgPool2d(size), node.args[:1]
            elif node.target in _ADDS and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args):
                new_module = Addition_Module()
        elif (node.op == "call_method" and node.target in ("add", "add_", "__iadd__") and len(node.args) == 2
              and all(isinstance(a, torch.fx.Node) for a in node.args)):
            new_module = Addition_Module()
        if new_module is not None:
            with gm.graph.inserting_after(node):
                repl = gm.graph.call_module(add(new_module), tuple(args))
            node.replace_all_uses_with(repl)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm.eval()


# Each classifier's captum-ready copy, built once and dropped with the classifier.
_CAPTUM_COPIES: weakref.WeakKeyDictionary[Classifier, nn.Module] = weakref.WeakKeyDictionary()


def captum_model(clf: Classifier) -> nn.Module:
    """The :func:`captum_ready` copy of ``clf``'s network, built once per classifier.

    A network that cannot be rewritten gets a plain frozen copy (DeepLift and LRP then
    report it unsupported).
    """
    cached = _CAPTUM_COPIES.get(clf)
    if cached is not None:
        return cached
    try:
        model = captum_ready(clf.model)
    except UnsupportedModelError as e:
        logger.warning("%s: %s; DeepLift and LRP are unavailable for it", clf.label, e)
        model = copy.deepcopy(clf.model).eval()
        for m in model.modules():
            if hasattr(m, "inplace"):
                m.inplace = False
        for p in model.parameters():
            p.requires_grad_(False)
    _CAPTUM_COPIES[clf] = model
    return model


def check_lrp_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first operation captum's LRP has no rule for.

    ``model`` must come from :func:`captum_ready`. Leaf modules must be of a type with an
    LRP rule (convolutions, linear layers, BatchNorm, pooling, additions) or a ReLU,
    Tanh or Dropout; functional calls must be pure re-arrangements (flatten, cat, view).
    """
    internals = captum_internals()
    allowed = set(internals.SUPPORTED_LAYERS_WITH_RULES) | set(internals.SUPPORTED_NON_LINEAR_LAYERS)
    graph = getattr(model, "graph", None)
    if graph is None:
        raise UnsupportedModelError("the network could not be rewritten for captum (see the log)")
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and type(modules[node.target]) not in allowed:
            raise UnsupportedModelError(f"captum's LRP has no rule for {type(modules[node.target]).__name__} ({node.target})")
        if node.op == "call_function" and node.target not in _STRUCTURAL_FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            raise UnsupportedModelError(f"captum's LRP cannot propagate through the function {name}")
        if node.op == "call_method" and node.target not in _STRUCTURAL_METHODS:
            raise UnsupportedModelError(f"captum's LRP cannot propagate through the tensor method .{node.target}()")
    leaves = [m for m in model.modules() if not list(m.children())]
    used = {modules[n.target] for n in graph.nodes if n.op == "call_module"}
    for m in leaves:
        if m not in used and type(m) not in allowed:
            raise UnsupportedModelError(f"captum's LRP has no rule for the (unused) module {type(m).__name__}")


def warn_deeplift(label: str, rel: float) -> None:
    logger.warning(
        "%s: DeepLift attributions miss f(x) - f(baseline) by up to %.0f%% (captum's max-pooling rule and "
        "operations without a DeepLift rule do not conserve it exactly)", label, 100 * rel,
    )


def attribution_cells(
    clf: Classifier,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    *,
    cell: int = 8,
    ig_steps: int = 25,
    lrp_epsilon: float = 1e-2,
    batch_size: int = 32,
    diagnostics: dict[str, float] | None = None,
) -> torch.Tensor:
    """Attribution of each ``cell x cell`` image cell to the true-class logit, ``[B, H/cell, W/cell]``.

    Args:
        clf: the network and its normalization.
        pixels: pixel-space images ``[B, C, H, W]``.
        targets: data-set classes ``[B]``.
        method: one of :data:`METHODS`.
        cell: cell side in pixels.
        ig_steps: integration steps of integrated gradients.
        lrp_epsilon: epsilon of the LRP-epsilon rule on every layer.
        batch_size: model inputs per forward pass (integration steps, occlusions).
        diagnostics: if given, DeepLift stores the largest relative miss of its
            summation-to-delta property here (``deeplift_relative_delta``) instead of
            logging a warning.

    Baselines (integrated gradients, DeepLift, occlusion) are the image's channel-wise
    mean, the value that masking puts in.

    Raises:
        UnsupportedModelError: DeepLift/LRP cannot walk this network.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    with warnings.catch_warnings():
        # captum announces, on every call, that it sets requires_grad and hooks; both are intended.
        warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already require gradients")
        warnings.filterwarnings("ignore", message=r"Setting forward, backward hooks")
        return _attribution_cells(clf, pixels, targets, method, cell, ig_steps, lrp_epsilon, batch_size, diagnostics)


def _attribution_cells(clf, pixels, targets, method, cell, ig_steps, lrp_epsilon, batch_size, diagnostics):
    attr_api = captum_attr()
    LRP, DeepLift, Occlusion = attr_api.LRP, attr_api.DeepLift, attr_api.Occlusion
    IntegratedGradients, Saliency = attr_api.IntegratedGradients, attr_api.Saliency
    EpsilonRule = captum_internals().EpsilonRule

    model = captum_model(clf)
    x = clf.normalize(pixels).detach()
    base = clf.normalize(channel_mean(pixels).expand_as(pixels)).detach()
    target = clf.column(targets)
    b = x.shape[0]
    if method == "saliency":
        attr = Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=True)
    elif method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(
            x, baselines=base, target=target, n_steps=ig_steps, internal_batch_size=max(batch_size, b)
        )
    elif method == "deeplift":
        if getattr(model, "graph", None) is None:
            raise UnsupportedModelError("the network could not be rewritten for captum's DeepLift")
        attr, delta = DeepLift(model).attribute(x, baselines=base, target=target, return_convergence_delta=True)
        with torch.no_grad():
            span = (model(x) - model(base)).gather(1, target[:, None])[:, 0].abs()
        rel = float((delta.abs() / span.clamp_min(1e-6)).max())
        if diagnostics is not None:
            diagnostics["deeplift_relative_delta"] = max(rel, diagnostics.get("deeplift_relative_delta", 0.0))
        elif rel > DEEPLIFT_DELTA_WARN:
            warn_deeplift(clf.label, rel)
    elif method == "lrp":
        check_lrp_supported(model)
        for m in model.modules():
            if not list(m.children()) and type(m) not in (nn.ReLU, nn.Tanh, nn.Dropout):
                m.rule = EpsilonRule(epsilon=lrp_epsilon)
        attr = LRP(model).attribute(x.clone().requires_grad_(), target=target)
    else:
        attr = Occlusion(model).attribute(
            x,
            sliding_window_shapes=(x.shape[1], cell, cell),
            strides=(x.shape[1], cell, cell),
            baselines=base,
            target=target,
            perturbations_per_eval=max(1, batch_size // b),
        )
    return cell_sums(attr.detach().float(), cell)
