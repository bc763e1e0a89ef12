"""The evidence map exactly as the paper defines it, one crop at a time (slow; for tests
and benchmarks).

Brendel & Bethge, ICLR 2019 (https://openreview.net/forum?id=SkfMWhAqYQ): pad the
normalized image by (q-1)/2 on every side; the heatmap value of class c at pixel
(y, x) is logit c of the model applied to the q x q crop centred at (y, x). Like the
authors' script, this pushes every crop through the unmodified network, in batches.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._maps import _resolve_stride, map_geometry, resolve_classes

__all__ = ["evidence_map_reference"]


def evidence_map_reference(
    model: nn.Module,
    images: torch.Tensor,
    *,
    classes: int | Sequence[int] | torch.Tensor | None = None,
    stride: int | str = 1,
    pad_value: float | None = 0.0,
    batch_size: int = 256,
    pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Evidence map by the definition: ``model(crop)`` for every crop (see :func:`evidence_map`).

    Args:
        model: any classifier with a ``receptive_field`` attribute whose output on a q x q
            input is one vector of logits. Run in eval mode (a copy is made if it is training).
        images: normalized images ``[B, C, H, W]`` (or one ``[C, H, W]``).
        classes: class indices, ``None`` for all.
        stride: map stride, a positive integer or ``"native"`` (the model's patch stride).
        pad_value: padding value, ``None`` for no padding (crops start at ``stride * i``).
        batch_size: crops per forward pass.
        pixels: optional ``[N, 2]`` map indices ``(i, j)``: compute only these entries and
            return ``[B, K, N]`` (benchmarks time a sample of crops this way).

    Returns:
        ``[B, K, h, w]`` (``[K, h, w]`` for one image), or ``[B, K, N]`` with ``pixels``.
    """
    single = images.dim() == 3
    if single:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
    if model.training:
        model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    q = int(model.receptive_field)
    g = _resolve_stride(model, stride)
    geom = map_geometry(model, images.shape[-2:], g, padded=pad_value is not None)
    h, w = geom.map_size
    if h < 1 or w < 1:
        raise ValueError(f"input is {images.shape[-2]}x{images.shape[-1]} pixels, smaller than the receptive field {q}x{q}")
    num_classes = getattr(model, "num_classes", None) or model(torch.zeros(1, images.shape[1], q, q, device=device)).shape[1]
    class_idx = torch.as_tensor(resolve_classes(classes, num_classes), device=device)
    p = geom.offset
    padded = F.pad(images, (p, p, p, p), value=float(pad_value)) if pad_value is not None else images
    padded = padded.to(device)

    if pixels is None:
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pixels_ = torch.stack([ii.reshape(-1), jj.reshape(-1)], 1)
    else:
        pixels_ = torch.as_tensor(pixels).reshape(-1, 2)
        if len(pixels_) and (pixels_.min() < 0 or (pixels_[:, 0] >= h).any() or (pixels_[:, 1] >= w).any()):
            raise ValueError(f"pixels must be map indices inside {h}x{w}")
    out = torch.empty(images.shape[0], len(class_idx), len(pixels_), device=device, dtype=padded.dtype)
    corners = (pixels_ * g).tolist()
    with torch.no_grad():
        for b in range(images.shape[0]):
            for start in range(0, len(corners), batch_size):
                crops = torch.stack([padded[b, :, y : y + q, x : x + q] for y, x in corners[start : start + batch_size]])
                out[b, :, start : start + len(crops)] = model(crops).index_select(1, class_idx).T
    if pixels is None:
        out = out.reshape(images.shape[0], len(class_idx), h, w)
    return out[0] if single else out
