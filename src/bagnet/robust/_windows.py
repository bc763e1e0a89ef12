"""Window arithmetic of the certificates on float64 evidence maps ``[..., h, w]``.

Window sums, the largest window per class, and the largest window left once another is
zeroed (what PatchGuard's masking removes after the adversary's window), computed a few
classes or maps at a time so that the temporaries stay within :data:`_STEP_BYTES`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Bytes of float64 temporaries one step of the certificate arithmetic may hold: images and
# classes are taken in chunks that fit, whatever the size of the evidence map.
_STEP_BYTES = 64 * 2**20


def _clamp_window(window: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    # A patch's affected window can be larger than a small image's whole evidence map.
    return min(window[0], grid[0]), min(window[1], grid[1])


def _window_sums(e: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Sum of ``e [..., h, w]`` over every ``window`` (stride 1, inside the map):
    ``[..., h - wh + 1, w - ww + 1]``."""
    lead = e.shape[:-2]
    out = F.avg_pool2d(e.reshape(-1, 1, *e.shape[-2:]), window, stride=1, divisor_override=1)
    return out.reshape(*lead, *out.shape[-2:])


def _class_step(n: int, h: int, w: int) -> int:
    """Classes per step for ``n`` images of ``h x w`` maps: a few float64 maps each."""
    return max(1, _STEP_BYTES // (8 * 3 * max(1, n * h * w)))


def _window_max(e: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``[n, C]``: the largest window sum of every class of ``e [n, C, h, w]``."""
    n, c, h, w = e.shape
    step = _class_step(n, h, w)
    return torch.cat([_window_sums(e[:, k:k + step], window).amax((2, 3)) for k in range(0, c, step)], 1)


def _largest_window_left(e: torch.Tensor, sums: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """For every window position W: the largest window sum of ``e [n, h, w]`` (>= 0) once
    W's locations are zeroed, ``max over V of sum(e over V minus W)``, as ``[n, nh, nw]``.

    ``sums`` are the window sums of ``e``. A window V that misses W keeps its whole sum (the
    largest such: from running maxima of the rows above and below W, and of the columns
    beside it in the rows V and W share); each of the (2 wh - 1)(2 ww - 1) offsets of a V
    that overlaps W loses the overlap, a rectangle summed from the integral image. A few
    maps of the evidence's size at a time, where zeroing every W would hold
    ``nh * nw * h * w`` values per image (0.7 GB for BagNet-33 at 896 px).
    """
    wh, ww = window
    nh, nw = sums.shape[-2:]
    best = torch.full_like(sums, -math.inf)
    if nh > wh:  # V wholly above or below W
        rows = sums.amax(2)
        above = rows.cummax(1).values  # [:, j]: the best of rows 0..j
        below = rows.flip(1).cummax(1).values.flip(1)  # [:, j]: the best of rows j..nh-1
        best[:, wh:] = torch.maximum(best[:, wh:], above[:, :nh - wh, None])
        best[:, :nh - wh] = torch.maximum(best[:, :nh - wh], below[:, wh:, None])
    if nw > ww:  # V wholly left or right of W, in rows within wh - 1 of W's
        k = min(wh, nh)

        def band(t: torch.Tensor) -> torch.Tensor:  # the best over rows r - k + 1 .. r + k - 1
            return F.max_pool2d(t[:, None], (2 * k - 1, 1), stride=1, padding=(k - 1, 0))[:, 0]

        left = band(sums.cummax(2).values)  # [:, r, j]: the best of columns 0..j
        right = band(sums.flip(2).cummax(2).values.flip(2))  # [:, r, j]: the best of columns j..nw-1
        best[:, :, ww:] = torch.maximum(best[:, :, ww:], left[:, :, :nw - ww])
        best[:, :, :nw - ww] = torch.maximum(best[:, :, :nw - ww], right[:, :, ww:])
    integral = F.pad(e.cumsum(1).cumsum(2), (1, 0, 1, 0))  # [:, y, x]: the sum of e[:, :y, :x]
    for dr in range(1 - min(wh, nh), min(wh, nh)):
        r0, r1 = max(0, -dr), min(nh, nh - dr)  # the rows of W whose V = W + (dr, dc) is on the map
        y0, y1 = r0 + max(0, dr), r0 + max(0, dr) + wh - abs(dr)  # the overlap's rows for W at row r0
        for dc in range(1 - min(ww, nw), min(ww, nw)):
            c0, c1 = max(0, -dc), min(nw, nw - dc)
            x0, x1 = c0 + max(0, dc), c0 + max(0, dc) + ww - abs(dc)
            m, k = r1 - r0, c1 - c0
            overlap = (integral[:, y1:y1 + m, x1:x1 + k] - integral[:, y0:y0 + m, x1:x1 + k]
                       - integral[:, y1:y1 + m, x0:x0 + k] + integral[:, y0:y0 + m, x0:x0 + k])
            kept = sums[:, r0 + dr:r1 + dr, c0 + dc:c1 + dc] - overlap
            best[:, r0:r1, c0:c1] = torch.maximum(best[:, r0:r1, c0:c1], kept)
    return best
