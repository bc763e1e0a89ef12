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

Uncertainty: ``top1_ci``/``top5_ci`` are 95% percentile-bootstrap intervals over the images
(:mod:`bagnet.analysis._stats`). Every pair of models is compared on the same images
(:func:`accuracy_comparisons`): the paired-bootstrap interval of the difference, its
two-sided bootstrap p-value, and McNemar's exact test.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._text import plural
from ._classifier import Classifier
from ._data import EvalData
from ._output import new_figure, write_result
from ._predictions import LogitCache, Predictions, aligned_predictions, predictions
from ._stats import Bootstrap, bootstrap_interval, mcnemar_exact, paired_bootstrap, weighted_mean

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AccuracyResult",
    "ModelAccuracy",
    "accuracy",
    "accuracy_comparisons",
    "accuracy_of",
    "hits",
    "plot_accuracy",
    "write_accuracy",
]


@dataclass
class ModelAccuracy:
    """One model's row of :func:`accuracy`.

    Attributes:
        label: the model's name in results.
        model: its model name.
        kind: ``"bagnet"`` or ``"reference"``.
        receptive_field: q of a BagNet, else ``None``.
        top1: top-1 accuracy in percent, scored as ``scoring`` says.
        top5: top-5 accuracy in percent.
        images: images scored.
        images_per_s: forward passes only, at the analysis batch size.
        params: parameters.
        gmacs: multiply-adds per image at the analysis resolution, in billions.
        outputs: the model's outputs.
        classes: the data set's classes.
        scoring: among which outputs predictions were chosen.
    """

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
    top1_ci: list[float] | None = None  # [low, high] percent, bootstrap over images
    top5_ci: list[float] | None = None


@dataclass
class AccuracyResult:
    """The ``accuracy`` experiment: a row per model and the paired comparisons of all pairs."""

    models: list[ModelAccuracy] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    bootstrap: dict = field(default_factory=dict)


def hits(preds: Predictions, k: int, restricted: bool = False) -> np.ndarray:
    """Per image, whether the true class is among the ``k`` highest of all the model's
    outputs, or with ``restricted`` among the ``k`` highest of the data set's classes'
    outputs (ties count as hits). ``[N]`` booleans."""
    if len(preds.targets) == 0:
        return np.zeros(0, dtype=bool)
    if not restricted:
        if k > preds.top_logits.shape[1]:
            raise ValueError(f"top-{k} over all outputs needs the {k} largest logits; {preds.top_logits.shape[1]} kept")
        true = preds.logits[np.arange(len(preds.targets)), preds.targets]
        kth = preds.top_logits[:, k - 1]
        return np.isneginf(kth) | (true >= kth)
    k = min(k, preds.logits.shape[1])
    top = np.argsort(-preds.logits, axis=1, kind="stable")[:, :k]
    return (top == preds.targets[:, None]).any(axis=1)


def accuracy_of(preds: Predictions, k: int, restricted: bool = False) -> float:
    """Percent of images whose true class is among the ``k`` highest outputs (see :func:`hits`)."""
    h = hits(preds, k, restricted)
    return 100.0 * float(h.mean()) if h.size else float("nan")


def _percent_ci(h: np.ndarray, boot: Bootstrap, weights: dict[int, np.ndarray]) -> list[float] | None:
    """Interval of the percentage of hits; ``weights`` caches the resamples per image count."""
    if h.size == 0:
        return None
    if h.size not in weights:
        weights[h.size] = boot.weights(h.size)
    w = weights[h.size]
    return bootstrap_interval(lambda w_: 100.0 * weighted_mean(w_, h.astype(np.float64)), h.size, boot,
                              weights=w).ci


