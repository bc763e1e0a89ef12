"""Outlier exposure: teach a classifier that some images are none of its classes.

Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure", ICLR 2019.
https://arxiv.org/abs/1812.04606

Images of other classes join the training set with the target :data:`OUTLIER` (-1); the
loss pushes their predicted distribution towards uniform (the cross-entropy to the uniform
distribution, weighted by ``weight``), so that a familiarity score such as the largest
softmax probability separates the model's classes from others. The flag of
:func:`bagnet.explain.unknown_check` is then calibrated on images of categories held out
from training (``bagnet calibrate``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data.images import ImageError, find_images, load_image

__all__ = ["OUTLIER", "OutlierExposureLoss", "OutlierImages"]

logger = logging.getLogger(__name__)

OUTLIER = -1  # the target of an image that is none of the classes


class OutlierExposureLoss(nn.Module):
    """Cross-entropy on labelled images plus ``weight`` times the cross-entropy between the
    uniform distribution and the prediction on outliers (target :data:`OUTLIER`).

    Each term is the mean over its own images, as in the paper; a batch without outliers
    gives the plain (label-smoothed) cross-entropy.
    """

    def __init__(self, weight: float = 0.5, label_smoothing: float = 0.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"the outlier weight must be 0 or more, got {weight}")
        self.weight = weight
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = targets == OUTLIER
        known = ~out
        loss = self.ce(logits[known], targets[known]) if known.any() else logits.sum() * 0.0
        if out.any():
            loss = loss - self.weight * F.log_softmax(logits[out].float(), dim=1).mean(dim=1).mean()
        return loss


class OutlierImages(Dataset):
    """Every image under ``root`` (searched recursively, following links), with the target :data:`OUTLIER`.

    Items are ``(image, OUTLIER)``, or ``None`` for a file that cannot be decoded (dropped
    by :func:`bagnet.data.folder.collate_skip`, like an unreadable training image).
    """

    def __init__(self, root: str | os.PathLike, transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--outliers folder {root} does not exist")
        self.paths = find_images(root)
        if not self.paths:
            raise ValueError(f"--outliers folder {root} holds no images")
        self.transform = transform
        self._warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image = load_image(path)
        except ImageError as e:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping unreadable outlier image %s", e)
            return None
        return (self.transform(image) if self.transform is not None else image), OUTLIER
