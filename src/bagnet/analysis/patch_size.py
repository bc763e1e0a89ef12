"""Experiment 2: accuracy against the patch size q of the BagNets.

Brendel & Bethge (ICLR 2019), Figure 2: top-5 accuracy on ImageNet rises from BagNet-9
over BagNet-17 to BagNet-33 and approaches VGG-16 only slowly with q.
"""

from __future__ import annotations

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
from ._predictions import LogitCache
from ._stats import Bootstrap
from .accuracy import accuracy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PatchSizeResult", "patch_size", "plot_patch_size", "write_patch_size"]


@dataclass
class PatchSizeResult:
    """BagNet accuracies ordered by q, and the references' for comparison (percent)."""

    bagnets: list[dict] = field(default_factory=list)  # label, receptive_field, top1, top5, top1_ci, top5_ci
    references: list[dict] = field(default_factory=list)  # label, top1, top5, top1_ci, top5_ci
    images: int = 0


def patch_size(
    models: Sequence[Classifier],
    data: EvalData,
    *,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    restricted: bool = False,
    bootstrap: Bootstrap | None = None,
) -> PatchSizeResult:
    """Accuracy of every BagNet against its receptive field, references as baselines
    (scored as :func:`~bagnet.analysis.accuracy.accuracy` scores it, with its bootstrap
    intervals ``top1_ci``/``top5_ci``)."""
    if not any(m.is_bagnet for m in models):
        raise ValueError("patch-size needs at least one BagNet")
    rows = accuracy(models, data, max_images=max_images, batch_size=batch_size, cache=cache, restricted=restricted,
                    bootstrap=bootstrap)
    keep = ("label", "top1", "top5", "top1_ci", "top5_ci")
    result = PatchSizeResult(images=rows[0].images)
    for r in sorted(rows, key=lambda r: (r.receptive_field or 0, r.label)):
        entry = {k: getattr(r, k) for k in keep}
        if r.kind == "bagnet":
            result.bagnets.append({**entry, "receptive_field": r.receptive_field})
        else:
            result.references.append(entry)
    return result


def plot_patch_size(result: PatchSizeResult | dict) -> tuple[Figure, Any]:
    """Top-1 and top-5 against q; references as horizontal lines. Returns ``(fig, ax)``."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, ax = new_figure()
    qs = [b["receptive_field"] for b in r["bagnets"]]
    for key, style in (("top1", "o-"), ("top5", "s--")):
        ax.plot(qs, [b[key] for b in r["bagnets"]], style, label=f"BagNets {key}")
        cis = [b.get(f"{key}_ci") for b in r["bagnets"]]
        if qs and all(c is not None and None not in c for c in cis):
            lo, hi = np.array(cis, dtype=float).T
            ax.fill_between(qs, lo, hi, alpha=0.15)
    for ref in r["references"]:
        ax.axhline(ref["top1"], lw=1, ls=":", color="gray")
        ax.text(qs[-1] if qs else 0, ref["top1"], f" {ref['label']} top-1", va="bottom", ha="right", fontsize=8)
    for b in r["bagnets"]:
        ax.annotate(b["label"], (b["receptive_field"], b["top1"]), fontsize=7, xytext=(3, -10), textcoords="offset points")
    ax.set_xlabel("patch size q (pixels)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(sorted(set(qs)))
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"accuracy vs patch size ({plural(r['images'], 'image')})")
    return fig, ax


def write_patch_size(result: PatchSizeResult, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``patch_size.json`` and ``patch_size.png`` in ``out_dir``."""
    fig, _ = plot_patch_size(result)
    return write_result(out_dir, "patch_size", "patch-size", result.__dict__, fig, meta)
