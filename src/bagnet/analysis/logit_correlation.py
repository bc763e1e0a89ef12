"""Experiment 3: how closely the logits of BagNet-q follow those of a reference DNN.

Brendel & Bethge (ICLR 2019), Section 4: the logits of BagNets correlate with those of
VGG-16, and more strongly the larger q.

Two correlations are reported for every pair, because they answer different questions:

- ``r_per_image``: Pearson r between the two logit vectors of one image (over the
  data set's classes), averaged over images -- do the models rank the classes alike?
- ``r_all``: Pearson r over all (image, class) entries at once -- do the logits agree
  as numbers across the whole data set? (The paper's figure; dominated by the large
  spread between true-class and other logits.)

Pairs of reference DNNs are reported too, as the agreement one can expect between two
different deep networks.

Every correlation comes with a 95% percentile-bootstrap interval over images (``*_ci``:
resample images, recompute ``r_all`` and the per-image mean and median). Two BagNets
compared with the same reference are compared on the same images: ``comparisons`` holds,
for each reference and each pair of BagNets, the paired-bootstrap interval and p-value of
the difference (larger q minus smaller q), which tests the paper's "more strongly the
larger q".
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._classifier import Classifier
from ._data import EvalData
from ._output import new_figure, write_result
from ._predictions import LogitCache, aligned_predictions
from ._stats import (
    Bootstrap,
    bootstrap_interval,
    nan_if_none,
    pair_sums,
    paired_bootstrap,
    pearson,
    weighted_mean,
    weighted_median,
    weighted_pearson,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LogitCorrelation",
    "correlation_intervals",
    "correlations",
    "logit_correlation",
    "plot_logit_correlation",
    "write_logit_correlation",
]

_KEYS = ("r_all", "r_per_image", "r_per_image_median")


@dataclass
class LogitCorrelation:
    """How closely BagNet logits follow the references' (:func:`logit_correlation`).

    Attributes:
        pairs: one dict per (BagNet, reference) pair: ``bagnet``, ``reference``,
            ``receptive_field`` and the correlations ``r_all``, ``r_per_image`` (mean) and
            ``r_per_image_median``.
        baselines: the same for pairs of reference networks.
        comparisons: for each reference and pair of BagNets (``a``: the larger q), the
            difference of ``metric`` (``r_all``, ``r_per_image``) on the same images:
            ``diff``, ``diff_ci``, ``p`` (paired bootstrap).
        images: images used.
        bootstrap: how the intervals (``*_ci`` next to every correlation) were computed.
    """

    pairs: list[dict] = field(default_factory=list)  # bagnet, reference, receptive_field, r_*, r_*_ci
    baselines: list[dict] = field(default_factory=list)  # reference pairs
    comparisons: list[dict] = field(default_factory=list)
    images: int = 0
    bootstrap: dict = field(default_factory=dict)


def correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``r_per_image`` (mean and median over images) and ``r_all`` of two ``[N, C]`` logit arrays."""
    if a.shape != b.shape:
        raise ValueError(f"logit arrays differ in shape: {a.shape} vs {b.shape}")
    per_image = np.array([pearson(x, y) for x, y in zip(a, b)])
    finite = per_image[np.isfinite(per_image)]
    return {
        "r_per_image": float(finite.mean()) if finite.size else float("nan"),
        "r_per_image_median": float(np.median(finite)) if finite.size else float("nan"),
        "r_all": pearson(a, b),
    }


def _statistics(a: np.ndarray, b: np.ndarray) -> dict:
    """``r_all``, ``r_per_image`` and its median as functions of resampling weights ``[R, n]``."""
    sums = pair_sums(a, b)
    per_image = np.array([pearson(x, y) for x, y in zip(a, b)])
    return {
        "r_all": lambda w: weighted_pearson(w, sums),
        "r_per_image": lambda w: weighted_mean(w, per_image),
        "r_per_image_median": lambda w: weighted_median(w, per_image),
    }


