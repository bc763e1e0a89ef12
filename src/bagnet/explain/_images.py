"""Turning whatever image a user has into the tensor a model takes, and back for display."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import load_image, to_rgb

__all__ = ["ImageLike", "center_crop", "image_tensor", "preprocess", "resize_short_side"]

#: What the explain functions take as an image: a path, a PIL image, a numpy ``[H, W(, C)]``
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


def resize_short_side(t: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` so that the short side is ``size`` (as torchvision's ``Resize(size)``:
    bilinear with antialiasing, long side ``int(size * long / short)``)."""
    h, w = t.shape[-2:]
    if min(h, w) == size:
        return t
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    return F.interpolate(t[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return t[..., top : top + size, left : left + size]


def preprocess(image: ImageLike, cfg: dict, *, crop: bool = False, img_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image as the model sees it.

    Resizes so that the short side is ``img_size`` (default: ``cfg["img_size"]``; no
    resize when neither is set), optionally centre-crops to a square, and normalizes
    with ``cfg["mean"]``/``cfg["std"]``.

    Returns:
        ``(normalized [3, H, W], display [3, H, W] in [0, 1])``.
    """
    t = image_tensor(image)
    size = img_size if img_size is not None else cfg.get("img_size")
    if size:
        t = resize_short_side(t, int(size))
        if crop:
            t = center_crop(t, int(size))
    mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32)[:, None, None]
    return (t - mean) / std, t
