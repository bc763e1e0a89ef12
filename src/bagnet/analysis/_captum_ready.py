"""Reference networks and BagNets rewritten so that captum's DeepLift and LRP can walk them.

captum's DeepLift and LRP walk a network's *modules*: they break on a ReLU module used
twice (torchvision's ResNet blocks reuse ``self.relu``), and LRP silently produces
garbage on residual additions written as ``out += identity``. :func:`captum_ready`
rewrites a copy of the network with ``torch.fx`` so that every ReLU call has its own
module and every tensor addition is captum's ``Addition_Module``; it computes exactly
the same function (checked in the tests, and LRP with a vanishing epsilon then equals
gradient x input, as it must for ReLU networks).

BagNets check their input size in Python and crop their residuals by the size of the
block output, which ``torch.fx`` cannot trace; :func:`traceable_bagnet` rebuilds one on the
same modules with the crops fixed (they do not depend on the input size) before the
rewrite, so DeepLift and LRP apply to BagNets as to ResNets. :func:`check_lrp_supported`
says whether captum's LRP has a rule for every operation of a rewritten network.
"""

from __future__ import annotations

import copy
import operator
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .._extras import require
from ..models import BagNet
from ..models.bagnet import Bottleneck

__all__ = [
    "CAPTUM_TESTED",
    "UnsupportedModelError",
    "captum_internals",
    "captum_ready",
    "check_lrp_supported",
    "traceable_bagnet",
]


class UnsupportedModelError(ValueError):
    """An attribution method cannot be applied faithfully to this network."""


# captum versions this module is tested with. Its LRP needs three names captum does not
# export (the addition module and epsilon rule its LRP knows, and the table of layers with
# rules); captum_internals() is the one place that reaches them, and
# tests/analysis/test_captum.py checks that they are still there and behave as used.
CAPTUM_TESTED = ">=0.7,<0.10"


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
    if isinstance(src, BagNet):
        src = traceable_bagnet(src)
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




# -- BagNets for torch.fx ------------------------------------------------------------------------


class _FixedCropBottleneck(nn.Module):
    """A BagNet bottleneck on the same modules whose residual crop is a fixed number of
    bottom rows and right columns (what :func:`bagnet.models.bagnet._crop_to` computes
    from the shapes at run time), so that ``torch.fx`` can trace it."""

    def __init__(self, block: Bottleneck, crop: int):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.conv3, self.bn3, self.downsample = block.conv3, block.bn3, block.downsample
        self.crop = int(crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.crop:
            identity = identity[:, :, : -self.crop, : -self.crop]
        return F.relu(out + identity)


class _TraceableBagNet(nn.Module):
    """The function of a :class:`~bagnet.models.BagNet` without its Python-level input
    checks, on the same modules: stem, blocks with fixed crops, average pool, classifier."""

    def __init__(self, model: BagNet, crops: list[int]):
        super().__init__()
        self.conv1, self.conv2, self.bn1 = model.conv1, model.conv2, model.bn1
        blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
        self.blocks = nn.Sequential(*[_FixedCropBottleneck(b, c) for b, c in zip(blocks, crops)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = model.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv2(self.conv1(x))))
        x = self.blocks(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def traceable_bagnet(model: BagNet) -> nn.Module:
    """A module computing exactly ``model``'s logits that ``torch.fx`` can trace (it shares
    ``model``'s modules; copy first to keep them apart).

    Raises:
        UnsupportedModelError: the blocks are not plain bottlenecks, or a residual crop
            depends on the input size (checked at two sizes, and the outputs compared).
    """
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    if not all(type(b) is Bottleneck for b in blocks) or not isinstance(model.fc, nn.Linear):
        raise UnsupportedModelError(f"{type(model).__name__} has blocks or a head torch.fx cannot be given")
    q, s = model.receptive_field, model.patch_stride
    sizes = (q + 3 * s, q + 4 * s + s // 2 + 1)
    crops_at = []
    for size in sizes:
        crops: list[int] = []

        def record(block, inputs, output, crops=crops):
            x = inputs[0]
            identity = x if block.downsample is None else block.downsample(x)
            dh, dw = identity.shape[-2] - output.shape[-2], identity.shape[-1] - output.shape[-1]
            crops.append(dh if dh == dw and dh >= 0 else -1)

        hooks = [b.register_forward_hook(record) for b in blocks]
        try:
            with torch.no_grad():
                model(torch.zeros(1, model.in_chans, size, size, device=_device(model)))
        finally:
            for h in hooks:
                h.remove()
        crops_at.append(crops)
    if crops_at[0] != crops_at[1] or min(crops_at[0]) < 0:
        raise UnsupportedModelError(f"the residual crops of this BagNet depend on the input size ({crops_at})")
    traceable = _TraceableBagNet(model, crops_at[0]).eval()
    probe = torch.randn(2, model.in_chans, sizes[1], sizes[1] + s, generator=torch.Generator().manual_seed(0))
    probe = probe.to(_device(model))
    with torch.no_grad():
        want, got = model(probe), traceable(probe)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6):
        raise UnsupportedModelError("the fx-traceable copy of this BagNet does not compute its logits")
    return traceable


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")




# -- what LRP can walk -----------------------------------------------------------------------------


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
