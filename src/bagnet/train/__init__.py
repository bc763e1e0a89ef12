"""Training: the loop, evaluation, resumable checkpoints and distributed setup.

Follows the shape of torchvision's ``references/classification/train.py``:
:func:`train_one_epoch` and :func:`evaluate` do one pass each, :func:`train` runs a
whole resumable run as a :class:`TrainConfig` describes.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .engine import EpochStats, evaluate, iter_logits, topk_correct, train_one_epoch
from .loop import train
from .optim import ModelEma

__all__ = [
    "EpochStats",
    "ModelEma",
    "TrainConfig",
    "evaluate",
    "iter_logits",
    "load_checkpoint",
    "save_checkpoint",
    "topk_correct",
    "train",
    "train_one_epoch",
]
