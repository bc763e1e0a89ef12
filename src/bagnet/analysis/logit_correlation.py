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
from ._stats import nan_if_none, pearson

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LogitCorrelation", "correlations", "logit_correlation", "plot_logit_correlation", "write_logit_correlation"]


@dataclass
class LogitCorrelation:
    pairs: list[dict] = field(default_factory=list)  # bagnet, reference, receptive_field, r_*
    baselines: list[dict] = field(default_factory=list)  # reference pairs
    images: int = 0


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


def logit_correlation(
    bagnets: Sequence[Classifier],
    references: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
) -> LogitCorrelation:
    """Correlations of every BagNet with every reference, on the same images."""
    if not bagnets or not references:
        raise ValueError("logit-correlation needs at least one BagNet and one reference model")
    preds = aligned_predictions([*bagnets, *references], data, max_images, batch_size=batch_size, cache=cache)
    logits = {k: p.logits for k, p in preds.items()}
    result = LogitCorrelation(images=len(next(iter(preds.values())).indices))
    for b in sorted(bagnets, key=lambda m: (m.receptive_field, m.label)):
        for r in references:
            result.pairs.append(
                {"bagnet": b.label, "reference": r.label, "receptive_field": b.receptive_field,
                 **correlations(logits[b.label], logits[r.label])}
            )
    for r1, r2 in itertools.combinations(references, 2):
        result.baselines.append({"a": r1.label, "b": r2.label, **correlations(logits[r1.label], logits[r2.label])})
    return result


def plot_logit_correlation(result: LogitCorrelation | dict) -> tuple[Figure, Any]:
    """Both correlations against q, one line per reference. Returns ``(fig, axes)``."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, axes = new_figure(2, size=(4.2, 3.3))
    for ax, key, title in ((axes[0], "r_all", "all entries"), (axes[1], "r_per_image", "per image (mean)")):
        for ref in dict.fromkeys(p["reference"] for p in r["pairs"]):
            rows = [p for p in r["pairs"] if p["reference"] == ref]
            ax.plot([p["receptive_field"] for p in rows], [nan_if_none(p[key]) for p in rows], "o-", label=f"vs {ref}")
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
    fig, _ = plot_logit_correlation(result)
    return write_result(out_dir, "logit_correlation", "logit-correlation", result.__dict__, fig, meta)
