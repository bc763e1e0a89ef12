"""Classification metrics over collected logits: top-k, per-class accuracy, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .engine import topk_correct


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-5 (percent), per-class accuracy and the confusion matrix.

    Args:
        logits: ``[N, K]``, column k scoring ``classes[k]``.
        targets: ``[N]`` class indices.
        classes: the K class names.
    """
    k = len(classes)
    if logits.ndim != 2 or logits.shape[1] != k:
        raise ValueError(f"logits have shape {tuple(logits.shape)}, expected [N, {k}]")
    n = int(targets.numel())
    c1, c5 = topk_correct(logits, targets) if n else (0, 0)
    cm = confusion_matrix(logits.argmax(1), targets, k) if n else torch.zeros(k, k, dtype=torch.long)
    per_class = {}
    for i, name in enumerate(classes):
        total = int(cm[i].sum())
        per_class[name] = {"images": total, "top1": 100.0 * int(cm[i, i]) / total if total else None}
    return {
        "images": n,
        "top1": 100.0 * c1 / n if n else 0.0,
        "top5": 100.0 * c5 / n if n else 0.0,
        "per_class": per_class,
        "confusion": cm.tolist(),
    }
