"""Experiment 5: do BagNets and deep networks find the same classes hard?

Brendel & Bethge (ICLR 2019), Section 4: the class-wise error rates of BagNet-33 and
VGG-16 on ImageNet are strongly correlated.

Uncertainty: a stratified percentile bootstrap over images. Each resample draws the images
of every class with replacement from that class (so each class keeps its number of
images, as the class-stratified evaluation set does), recomputes every model's per-class
errors (``errors_ci``) and the correlation of each pair (``r_ci``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._classifier import Classifier
from ._data import EvalData
from ._output import panel_grid, write_result
from ._predictions import LogitCache, aligned_predictions
from ._stats import Bootstrap, bootstrap_interval, pearson, rowwise_pearson

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ErrorDistribution", "class_errors", "error_distribution", "plot_error_distribution", "write_error_distribution"]


@dataclass
class ErrorDistribution:
    """Per-class top-1 errors of every model and their correlations (:func:`error_distribution`).

    Attributes:
        classes: the data set's classes.
        images_per_class: images of each class.
        errors: model label -> top-1 error (%) per class.
        pairs: one dict per (BagNet, reference) pair: ``bagnet``, ``reference`` and Pearson ``r``.
        images: images used.
    """

    classes: list[str] = field(default_factory=list)
    images_per_class: list[int] = field(default_factory=list)
    errors: dict[str, list[float]] = field(default_factory=dict)  # model label -> top-1 error (%) per class
    errors_ci: dict[str, list[list[float]]] = field(default_factory=dict)  # model label -> [low, high] per class
    pairs: list[dict] = field(default_factory=list)  # bagnet, reference, r, r_ci
    images: int = 0
    bootstrap: dict = field(default_factory=dict)


def class_errors(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 error in percent for every class (NaN for classes without images), from the
    predicted class of every image (:meth:`Predictions.predicted`; -1: none of the data's)."""
    wrong = predicted != targets
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    errs = np.bincount(targets, weights=wrong.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * errs / counts, np.nan)


def _resampled_class_errors(w: np.ndarray, predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """:func:`class_errors` of every resample ``[R, num_classes]`` under weights ``w [R, N]``."""
    onehot = np.zeros((len(targets), num_classes))
    onehot[np.arange(len(targets)), targets] = 1.0
    wrong = (predicted != targets).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * (w @ (onehot * wrong)) / (w @ onehot)


def error_distribution(
    bagnets: Sequence[Classifier],
    references: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    restricted: bool = False,
    bootstrap: Bootstrap | None = None,
) -> ErrorDistribution:
    """Per-class errors of every model, and their correlation for each BagNet/reference
    pair, with stratified bootstrap intervals (see the module docstring)."""
    if not bagnets or not references:
        raise ValueError("error-distribution needs at least one BagNet and one reference model")
    boot = bootstrap or Bootstrap()
    n_cls = len(data.classes)
    result = ErrorDistribution(classes=data.classes, bootstrap={**boot.describe(), "strata": "class"})
    preds = aligned_predictions([*bagnets, *references], data, max_images, batch_size=batch_size, cache=cache)
    targets = next(iter(preds.values())).targets
    w = boot.weights(len(targets), strata=targets)
    predicted: dict[str, np.ndarray] = {}
    for m in [*bagnets, *references]:
        p = preds[m.label]
        pred = predicted[m.label] = p.predicted(restricted)
        result.errors[m.label] = class_errors(pred, p.targets, n_cls).tolist()
        result.errors_ci[m.label] = bootstrap_interval(
            lambda w_, pr=pred: _resampled_class_errors(w_, pr, targets, n_cls), len(targets), boot, weights=w,
        ).ci
        result.images = len(p.indices)
        result.images_per_class = np.bincount(p.targets, minlength=n_cls).tolist()
    for b in bagnets:
        for r in references:
            x, y = np.asarray(result.errors[r.label]), np.asarray(result.errors[b.label])
            ok = np.isfinite(x) & np.isfinite(y)
            pr, pb = predicted[r.label], predicted[b.label]

            def r_of(w_: np.ndarray, pr=pr, pb=pb) -> np.ndarray:
                return rowwise_pearson(_resampled_class_errors(w_, pr, targets, n_cls),
                                       _resampled_class_errors(w_, pb, targets, n_cls))

            ci = bootstrap_interval(r_of, len(targets), boot, weights=w).ci
            result.pairs.append({"bagnet": b.label, "reference": r.label, "r": pearson(x[ok], y[ok]), "r_ci": ci})
    return result


def plot_error_distribution(result: ErrorDistribution | dict) -> tuple[Figure, Any]:
    """One scatter (reference error vs BagNet error, a point per class) per pair."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, axes = panel_grid(len(r["pairs"]), (3.4, 3.3))
    for ax, pair in zip(axes, r["pairs"]):
        x = np.array([np.nan if v is None else v for v in r["errors"][pair["reference"]]], float)
        y = np.array([np.nan if v is None else v for v in r["errors"][pair["bagnet"]]], float)
        ax.scatter(x, y, s=14, alpha=0.8)
        ax.plot([0, 100], [0, 100], ":", color="gray", lw=1)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_xlabel(f"{pair['reference']} error per class (%)")
        ax.set_ylabel(f"{pair['bagnet']} error per class (%)")
        rv, ci = pair["r"], pair.get("r_ci") or [None, None]
        text = f"r = {rv:.2f}" if rv is not None and math.isfinite(rv) else "r undefined"
        if None not in ci and rv is not None:
            text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        ax.set_title(text, fontsize=9)
    return fig, axes


def write_error_distribution(result: ErrorDistribution, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``error_distribution.json`` and ``error_distribution.png`` in ``out_dir``."""
    fig, _ = plot_error_distribution(result)
    return write_result(out_dir, "error_distribution", "error-distribution", result.__dict__, fig, meta)
