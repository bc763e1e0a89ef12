"""Reading images the way users expect them to look, whatever the file format.

Handles EXIF orientation, grayscale, palette, transparency (composited on white),
CMYK and 16-bit/float images, and turns every decoder failure into one
:class:`ImageError` that names the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class ImageError(ValueError):
    """A file that cannot be read as an image."""


def load_image(source: str | os.PathLike | BinaryIO, *, max_pixels: int | None = None, shrink_to: int | None = None) -> Image.Image:
    """Open ``source`` (path or binary file object) as an 8-bit RGB image, upright.

    Args:
        source: path or file object.
        max_pixels: refuse images with more pixels than this (decompression bombs);
            ``None`` keeps Pillow's own limit.
        shrink_to: decode JPEGs at the coarsest of the scales 1/2, 1/4, 1/8 whose short
            side is still at least this many pixels (the decoder skips the detail, so a
            40-megapixel photo never exists at full size in memory); other formats are
            decoded at full size. ``None``: always full size.

    Raises:
        ImageError: unreadable, empty, truncated, non-image or oversized file.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow reads past broken EXIF blocks (the image itself is fine) but warns
            # once per file; the orientation is then simply unknown.
            warnings.filterwarnings("ignore", message=r"(?i).*(exif|tag data)", category=UserWarning)
            with Image.open(source) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageError(
                        f"{name}: image is {img.width}x{img.height} pixels, more than the limit of {max_pixels}"
                    )
                if shrink_to is not None and min(img.size) >= 2 * shrink_to:
                    img.draft(None, (shrink_to, shrink_to))
                img.load()
                # In place: without an orientation tag a copy would double the memory of a
                # large image for nothing.
                ImageOps.exif_transpose(img, in_place=True)
                return to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        if _is_empty(source):
            raise ImageError(f"{name}: empty file (0 bytes)") from None
        raise ImageError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file") from None
    except PermissionError as e:
        raise ImageError(f"{name}: cannot be read ({e.strerror})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None


def _is_empty(source) -> bool:
    try:
        if isinstance(source, (str, os.PathLike)):
            return os.path.getsize(source) == 0
        return source.seek(0, os.SEEK_END) == 0
    except (OSError, AttributeError, ValueError):
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way it would be displayed."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(a.max()), 1e-12) if a.max() > 1 else 1.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info:
        # A transparent palette entry or colour key (PNG tRNS) is transparency like an
        # alpha channel, and gets the same white background.
        img = img.convert("RGBA")
    elif img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root``, sorted, searching sub-folders recursively and
    following symbolic links to folders (each real folder is visited once)."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_file(f)]
    return sorted(found)
