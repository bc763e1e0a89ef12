"""Experiment 1: top-1/top-5 accuracy and throughput of BagNets and reference models.

Brendel & Bethge (ICLR 2019), Table/Figure 2: BagNet-33 reaches 87.6% top-5 on
ImageNet, close to AlexNet; smaller patches lose accuracy.

.. note::
    ``top1``/``top5`` are scored as ``bagnet eval`` scores them: among all of a model's
    outputs (predicting a class the data set does not have is wrong), unless the session
    restricts them to the data set's classes (``--restrict-to-folder-classes``, the
    paper's subset evaluation of ImageNet-1k models); ``scoring`` says which. Throughput
    counts the forward passes only (not image decoding), in eval mode with the analysis
    batch size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._text import plural
from ._classifier import Classifier
from ._data import EvalData
from ._output import new_figure, write_result
from ._predictions import LogitCache, Predictions, predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ModelAccuracy", "accuracy", "accuracy_of", "plot_accuracy", "write_accuracy"]


@dataclass
class ModelAccuracy:
    label: str
    model: str
    kind: str  # "bagnet" or "reference"
    receptive_field: int | None
    top1: float  # percent, scored as `scoring` says
    top5: float
    images: int
    images_per_s: float
    params: int
    gmacs: float  # per image at the analysis resolution
    outputs: int  # of the model
    classes: int  # of the data set
    scoring: str  # among which outputs predictions were chosen


def accuracy_of(preds: Predictions, k: int, restricted: bool = False) -> float:
    """Percent of images whose true class is among the ``k`` highest of all the model's
    outputs, or with ``restricted`` among the ``k`` highest of the data set's classes'
    outputs (ties count as hits)."""
    if len(preds.targets) == 0:
        return float("nan")
    if not restricted:
        if k > preds.top_logits.shape[1]:
            raise ValueError(f"top-{k} over all outputs needs the {k} largest logits; {preds.top_logits.shape[1]} kept")
        true = preds.logits[np.arange(len(preds.targets)), preds.targets]
        kth = preds.top_logits[:, k - 1]
        return 100.0 * float(np.mean(np.isneginf(kth) | (true >= kth)))
    k = min(k, preds.logits.shape[1])
    top = np.argsort(-preds.logits, axis=1, kind="stable")[:, :k]
    return 100.0 * float((top == preds.targets[:, None]).any(axis=1).mean())


def accuracy(
    models: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    restricted: bool = False,
) -> list[ModelAccuracy]:
    """Top-1/top-5 and images/s of every model on the first ``max_images`` images, scored
    among all outputs (or, ``restricted``, among the data set's classes)."""
    from ..data.classes import scoring_note
    from ..models._profile import count_macs, count_params

    cache = cache or LogitCache()
    rows = []
    for clf in models:
        p = predictions(clf, data, max_images, batch_size=batch_size, cache=cache)
        info = clf.describe()
        rows.append(
            ModelAccuracy(
                label=clf.label,
                model=info["model"],
                kind=info["kind"],
                receptive_field=info["receptive_field"],
                top1=accuracy_of(p, 1, restricted),
                top5=accuracy_of(p, 5, restricted),
                images=len(p.indices),
                images_per_s=p.images_per_s,
                params=count_params(clf.model),
                gmacs=count_macs(clf.model, data.img_size) / 1e9,
                outputs=info["outputs"],
                classes=len(data.classes),
                scoring=scoring_note(info["outputs"], len(data.classes), restricted),
            )
        )
    return rows


def plot_accuracy(rows: Sequence[ModelAccuracy | dict]) -> tuple[Figure, Any]:
    """Bar chart of top-1 and top-5 per model; returns ``(fig, ax)``."""
    rows = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    fig, ax = new_figure(size=(max(4.0, 1.1 * len(rows) + 1.5), 3.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["top1"] for r in rows], 0.4, label="top-1")
    ax.bar(x + 0.2, [r["top5"] for r in rows], 0.4, label="top-5")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right")
    ax.set_title(f"accuracy ({plural(rows[0]['images'] if rows else 0, 'image')})")
    return fig, ax


def write_accuracy(rows: Sequence[ModelAccuracy], out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``accuracy.json`` and ``accuracy.png`` in ``out_dir``."""
    fig, _ = plot_accuracy(rows)
    return write_result(out_dir, "accuracy", "accuracy", {"models": list(rows)}, fig, meta)
