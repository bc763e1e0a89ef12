"""The space-to-batch ("phase") rewrite of strided layers that :mod:`._maps` runs on.

A stride-s layer run at stride 1 computes s*s interleaved copies of its strided output;
:func:`space_to_batch` stacks them along the batch, so later layers see each copy as an
ordinary dense image, and :func:`interleave_index` says where every entry goes at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["interleave_index", "space_to_batch"]


def space_to_batch(x: torch.Tensor, s: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[s*s*N, C, ceil(H/s), ceil(W/s)]``, component (a, b) first.

    Odd sizes are padded at bottom/right; the padded values only reach map entries past
    the image, which are cut off at the end.
    """
    n, c, h, w = x.shape
    h2, w2 = -(-h // s), -(-w // s)
    if (h2 * s, w2 * s) != (h, w):
        x = F.pad(x, (0, w2 * s - w, 0, h2 * s - h))
    out = torch.empty((s * s * n, c, h2, w2), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    out.view(s, s, n, c, h2, w2).copy_(x.reshape(n, c, h2, s, w2, s).permute(3, 5, 0, 1, 2, 4))
    return out


def interleave_index(splits: list[int], batch: int, hh: int, ww: int, h: int, w: int,
                     device: torch.device | str) -> torch.Tensor:
    """For each image, the columns of the ``[K, P*B*hh*ww]`` logits in dense row-major order.

    After splits s_1 .. s_m the batch index is (a_m, b_m, ..., a_1, b_1, image), and dense
    row ``S * i + s_1 ... s_{m-1} a_m + ... + s_1 a_2 + a_1`` (columns alike) holds the
    value of component row i. Returns ``[B, h*w]`` indices, already cropped to ``h x w``.
    """
    m = len(splits)
    shape = []
    for s in reversed(splits):
        shape += [s, s]
    idx = torch.arange(math.prod(shape) * batch * hh * ww, device=device).view(*shape, batch, hh, ww)
    rows = [2 * i for i in range(m)]  # a_m .. a_1
    cols = [2 * i + 1 for i in range(m)]  # b_m .. b_1
    total = math.prod(splits)
    idx = idx.permute(2 * m, 2 * m + 1, *rows, 2 * m + 2, *cols).reshape(batch, hh * total, ww * total)
    return idx[:, :h, :w].reshape(batch, h * w)
