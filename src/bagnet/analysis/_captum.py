"""White-box attributions of reference networks through captum, reduced to image cells.

DeepLift and LRP run on the copy of a network that :func:`captum_ready` rewrites so that
captum can walk it (BagNets included, through :func:`traceable_bagnet`; see
:mod:`bagnet.analysis._captum_ready`).

Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391) is captum's
``LayerGradCam`` on the network's last convolutional block (:func:`gradcam_layer`),
upsampled to the image by bilinear interpolation between the centres of the feature
map's receptive fields (:func:`upsample_to_pixels`) and summed per cell.

Attributions are taken with respect to the *normalized* input the network receives
(captum's usual set-up); cells are ranked by the channel sum of attributions in each
cell. Completeness-style methods (integrated gradients, DeepLift, LRP) give the same
values in pixel space since normalization is affine; saliency differs by the per-channel
``1/std`` factor only.
"""

from __future__ import annotations

import copy
import logging
import warnings
import weakref
from types import ModuleType

import torch
from torch import nn

from .._extras import require
from ..models import BagNet
from ._captum_ready import (
    UnsupportedModelError,
    _device,
    captum_internals,
    captum_ready,
    check_lrp_supported,
    traceable_bagnet,
)
from ._cells import cell_sums, channel_mean
from ._classifier import Classifier

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "UnsupportedModelError",
    "attribution_cells",
    "bagnet_occlusion",
    "captum_ready",
    "check_lrp_supported",
    "gradcam_layer",
    "gradcam_map",
    "traceable_bagnet",
    "upsample_to_pixels",
]

METHODS = ("saliency", "integrated_gradients", "deeplift", "lrp", "occlusion", "gradcam")
"""The captum attribution methods of the spatial-sensitivity experiment."""

# DeepLift's summation-to-delta property may be off by this fraction of |f(x) - f(baseline)|
# before we warn. captum's max-pooling rule breaks it for baselines other than zero, and
# operations without a DeepLift rule (SiLU, GELU, products) are treated as gradients.
DEEPLIFT_DELTA_WARN = 0.05


def captum_attr() -> ModuleType:
    """``captum.attr``, the public API of the attribution methods (the ``[analysis]`` extra)."""
    return require("captum.attr", "captum's attributions (saliency, integrated gradients, DeepLift, LRP, occlusion)")


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


# Plain frozen copies (no fx rewrite: Grad-CAM hooks the network's own blocks).
_PLAIN_COPIES: weakref.WeakKeyDictionary[Classifier, nn.Module] = weakref.WeakKeyDictionary()


def plain_model(clf: Classifier) -> nn.Module:
    """A frozen copy of ``clf``'s network without in-place operations, built once per classifier."""
    cached = _PLAIN_COPIES.get(clf)
    if cached is None:
        cached = copy.deepcopy(clf.model).eval()
        for m in cached.modules():
            if hasattr(m, "inplace"):
                m.inplace = False
        for p in cached.parameters():
            p.requires_grad_(False)
        _PLAIN_COPIES[clf] = cached
    return cached


# -- Grad-CAM ------------------------------------------------------------------------------------


def gradcam_layer(model: nn.Module, image_size: tuple[int, int] = (224, 224)) -> str:
    """Name of the module Grad-CAM reads: the network's last convolutional block.

    That is the module that *finishes last* in a forward pass among those that contain a
    convolution and return a 4-D feature map (``layer4`` of ResNets and BagNets,
    ``features`` of VGG, MobileNet, EfficientNet and DenseNet).

    Raises:
        UnsupportedModelError: no module returns a convolutional feature map.
    """
    finished: list[nn.Module] = []
    candidates = [m for m in model.modules() if m is not model and any(isinstance(s, nn.Conv2d) for s in m.modules())]

    def note(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            finished.append(module)

    hooks = [m.register_forward_hook(note) for m in candidates]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *image_size, device=_device(model)))
    finally:
        for h in hooks:
            h.remove()
    if not finished:
        raise UnsupportedModelError(f"{type(model).__name__} has no convolutional block returning a feature map")
    names = {m: n for n, m in model.named_modules()}
    return names[finished[-1]]


