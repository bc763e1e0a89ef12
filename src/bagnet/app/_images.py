"""Image encoding for the explorer: the sharp photo under the maps, the heatmap overlay's
colours, and PNG/JPEG bytes and data URLs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .._extras import require

__all__ = ["PHOTO_SIDE", "colorize", "png_data_url"]

# The photo shown under the evidence is kept at up to this many pixels on its long side
# (sharp on a laptop screen; the model still sees its own input size).
PHOTO_SIDE = 1280


def _photo(image: Image.Image) -> bytes:
    """The part of ``image`` the model sees, at up to :data:`PHOTO_SIDE` pixels, as JPEG."""
    box = _centre_box(*image.size)
    # Box-filtered while cropping: a copy of a 40-megapixel crop would take 120 MB.
    factor = max(box[2] - box[0], box[3] - box[1]) // PHOTO_SIDE
    photo = image.reduce(factor, box) if factor >= 2 else image.crop(box)
    photo.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _jpeg(photo)


def _centre_box(w: int, h: int) -> tuple[int, int, int, int]:
    """The centre of a ``w x h`` image whose long side is at most twice its short side."""
    cw, ch = min(w, 2 * h), min(h, 2 * w)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def colorize(m: np.ndarray, percentile: float = 99.0, vmax: float | None = None) -> tuple[np.ndarray, float]:
    """RGBA uint8 overlay of a map on the paper's symmetric red-blue scale, and the scale.

    The scale is ``+-vmax``; by default the ``percentile`` of ``|m|`` (as
    :func:`bagnet.explain.plot_heatmap` and the authors' figures), so one extreme patch
    does not wash out the rest. Weak evidence is drawn more transparent, so the photo
    shows through where the model sees little either way.
    """
    colormaps = require("matplotlib", "the explorer's heatmaps").colormaps

    if vmax is None:
        vmax = float(np.percentile(np.abs(m), percentile)) if m.size else 0.0
    vmax = float(vmax) if vmax > 0 else 1.0
    t = np.clip(m / vmax, -1.0, 1.0)
    rgba = colormaps["RdBu_r"]((t + 1.0) / 2.0)
    rgba[..., 3] = 0.25 + 0.75 * np.abs(t)
    return (rgba * 255 + 0.5).astype(np.uint8), vmax


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def png_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """``data:`` URL of a PIL image (PNG, or JPEG for photos)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
