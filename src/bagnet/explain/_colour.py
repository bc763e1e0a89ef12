"""The colours of evidence maps, in one place: the symmetric colour scale and the colour map.

Every picture of evidence takes its colours from here: the paper's figures
(:func:`~bagnet.explain.plot_heatmap` and the panels built on it), the explorer's heatmap
tiles and its colour bar, and the explorer's PNG/SVG downloads. So equal evidence has
equal colours wherever it is shown, and a change of colour map or scale is made once.

* The scale is symmetric, ``+-vmax`` around zero: a fixed value, or the
  :data:`SCALE_PERCENTILE`-th percentile of ``|evidence|`` over the maps shown together
  (:func:`colour_scale`), so one extreme patch does not wash out the rest. Values beyond
  it take the colours at its ends.
* The colour map is :data:`EVIDENCE_CMAP`, matplotlib's ``RdBu_r``: red is evidence for
  the class, blue against it, white none (the authors' figures use the same diverging map).
* Overlays on a photo (the explorer) draw weak evidence more transparent, so the photo
  shows through where the model sees little either way (:func:`evidence_rgba`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._extras import require

if TYPE_CHECKING:
    from matplotlib.colors import Colormap, Normalize

__all__ = [
    "EVIDENCE_CMAP",
    "OVERLAY_OPACITY",
    "SCALE_PERCENTILE",
    "colormap_stops",
    "colour_scale",
    "evidence_cmap",
    "evidence_norm",
    "evidence_rgba",
]

#: The colour map of evidence: blue (against the class), white (none), red (for it).
EVIDENCE_CMAP = "RdBu_r"
#: The default colour scale is this percentile of ``|evidence|``.
SCALE_PERCENTILE = 99.0
#: Opacity of the strongest evidence over a photo: the explorer page's default and its figure.
OVERLAY_OPACITY = 0.7
# Over a photo, evidence near zero keeps this share of the full opacity.
_WEAKEST = 0.25


def _np(evidence) -> np.ndarray:
    if isinstance(evidence, torch.Tensor):
        return evidence.detach().float().cpu().numpy()
    return np.asarray(evidence, np.float32)


def colour_scale(
    maps: Sequence[torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray, percentile: float = SCALE_PERCENTILE
) -> float:
    """One symmetric colour range ``+-v`` for several evidence maps: the ``percentile`` of
    ``|evidence|`` over all of them together, so equal colours mean equal evidence in every
    map (one extreme patch still does not wash out the rest). All-zero maps get ``+-1``."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    values = np.concatenate([np.abs(_np(m)).ravel() for m in maps]) if len(maps) else np.zeros(0)
    v = float(np.percentile(values, percentile)) if values.size else 0.0
    return v if v > 0 else 1.0  # an all-zero map still needs a non-empty range


def _check_vmax(vmax: float) -> float:
    vmax = float(vmax)
    if not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"the colour scale must be a positive number, got {vmax}")
    return vmax


def evidence_cmap() -> Colormap:
    """The matplotlib colour map of evidence (:data:`EVIDENCE_CMAP`)."""
    return require("matplotlib", "evidence colours").colormaps[EVIDENCE_CMAP]


def evidence_norm(vmax: float) -> Normalize:
    """The matplotlib normalization of the scale ``+-vmax`` (``-vmax`` -> 0, ``+vmax`` -> 1)."""
    require("matplotlib", "evidence colours")
    from matplotlib.colors import Normalize

    vmax = _check_vmax(vmax)
    return Normalize(-vmax, vmax, clip=True)


def evidence_rgba(
    evidence: torch.Tensor | np.ndarray | float, vmax: float, *, overlay: bool = False,
    opacity: float = 1.0, uint8: bool = False,
) -> np.ndarray:
    """The colour of every evidence value on the scale ``+-vmax``: ``[..., 4]`` RGBA.

    The colour is :func:`evidence_cmap` at :func:`evidence_norm`, exactly what matplotlib's
    ``imshow(evidence, cmap=evidence_cmap(), norm=evidence_norm(vmax))`` draws; values
    beyond the scale take its end colours.

    Args:
        evidence: a value or a map of any shape.
        vmax: the scale, positive.
        overlay: for drawing over a photo: the alpha grows with ``|evidence|``, from a
            quarter of ``opacity`` at zero to ``opacity`` at the scale's ends.
        opacity: the alpha of the strongest evidence (1 without ``overlay``: opaque).
        uint8: integers in 0..255 (as matplotlib's ``cmap(x, bytes=True)``, which ``imshow``
            draws) instead of floats in [0, 1].
    """
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    m = _np(evidence)
    t = np.asarray(evidence_norm(vmax)(m), np.float64)  # in [0, 1], clipped
    rgba = np.array(evidence_cmap()(t, bytes=uint8))  # a tuple for one value
    strength = np.abs(2.0 * t - 1.0)
    alpha = opacity * (_WEAKEST + (1 - _WEAKEST) * strength) if overlay else np.full_like(t, opacity)
    if uint8:
        rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    else:
        rgba[..., 3] = alpha
    return rgba


def colormap_stops(n: int = 11) -> list[str]:
    """The colour map as ``n`` CSS colours from ``-vmax`` to ``+vmax`` (the page's colour bar)."""
    if n < 2:
        raise ValueError(f"a colour bar needs at least 2 stops, got {n}")
    from matplotlib.colors import to_hex

    cmap = evidence_cmap()
    return [to_hex(cmap(i / (n - 1))) for i in range(n)]
