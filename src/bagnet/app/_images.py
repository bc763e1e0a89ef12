"""Image encoding for the explorer: the sharp photo under the maps, the heatmap overlay
(coloured by :mod:`bagnet.explain._colour`, as every evidence picture), and PNG/JPEG bytes
and data URLs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..data.transforms import centre_box
from ..explain._colour import SCALE_PERCENTILE, colour_scale, evidence_rgba

__all__ = ["PHOTO_SIDE", "colorize", "png_data_url"]

# The photo shown under the evidence is kept at up to this many pixels on its long side
# (sharp on a laptop screen; the model still sees its own input size).
PHOTO_SIDE = 1280


def _photo(image: Image.Image) -> bytes:
    """The part of ``image`` the model sees, at up to :data:`PHOTO_SIDE` pixels, as JPEG."""
    box = centre_box(*image.size)
    # Box-filtered while cropping: a copy of a 40-megapixel crop would take 120 MB.
    factor = max(box[2] - box[0], box[3] - box[1]) // PHOTO_SIDE
    photo = image.reduce(factor, box) if factor >= 2 else image.crop(box)
    photo.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _jpeg(photo)


def colorize(m: np.ndarray, percentile: float = SCALE_PERCENTILE, vmax: float | None = None) -> tuple[np.ndarray, float]:
    """RGBA uint8 overlay of a map on the symmetric red-blue scale, and the scale.

    The scale is ``+-vmax``; by default :func:`~bagnet.explain.colour_scale` of the map
    (the ``percentile`` of ``|m|``). The colours and the transparency (weak evidence more
    transparent, so the photo shows through) are :func:`~bagnet.explain._colour.evidence_rgba`'s
    overlay at full opacity: the page's opacity slider scales it.
    """
    vmax = colour_scale([m], percentile) if vmax is None else float(vmax)
    vmax = vmax if vmax > 0 else 1.0
    return evidence_rgba(m, vmax, overlay=True, uint8=True), vmax


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def png_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """``data:`` URL of a PIL image (PNG, or JPEG for photos)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
