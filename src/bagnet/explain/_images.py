"""Turning whatever image a user has into the tensor a model takes, and back for display."""

from __future__ import annotations

import torch

from ..data.transforms import ImageLike, Preprocessing, center_crop, image_tensor, resize_short_side

__all__ = ["ImageLike", "center_crop", "image_tensor", "preprocess", "resize_short_side"]


def preprocess(image: ImageLike, cfg: dict, *, crop: bool = False, img_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image as the model sees it: :class:`~bagnet.data.transforms.Preprocessing` of the
    model's ``pretrained_cfg`` (``img_size`` overrides its size), the one preprocessing of
    every path.

    Args:
        image: path, PIL image, numpy array or ``[C, H, W]`` tensor.
        cfg: the model's ``pretrained_cfg`` (``img_size``, ``crop_pct``, ``mean``, ``std``).
        crop: also centre-crop the result to a square (for grids of same-size images).
        img_size: short side to resize to, instead of the model's.

    Returns:
        ``(normalized [3, H, W], display [3, H, W] in [0, 1])``.
    """
    prepared = Preprocessing.from_cfg(cfg, img_size).prepare(image)
    x, shown = prepared.input, prepared.display
    if crop:
        side = min(shown.shape[-2:])
        x, shown = center_crop(x, side), center_crop(shown, side)
    return x, shown
