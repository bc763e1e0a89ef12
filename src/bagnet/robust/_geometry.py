"""Which patch-logit locations an adversarial patch can change, and patch sizes.

A BagNet's location (i, j) sees exactly the input pixels ``[s*i, s*i + q) x [s*j, s*j + q)``
(``q = receptive_field``, ``s = patch_stride``, no padding). A p x p sticker with top-left
corner (a, b) changes every pixel in ``[a, a + p) x [b, b + p)`` and nothing else, so it
can change location (i, j) only if the two squares overlap; all other locations keep
their clean evidence. That is what makes a certificate possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AffectedLocations", "affected_locations", "affected_window", "format_share", "patch_pixels"]


def patch_pixels(patch_size: int | float | str, image_size: tuple[int, int] | int) -> int:
    """The side in pixels of a square patch given in pixels or as a fraction of the image area.

    ``"2%"`` and ``0.02`` mean a square covering at least 2% of the image's pixels (the side
    is rounded up: 2% of 224 x 224 is a 32 x 32 patch, 1% is 23 x 23 and 3% is 39 x 39, the
    sizes PatchGuard reports); an ``int`` or a string of digits (``"32"``, ``"32px"``) is
    the side itself.

    Raises:
        ValueError: the size cannot be read, or the patch does not fit in the image.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    fraction: float | None = None
    pixels: int | None = None
    if isinstance(patch_size, str):
        text = patch_size.strip().lower()
        try:
            if text.endswith("%"):
                fraction = float(text[:-1]) / 100
            elif text.endswith("px"):
                pixels = int(text[:-2])
            elif text.isdigit():
                pixels = int(text)
            else:
                fraction = float(text)
        except ValueError:
            raise ValueError(f"patch size {patch_size!r} is neither pixels (32, '32px') nor an area "
                             "fraction ('2%', 0.02)") from None
    elif isinstance(patch_size, bool):
        raise ValueError(f"patch size {patch_size!r} is not a size")
    elif isinstance(patch_size, int):
        pixels = patch_size
    else:
        fraction = float(patch_size)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"patch size {patch_size!r} is {_plain(100 * fraction)}% of the image area; an area "
                             "fraction must be more than 0% and at most 100% ('2%' or 0.02)")
        # The small epsilon keeps 1% of a 100 x 100 image at 10 px despite float rounding.
        pixels = math.ceil(math.sqrt(fraction * h * w) - 1e-9)
    if pixels is None:
        raise ValueError(f"patch size {patch_size!r} is not a size")
    if not 1 <= pixels <= min(h, w):
        raise ValueError(f"a {pixels} x {pixels} patch does not fit in a {h} x {w} image")
    return pixels


def _plain(x: float) -> str:
    """A number as people write it: ``200``, ``0.5``, ``0.00001``, never ``1e-05``."""
    return f"{x:.10f}".rstrip("0").rstrip(".") if math.isfinite(x) else str(x)


def format_share(fraction: float) -> str:
    """A share of the image as a sticker's description says it: ``"100%"``, ``"25%"``,
    ``"2.1%"``, ``"0.5%"`` (whole percent from 10%, one decimal below; never rounded up to
    100% or down to 0%)."""
    pct = 100 * float(fraction)
    if pct >= 10:
        text = f"{pct:.0f}"
        return "99%" if text == "100" and pct < 100 else f"{text}%"
    if pct < 0.1:
        return "less than 0.1%" if pct > 0 else "0%"
    return f"{pct:.1f}".removesuffix(".0") + "%"


