"""The one preprocessing of bagnet: how an image becomes a model's input, on every path.

``bagnet eval``, ``explain``, ``demo``, ``serve``, ``calibrate``, ``certify``, ``attack``,
``analyze``, the timm data config and the ONNX example all call :class:`Preprocessing`,
built from a model's ``pretrained_cfg`` by :meth:`Preprocessing.from_cfg`, so that the
accuracy a model card quotes is the accuracy of the pixels every other path feeds it.

The served convention is the **whole image**: the short side is resized to ``img_size``
(bilinear, antialiased, aspect ratio kept) and nothing is cropped, because an explanation
should cover all of the photo a user gave. Two steps bound the work for any file, and are
part of the definition (every path takes them, so they never make paths disagree):

- an image whose long side is more than :data:`MAX_ASPECT` times its short side keeps its
  centre, :data:`MAX_ASPECT` times as long as the short side (a 20000 x 50 strip would
  otherwise become a 76800 x 192 input);
- a large JPEG file is decoded at the coarsest scale (1/2, 1/4, 1/8) whose short side
  still has at least ``max(2 * size, DECODE_MIN_SIDE)`` pixels, and a decoded image
  at least twice that large is box-filtered by a whole factor before the resize.

A model may instead carry ``crop_pct`` (the usual ImageNet evaluation: resize the short
side to ``img_size / crop_pct``, centre-crop ``img_size``); none of the models bagnet
ships does.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .images import load_image, to_rgb

__all__ = ["DEFAULT_IMG_SIZE", "MAX_ASPECT", "ImageLike", "Prepared", "Preprocessing", "center_crop", "centre_box", "image_tensor",
           "resize_short_side"]

#: The longest long side, in short sides, an input keeps (the centre is kept).
MAX_ASPECT = 2
#: The short side for a model whose ``pretrained_cfg`` names no size (ImageNet's usual 224).
DEFAULT_IMG_SIZE = 224
#: JPEG files are never decoded with a short side below this (nor below twice the size the
#: model needs), so that the explorer's photo and the model's input come from one decode.
DECODE_MIN_SIDE = 640

#: What the preprocessing takes as an image: a path, a PIL image, a numpy ``[H, W(, C)]``
#: array or a torch ``[C, H, W]`` tensor.
ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def image_tensor(image: ImageLike) -> torch.Tensor:
    """A path, PIL image, numpy ``[H, W(, C)]`` array or torch ``[C, H, W]`` tensor as a
    float ``[3, H, W]`` tensor in [0, 1] (uint8 inputs are scaled by 1/255).

    Raises:
        ImageError: unreadable image file.
        ValueError: an array of another shape, or float values outside [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(to_rgb(image))
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(f"expected an [H, W] or [H, W, C] image array, got shape {a.shape}")
        t = torch.from_numpy(np.array(a)).permute(2, 0, 1)  # a copy: PIL arrays are read-only
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"expected a [C, H, W] image tensor, got shape {tuple(t.shape)}")
    else:
        raise TypeError(f"cannot read an image from a {type(image).__name__}")
    if t.shape[0] == 4:
        t = t[:3]
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 image channels, got {t.shape[0]}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    t = t.float()
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float image values lie in [{lo:.2f}, {hi:.2f}]; pass unnormalized values in [0, 1] or uint8")
    return t.clamp(0.0, 1.0).contiguous()


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """``(H, W)`` after resizing the short side of an ``h x w`` image to ``size``
    (the long side as torchvision's ``Resize(size)``: ``int(size * long / short)``)."""
    if h <= w:
        return size, max(1, int(size * w / h))
    return max(1, int(size * h / w)), size


