"""Classification metrics over collected logits: top-k, per-class accuracy, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .engine import topk_correct


def classification_report(
    logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], columns: Sequence[int] | None = None
) -> dict[str, Any]:
    """Top-1/top-5 (percent), per-class accuracy and the confusion matrix.

    Args:
        logits: ``[N, M]`` outputs.
        targets: ``[N]`` indices into ``classes``.
        classes: the K class names.
        columns: the output column that scores each class (default: column k scores
            ``classes[k]``, and M == K). A prediction of any other column is wrong, whatever
            the true class; the confusion matrix then gets a last column, ``other``, that
            counts such predictions.

    Returns:
        ``images``, ``top1``, ``top5``, ``per_class`` (name -> images, top1),
        ``confusion`` (rows: true class; columns: ``confusion_columns``) and
        ``confusion_columns`` (the class names, and ``"other"`` if there are other outputs).
    """
    k = len(classes)
    if logits.ndim != 2:
        raise ValueError(f"logits have shape {tuple(logits.shape)}, expected [N, outputs]")
    m = logits.shape[1]
    if columns is None:
        if m != k:
            raise ValueError(f"logits have shape {tuple(logits.shape)}, expected [N, {k}]")
        columns = range(k)
    cols = torch.as_tensor(list(columns), dtype=torch.long)
    if len(cols) != k or (k and not 0 <= int(cols.min()) <= int(cols.max()) < m) or len(set(cols.tolist())) != k:
        raise ValueError(f"columns must name {k} distinct outputs among {m}, got {cols.tolist()}")
    # position of every output among the classes; K ("other") for outputs of no class
    position = torch.full((m,), k, dtype=torch.long)
    position[cols] = torch.arange(k)
    width = k + 1 if m > k else k
    n = int(targets.numel())
    c1, c5 = topk_correct(logits, cols[targets.long()]) if n else (0, 0)
    flat = targets.long() * width + position[logits.argmax(1)] if n else torch.zeros(0, dtype=torch.long)
    cm = torch.bincount(flat, minlength=k * width).reshape(k, width)
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
        "confusion_columns": [*classes, *(["other"] if width > k else [])],
    }