def correlation_intervals(a: np.ndarray, b: np.ndarray, boot: Bootstrap, weights: np.ndarray | None = None) -> dict:
    """``r_all_ci``, ``r_per_image_ci`` and ``r_per_image_median_ci`` of two ``[N, C]`` logit
    arrays: percentile-bootstrap intervals over the N images."""
    stats = _statistics(a, b)
    w = boot.weights(len(a)) if weights is None else weights
    return {f"{k}_ci": bootstrap_interval(stats[k], len(a), boot, weights=w).ci for k in _KEYS}


def logit_correlation(
    bagnets: Sequence[Classifier],
    references: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    bootstrap: Bootstrap | None = None,
) -> LogitCorrelation:
    """Correlations of every BagNet with every reference, on the same images, with
    bootstrap intervals, and paired comparisons of the BagNets against each reference."""
    if not bagnets or not references:
        raise ValueError("logit-correlation needs at least one BagNet and one reference model")
    boot = bootstrap or Bootstrap()
    preds = aligned_predictions([*bagnets, *references], data, max_images, batch_size=batch_size, cache=cache)
    logits = {k: p.logits for k, p in preds.items()}
    n = len(next(iter(preds.values())).indices)
    result = LogitCorrelation(images=n, bootstrap=boot.describe())
    w = boot.weights(n)
    ordered = sorted(bagnets, key=lambda m: (m.receptive_field, m.label))
    for b in ordered:
        for r in references:
            a_, r_ = logits[b.label], logits[r.label]
            result.pairs.append(
                {"bagnet": b.label, "reference": r.label, "receptive_field": b.receptive_field,
                 **correlations(a_, r_), **correlation_intervals(a_, r_, boot, w)}
            )
    for r1, r2 in itertools.combinations(references, 2):
        a_, b_ = logits[r1.label], logits[r2.label]
        result.baselines.append({"a": r1.label, "b": r2.label, **correlations(a_, b_),
                                 **correlation_intervals(a_, b_, boot, w)})
    for r in references:
        stats = {b.label: _statistics(logits[b.label], logits[r.label]) for b in ordered}
        for small, large in itertools.combinations(ordered, 2):
            for key in ("r_all", "r_per_image"):
                c = paired_bootstrap(stats[large.label][key], stats[small.label][key], n, boot, weights=w)
                result.comparisons.append({"reference": r.label, "a": large.label, "b": small.label, "metric": key,
                                           "diff": c.diff, "diff_ci": c.ci, "p": c.p})
    return result


def plot_logit_correlation(result: LogitCorrelation | dict) -> tuple[Figure, Any]:
    """Both correlations against q, one line per reference. Returns ``(fig, axes)``."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, axes = new_figure(2, size=(4.2, 3.3))
    for ax, key, title in ((axes[0], "r_all", "all entries"), (axes[1], "r_per_image", "per image (mean)")):
        for ref in dict.fromkeys(p["reference"] for p in r["pairs"]):
            rows = [p for p in r["pairs"] if p["reference"] == ref]
            qs, values = [p["receptive_field"] for p in rows], [nan_if_none(p[key]) for p in rows]
            (line,) = ax.plot(qs, values, "o-", label=f"vs {ref}")
            cis = [p.get(f"{key}_ci") for p in rows]
            if all(c is not None for c in cis):
                lo, hi = np.array([[nan_if_none(v) for v in c] for c in cis]).T
                ax.fill_between(qs, lo, hi, alpha=0.15, color=line.get_color())
        for base in r["baselines"]:
            if base[key] is not None:
                ax.axhline(base[key], ls=":", lw=1, color="gray")
                ax.text(ax.get_xlim()[0], base[key], f" {base['a']} vs {base['b']}", fontsize=7, va="bottom")
        ax.set_xlabel("BagNet patch size q")
        ax.set_ylabel("Pearson r of logits")
        ax.set_title(title)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.legend(fontsize=8, loc="lower right")
    return fig, axes


def write_logit_correlation(result: LogitCorrelation, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``logit_correlation.json`` and ``logit_correlation.png`` in ``out_dir``."""
    fig, _ = plot_logit_correlation(result)
    return write_result(out_dir, "logit_correlation", "logit-correlation", result.__dict__, fig, meta)