def upsample_to_pixels(maps: torch.Tensor, size: tuple[int, int], centres: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Bilinear interpolation of ``[B, h, w]`` maps to ``[B, H, W]`` pixels, given the pixel
    coordinates (pixel i at coordinate i) of the centre of every map row and column.

    Beyond the first and last centre the edge values are kept. With the centres
    ``(i + 0.5) * H / h - 0.5`` this is ``F.interpolate(..., mode="bilinear")`` (what
    captum's ``LayerAttribution.interpolate`` does); a BagNet's map entry (i, j) is
    centred on its patch, at ``s * i + (q - 1) / 2``.
    """
    def matrix(n_out: int, c: torch.Tensor) -> torch.Tensor:
        c = c.to(torch.float64)
        m = torch.zeros(n_out, len(c), dtype=torch.float64)
        if len(c) == 1:
            m[:, 0] = 1.0
            return m
        pos = torch.arange(n_out, dtype=torch.float64)
        t = torch.searchsorted(c, pos, right=True).clamp(1, len(c) - 1)  # c[t-1] <= pos < c[t] inside
        lo = c[t - 1]
        frac = ((pos - lo) / (c[t] - lo)).clamp(0.0, 1.0)
        rows = torch.arange(n_out)
        m[rows, t - 1] += 1.0 - frac
        m[rows, t] += frac
        return m

    ay = matrix(size[0], centres[0]).to(maps)
    ax = matrix(size[1], centres[1]).to(maps)
    return torch.einsum("yi,bij,xj->byx", ay, maps, ax)


def gradcam_map(clf: Classifier, pixels: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM of the true class on ``layer`` (default :func:`gradcam_layer`), ``[B, h, w]``:
    the feature maps weighted by their spatially averaged gradients, summed over channels.

    .. note::
        Selvaraju et al. clip the map at 0 (a ReLU); ranking cells by the unclipped map
        gives the same order for every cell with positive evidence and orders the rest by
        their (negative) evidence instead of leaving them tied.
    """
    LayerGradCam = captum_attr().LayerGradCam
    model = plain_model(clf)
    name = layer or _gradcam_layer_of(clf, tuple(pixels.shape[-2:]))
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"{clf.label} has no module {name!r} for Grad-CAM; name one of its blocks (e.g. layer4)")
    cam = LayerGradCam(model, module).attribute(clf.normalize(pixels).detach(), target=clf.column(targets),
                                                relu_attributions=False)
    return cam.detach()[:, 0].float()


_GRADCAM_LAYERS: weakref.WeakKeyDictionary[Classifier, dict] = weakref.WeakKeyDictionary()


def _gradcam_layer_of(clf: Classifier, size: tuple[int, int]) -> str:
    layers = _GRADCAM_LAYERS.setdefault(clf, {})
    if size not in layers:
        layers[size] = gradcam_layer(plain_model(clf), size)
    return layers[size]


def _gradcam_pixels(clf: Classifier, pixels: torch.Tensor, targets: torch.Tensor, layer: str | None) -> torch.Tensor:
    """Grad-CAM upsampled to the pixels ``[B, H, W]``: at the patch centres for a BagNet, by
    the usual bilinear resize (centres ``(i + 0.5) H / h - 0.5``) for other networks."""
    cam = gradcam_map(clf, pixels, targets, layer)
    (h, w), (H, W) = cam.shape[-2:], pixels.shape[-2:]
    if clf.is_bagnet and (layer is None or layer == _gradcam_layer_of(clf, (H, W))):
        q, s = clf.model.receptive_field, clf.model.patch_stride
        centres = (s * torch.arange(h) + (q - 1) / 2, s * torch.arange(w) + (q - 1) / 2)
    else:
        centres = ((torch.arange(h) + 0.5) * H / h - 0.5, (torch.arange(w) + 0.5) * W / w - 0.5)
    return upsample_to_pixels(cam, (H, W), centres)


# -- occlusion of a BagNet from local crops ------------------------------------------------------


def bagnet_occlusion(
    clf: Classifier, pixels: torch.Tensor, targets: torch.Tensor, window: int, stride: int, batch_size: int = 32
) -> torch.Tensor:
    """captum's ``Occlusion`` of a BagNet's true-class logit (channel-mean baseline),
    summed over channels, ``[B, H, W]``, computed exactly from small crops.

    A BagNet's logit is the mean of its patch logits, and masking a window changes only
    the patches that overlap it; so each window costs one forward pass over the crop that
    holds those patches (for 8 px windows and q = 33, 65 x 65 pixels) instead of the whole
    image. Every pixel gets, as in captum, the mean logit drop of the windows covering it,
    times the number of channels (captum masks all channels together).
    """
    model: BagNet = clf.model
    q, s = model.receptive_field, model.patch_stride
    b, c, H, W = pixels.shape
    gh, gw = model.patch_grid(H, W)
    if window < 1 or stride < 1 or window > min(H, W):
        raise ValueError(f"occlusion windows must be 1 to {min(H, W)} px with a stride of at least 1, "
                         f"got {window} and {stride}")
    x = clf.normalize(pixels)
    fill = clf.normalize(channel_mean(pixels))  # [B, C, 1, 1]
    cols = clf.column(targets)
    with torch.inference_mode():
        base = model.patch_logits(x)[torch.arange(b), cols]  # [B, gh, gw]
    starts_y = list(range(0, H - window + 1, stride))
    starts_x = list(range(0, W - window + 1, stride))

    def span(start: int, n: int) -> tuple[int, int]:  # patches overlapping [start, start + window)
        lo = max(0, -(-(start - q + 1) // s))
        hi = min(n - 1, (start + window - 1) // s)
        return lo, hi

    # (image, window row, window col, crop box) grouped by crop shape, so crops batch together.
    groups: dict[tuple[int, int], list[tuple[int, int, int, int, int, int, int]]] = {}
    drops = torch.zeros(b, len(starts_y), len(starts_x), dtype=torch.float64)
    for a, y0 in enumerate(starts_y):
        i0, i1 = span(y0, gh)
        for e, x0 in enumerate(starts_x):
            j0, j1 = span(x0, gw)
            if i0 > i1 or j0 > j1:
                continue  # no patch sees this window
            shape = (s * (i1 - i0) + q, s * (j1 - j0) + q)
            for n in range(b):
                groups.setdefault(shape, []).append((n, a, e, i0, i1, j0, j1))
    for (ch, cw), jobs in groups.items():
        for chunk in [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]:
            crops = []
            for n, a, e, i0, _, j0, _ in chunk:
                top, left = s * i0, s * j0
                crop = x[n, :, top : top + ch, left : left + cw].clone()
                y0, x0 = starts_y[a] - top, starts_x[e] - left
                crop[:, max(0, y0) : max(0, y0 + window), max(0, x0) : max(0, x0 + window)] = fill[n]
                crops.append(crop)
            with torch.inference_mode():
                logits = model.patch_logits(torch.stack(crops))
            for k, (n, a, e, i0, i1, j0, j1) in enumerate(chunk):
                masked = logits[k, cols[n]]
                drops[n, a, e] = float((base[n, i0 : i1 + 1, j0 : j1 + 1] - masked).sum()) / (gh * gw)
    # Spread each window's drop over its pixels; average where windows overlap (captum's rule).
    total = torch.zeros(b, H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for a, y0 in enumerate(starts_y):
        for e, x0 in enumerate(starts_x):
            total[:, y0 : y0 + window, x0 : x0 + window] += drops[:, a, e, None, None]
            count[y0 : y0 + window, x0 : x0 + window] += 1
    return (c * total / count.clamp_min(1)).float()


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
    occlusion_window: int | None = None,
    occlusion_stride: int | None = None,
    gradcam_layer: str | None = None,
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
        occlusion_window: side of the occluded squares in pixels (default: ``cell``).
        occlusion_stride: step between them (default: ``cell``; with the default window,
            occlusion then masks exactly one cell at a time, ``(H / cell)^2`` forward passes).
        gradcam_layer: the module Grad-CAM reads (default: :func:`gradcam_layer`).

    Baselines (integrated gradients, DeepLift, occlusion) are the image's channel-wise
    mean, the value that masking puts in. On a BagNet, occlusion is computed exactly from
    local crops (:func:`bagnet_occlusion`), about (image / crop) times faster than captum's.

    Raises:
        UnsupportedModelError: DeepLift/LRP cannot walk this network.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    with warnings.catch_warnings():
        # captum announces, on every call, that it sets requires_grad and hooks; both are intended.
        warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already require gradients")
        warnings.filterwarnings("ignore", message=r"Setting forward, backward hooks")
        if method == "gradcam":
            return cell_sums(_gradcam_pixels(clf, pixels, targets, gradcam_layer), cell)
        window = int(occlusion_window or cell)
        stride = int(occlusion_stride or window)
        if method == "occlusion" and not 1 <= stride <= window:
            raise ValueError(f"the occlusion stride ({stride} px) must be between 1 and the window ({window} px), "
                             "or pixels between windows would never be occluded")
        if method == "occlusion" and clf.is_bagnet:
            return cell_sums(bagnet_occlusion(clf, pixels, targets, window, stride, batch_size), cell)
        return _attribution_cells(clf, pixels, targets, method, cell, ig_steps, lrp_epsilon, batch_size, diagnostics,
                                  window, stride)


def _attribution_cells(clf, pixels, targets, method, cell, ig_steps, lrp_epsilon, batch_size, diagnostics, window,
                       stride):
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
            sliding_window_shapes=(x.shape[1], window, window),
            strides=(x.shape[1], stride, stride),
            baselines=base,
            target=target,
            perturbations_per_eval=max(1, batch_size // b),
        )
    return cell_sums(attr.detach().float(), cell)
