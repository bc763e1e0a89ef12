"""Sample photos that ship with scikit-image, so the demo runs offline out of the box."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .._extras import require
from ..data.images import to_rgb

__all__ = ["SAMPLE_NAMES", "sample_image"]

# Colour photos of everyday objects (plus one grayscale classic). All are files inside the
# scikit-image wheel: none needs pooch or the network.
SAMPLE_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera")


def sample_image(name: str) -> Image.Image:
    """One of :data:`SAMPLE_NAMES` as an 8-bit RGB PIL image.

    Raises:
        ValueError: unknown name.
    """
    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_NAMES)}")
    data = require("skimage.data", "the demo's sample photos")  # imported here: scikit-image is slow to import

    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))