def resize_short_side(t: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` in [0, 1] so that the short side is ``size`` (bilinear with
    antialiasing; the long side as torchvision's ``Resize(size)``)."""
    h, w = t.shape[-2:]
    if min(h, w) == size:
        return t
    return F.interpolate(t[None], size=resized_shape(h, w, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def centre_box(w: int, h: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the centre of a ``w x h`` image whose long side is
    at most :data:`MAX_ASPECT` times its short side (the whole image when it already is)."""
    cw, ch = min(w, MAX_ASPECT * h), min(h, MAX_ASPECT * w)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` window of ``[C, H, W]`` (smaller sides are kept)."""
    h, w = t.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return t[..., top : top + size, left : left + size]


@dataclass
class Prepared:
    """An image as :meth:`Preprocessing.prepare` made it ready for a model.

    Attributes:
        input: ``[3, H, W]`` normalized, what the model takes.
        display: ``[3, H, W]`` in [0, 1], the same pixels before normalization.
        size: ``(width, height)`` of the image as decoded (a large JPEG file is decoded
            at a reduced scale, see :meth:`Preprocessing.load`).
        box: ``(x0, y0, x1, y1)`` of the part of that image the input shows, in its pixels
            (the whole image unless its long side was cut).
        decoded: the decoded PIL image, where the input came from a file or PIL image.
    """

    input: torch.Tensor
    display: torch.Tensor
    size: tuple[int, int]
    box: tuple[int, int, int, int]
    decoded: Image.Image | None = None

    @property
    def cut(self) -> bool:
        """The long side was cut to :data:`MAX_ASPECT` times the short side."""
        return tuple(self.box) != (0, 0, *self.size)

    @property
    def upscale(self) -> float:
        """How many times the short side of the used part was enlarged (below 1: shrunk)."""
        x0, y0, x1, y1 = self.box
        return min(self.input.shape[-2:]) / max(1, min(x1 - x0, y1 - y0))


@dataclass(frozen=True)
class Preprocessing:
    """A model's input pipeline: resize, optional centre crop, normalization.

    Args:
        img_size: the short side after resizing, in pixels; ``None`` keeps the image's size.
        crop_pct: ``None`` (the served convention): the whole image, nothing cropped. A
            fraction in (0, 1]: resize the short side to ``round(img_size / crop_pct)`` and
            centre-crop ``img_size x img_size``.
        mean, std: per-channel normalization of values in [0, 1].

    Calling it on an image (path, PIL, numpy or ``[C, H, W]`` tensor) returns the
    normalized ``[3, H, W]`` float tensor the model takes, so it is also a torchvision-style
    dataset transform.
    """

    img_size: int | None
    crop_pct: float | None = None
    mean: tuple[float, float, float] = tuple(IMAGENET_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_STD)

    def __post_init__(self):
        if self.img_size is not None and (isinstance(self.img_size, bool) or int(self.img_size) != self.img_size
                                          or self.img_size < 1):
            raise ValueError(f"img_size must be a positive whole number of pixels, got {self.img_size!r}")
        if self.crop_pct is not None and not (0 < self.crop_pct <= 1):
            raise ValueError(f"crop_pct must lie in (0, 1] (or be None for the whole image), got {self.crop_pct!r}")
        if self.crop_pct is not None and self.img_size is None:
            raise ValueError("crop_pct needs an img_size to crop to")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(math.isfinite(float(x)) for x in v):
                raise ValueError(f"{name} must be three finite numbers, got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.img_size is not None:
            object.__setattr__(self, "img_size", int(self.img_size))

    @classmethod
    def from_cfg(cls, cfg: Mapping, img_size: int | None = None) -> Preprocessing:
        """The preprocessing a model's ``pretrained_cfg`` describes (``img_size``,
        ``crop_pct``, ``mean``, ``std``); ``img_size`` overrides the model's size, and a
        model that names none is given :data:`DEFAULT_IMG_SIZE`."""
        size = img_size if img_size is not None else (cfg.get("img_size") or DEFAULT_IMG_SIZE)
        # A model made by timm.create_model carries timm's crop_pct (1.0, a square centre
        # crop: timm cannot spell "the whole image") and bagnet's own as bagnet_crop_pct.
        crop = cfg["bagnet_crop_pct"] if "bagnet_crop_pct" in cfg else cfg.get("crop_pct")
        return cls(
            img_size=int(size) if size else None,
            crop_pct=float(crop) if crop is not None and size else None,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        )

    @property
    def resize_size(self) -> int | None:
        """The short side the image is resized to before any crop."""
        if self.img_size is None:
            return None
        return self.img_size if self.crop_pct is None else round(self.img_size / self.crop_pct)

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(H, W)`` of the model input for an ``h x w`` image."""
        x0, y0, x1, y1 = centre_box(w, h)
        h, w = y1 - y0, x1 - x0
        if self.img_size is None:
            return h, w
        rh, rw = resized_shape(h, w, self.resize_size)
        if self.crop_pct is None:
            return rh, rw
        return min(rh, self.img_size), min(rw, self.img_size)

    @property
    def decode_side(self) -> int | None:
        """The smallest short side a JPEG is decoded at (``None``: full size)."""
        return None if self.img_size is None else max(2 * self.resize_size, DECODE_MIN_SIDE)

    def load(self, source: str | os.PathLike | BinaryIO | bytes, *, max_pixels: int | None = None) -> Image.Image:
        """Decode an image file (path, file object or bytes) as this preprocessing does.

        Raises:
            ImageError: unreadable file, or more than ``max_pixels`` pixels.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        return load_image(source, max_pixels=max_pixels, shrink_to=self.decode_side)

    def prepare(self, image: ImageLike | bytes | BinaryIO, *, max_pixels: int | None = None) -> Prepared:
        """The model input of an image (file path, bytes, file object, PIL image, numpy
        ``[H, W(, C)]`` array or ``[C, H, W]`` tensor), with where it lies in the original.

        Raises:
            ImageError: unreadable file, or more than ``max_pixels`` pixels.
            ValueError: an array of another shape, or float values outside [0, 1].
        """
        decoded = None
        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, io.IOBase)):
            image = self.load(image, max_pixels=max_pixels)
        if isinstance(image, Image.Image):
            decoded = image
            size = image.size
            box = centre_box(*size)
            if box != (0, 0, *size):
                image = image.crop(box)
            if self.img_size is not None:
                factor = min(image.size) // (2 * self.resize_size)
                if factor >= 2:
                    # Box-filter large images first: a 40-megapixel photo would otherwise pass
                    # through a half-gigabyte float tensor on its way down to a few hundred pixels.
                    image = image.reduce(factor)
            t = image_tensor(image)
        else:
            t = image_tensor(image)
            size = (t.shape[-1], t.shape[-2])
            box = centre_box(*size)
            t = t[:, box[1] : box[3], box[0] : box[2]]
        if self.img_size is not None:
            t = resize_short_side(t, self.resize_size)
            if self.crop_pct is not None:
                t = center_crop(t, self.img_size)
        return Prepared(self.normalize(t), t, tuple(size), tuple(box), decoded)

    def display(self, image: ImageLike) -> torch.Tensor:
        """The image as the model sees it, before normalization: ``[3, H, W]`` in [0, 1]."""
        return self.prepare(image).display

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        """``(t - mean) / std`` of a ``[..., 3, H, W]`` tensor in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=t.dtype, device=t.device)[:, None, None]
        std = torch.tensor(self.std, dtype=t.dtype, device=t.device)[:, None, None]
        return (t - mean) / std

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.prepare(image).input

    def describe(self) -> str:
        """One line for reports and model cards: what every path does to an image."""
        if self.img_size is None:
            return "the image at its own size (no resize, no crop)"
        if self.crop_pct is None:
            return (f"the whole image, its short side resized to {self.img_size} px (aspect ratio kept; only a long "
                    f"side over {MAX_ASPECT}x the short side is cut to its centre)")
        return (f"the short side resized to {self.resize_size} px, then the central {self.img_size}x{self.img_size} "
                f"px cropped (crop_pct {self.crop_pct:g})")

    def to_cfg(self) -> dict:
        """The ``pretrained_cfg`` fields that define this preprocessing."""
        return {"img_size": self.img_size, "crop_pct": self.crop_pct, "mean": list(self.mean), "std": list(self.std)}