def accuracy(
    models: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    restricted: bool = False,
    bootstrap: Bootstrap | None = None,
) -> list[ModelAccuracy]:
    """Top-1/top-5 (with bootstrap intervals) and images/s of every model on the first
    ``max_images`` images, scored among all outputs (or, ``restricted``, among the data
    set's classes)."""
    from ..data.classes import scoring_note
    from ..models._profile import count_macs, count_params

    cache = cache or LogitCache()
    boot = bootstrap or Bootstrap()
    resamples: dict[int, np.ndarray] = {}
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
                top1_ci=_percent_ci(hits(p, 1, restricted), boot, resamples),
                top5_ci=_percent_ci(hits(p, 5, restricted), boot, resamples),
            )
        )
    return rows


def accuracy_comparisons(
    models: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    restricted: bool = False,
    bootstrap: Bootstrap | None = None,
) -> list[dict]:
    """Every pair of models on the same images, top-1 and top-5.

    Each entry holds ``a``, ``b``, ``metric`` (``top1``/``top5``), ``diff`` (a minus b,
    percentage points), ``diff_ci`` (paired bootstrap), ``p`` (its two-sided bootstrap
    p-value), ``p_mcnemar`` (McNemar's exact test), ``a_only``/``b_only`` (images only a /
    only b gets right) and ``images``.
    """
    boot = bootstrap or Bootstrap()
    if len(models) < 2:
        return []
    preds = aligned_predictions(models, data, max_images, batch_size=batch_size, cache=cache)
    n = len(next(iter(preds.values())).indices)
    w = boot.weights(n)
    out = []
    for k in (1, 5):
        h = {m.label: hits(preds[m.label], k, restricted).astype(np.float64) for m in models}
        for a, b in itertools.combinations(models, 2):
            ha, hb = h[a.label], h[b.label]
            cmp = paired_bootstrap(lambda w_, x=ha: 100.0 * weighted_mean(w_, x),
                                   lambda w_, x=hb: 100.0 * weighted_mean(w_, x), n, boot, weights=w)
            p_mc, a_only, b_only = mcnemar_exact(ha > 0, hb > 0)
            out.append({"a": a.label, "b": b.label, "metric": f"top{k}", "diff": cmp.diff, "diff_ci": cmp.ci,
                        "p": cmp.p, "p_mcnemar": p_mc, "a_only": a_only, "b_only": b_only, "images": n})
    return out


def plot_accuracy(rows: Sequence[ModelAccuracy | dict] | AccuracyResult) -> tuple[Figure, Any]:
    """Bar chart of top-1 and top-5 per model with their intervals; returns ``(fig, ax)``."""
    if isinstance(rows, AccuracyResult):
        rows = rows.models
    rows = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    fig, ax = new_figure(size=(max(4.0, 1.1 * len(rows) + 1.5), 3.2))
    x = np.arange(len(rows))
    for dx, key, label in ((-0.2, "top1", "top-1"), (0.2, "top5", "top-5")):
        values = np.array([r[key] for r in rows], dtype=float)
        ax.bar(x + dx, values, 0.4, label=label, yerr=_yerr(rows, key, values), capsize=2)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right")
    ax.set_title(f"accuracy ({plural(rows[0]['images'] if rows else 0, 'image')})")
    return fig, ax


def _yerr(rows: list[dict], key: str, values: np.ndarray) -> np.ndarray | None:
    """Asymmetric error bars ``[2, n]`` from ``KEY_ci`` (None when a row has none)."""
    cis = [r.get(f"{key}_ci") for r in rows]
    if any(c is None or None in c for c in cis):
        return None
    lo, hi = np.array(cis, dtype=float).T
    return np.stack([values - lo, hi - values]).clip(min=0)


def write_accuracy(result: Sequence[ModelAccuracy] | AccuracyResult, out_dir: str | os.PathLike,
                   meta: dict | None = None) -> dict[str, Path]:
    """``accuracy.json`` (``models``, ``comparisons``, ``bootstrap``) and ``accuracy.png`` in ``out_dir``."""
    if not isinstance(result, AccuracyResult):
        result = AccuracyResult(models=list(result))
    fig, _ = plot_accuracy(result)
    payload = {"models": list(result.models), "comparisons": result.comparisons, "bootstrap": result.bootstrap}
    return write_result(out_dir, "accuracy", "accuracy", payload, fig, meta)