def _touched(length: int, patch: int, q: int, s: int, n: int) -> tuple[tuple[int, int], ...]:
    """For every patch start ``a`` in ``[0, length - patch]``: the range ``[start, stop)`` of
    locations ``i < n`` whose window ``[s*i, s*i + q)`` meets ``[a, a + patch)``."""
    out = []
    for a in range(length - patch + 1):
        # s*i + q > a  <=>  i >= floor((a - q) / s) + 1;   s*i < a + patch  <=>  i < ceil((a + patch) / s)
        start = max(0, (a - q) // s + 1)
        stop = min(n, -(-(a + patch) // s))
        out.append((start, max(start, stop)))
    return tuple(out)


@dataclass(frozen=True)
class AffectedLocations:
    """The patch-logit locations a p x p patch can change, for every position of the patch.

    Attributes:
        image_size: ``(height, width)`` of the input.
        patch_size: side p of the square patch in pixels.
        grid: ``(H', W')``, the patch-logit map's size.
        rows: for every top edge ``a`` in ``0 .. height - p``, the range ``(start, stop)`` of
            grid rows the patch touches (empty where it covers only pixels no location sees).
        cols: the same for every left edge ``b`` in ``0 .. width - p``.
    """

    image_size: tuple[int, int]
    patch_size: int
    grid: tuple[int, int]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def window(self) -> tuple[int, int]:
        """``(rows, cols)`` of the smallest window that holds the affected locations of every
        position: the window PatchGuard's masking removes and the certificates slide."""
        return (max(1, max(b - a for a, b in self.rows)), max(1, max(b - a for a, b in self.cols)))

    def mask(self, top: int, left: int) -> torch.Tensor:
        """Boolean ``[H', W']``: the locations the patch with top-left corner ``(top, left)`` touches."""
        if not (0 <= top < len(self.rows) and 0 <= left < len(self.cols)):
            raise ValueError(f"patch corner ({top}, {left}) is outside 0..{len(self.rows) - 1} x 0..{len(self.cols) - 1}")
        out = torch.zeros(self.grid, dtype=torch.bool)
        (r0, r1), (c0, c1) = self.rows[top], self.cols[left]
        out[r0:r1, c0:c1] = True
        return out


def affected_locations(model: torch.nn.Module, image_size: tuple[int, int] | int,
                       patch_size: int | float | str) -> AffectedLocations:
    """Which patch-logit locations of ``model`` one p x p patch can change, at each position.

    Computed from ``model.receptive_field`` and ``model.patch_stride``.

    Args:
        model: a BagNet (anything with ``receptive_field``, ``patch_stride`` and ``patch_grid``).
        image_size: ``(height, width)`` or one side.
        patch_size: side in pixels, or area fraction (``"2%"``, ``0.02``), see :func:`patch_pixels`.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    for name in ("receptive_field", "patch_stride", "patch_grid"):
        if not hasattr(model, name):
            raise ValueError(f"{type(model).__name__} is not a BagNet (no {name}); patch certificates need one")
    q, s = model.receptive_field, model.patch_stride
    grid = model.patch_grid(h, w)
    p = patch_pixels(patch_size, (h, w))
    return AffectedLocations((h, w), p, grid, _touched(h, p, q, s, grid[0]), _touched(w, p, q, s, grid[1]))


def affected_window(model: torch.nn.Module, grid: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The window a ``patch_size`` px patch can affect on an evidence map of ``grid`` = ``(H', W')``
    locations, without the image size: the largest :attr:`AffectedLocations.window` over
    every image size whose map is ``grid`` (all of them give the same window: the pixels
    beyond the last location's patch add only positions that touch fewer locations).

    Raises:
        ValueError: the model's geometry does not give ``grid`` for any image size, or the
            patch is larger than every such image.
    """
    q, s = model.receptive_field, model.patch_stride
    if tuple(model.patch_grid(q + s * (grid[0] - 1), q + s * (grid[1] - 1))) != tuple(grid):
        raise ValueError(f"{type(model).__name__}'s evidence maps do not follow (side - {q}) // {s} + 1; "
                         "pass the image size")
    out = []
    for n in grid:
        low = q + s * (n - 1)  # the smallest side giving n locations; low + s - 1 the largest
        sides = range(max(low, patch_size), low + s)
        if n < 1 or not sides:
            raise ValueError(f"a {patch_size} px patch does not fit in an image whose evidence map has {n} locations "
                             f"along a side (at most {low + s - 1} px)")
        out.append(max(max(b - a for a, b in _touched(side, patch_size, q, s, n)) for side in sides))
    return max(1, out[0]), max(1, out[1])


def _a(n: int) -> str:
    """The article of a number said aloud: "an 8 px", "an 11 px", "a 16 px"."""
    return "an" if n in (11, 18) or str(n).startswith("8") else "a"
