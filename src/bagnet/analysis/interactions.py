"""Experiment 4: do image parts act on the decision independently?

Brendel & Bethge (ICLR 2019), Section 4: masking image parts one at a time and all
together shows how far a network's logit is a sum of independent local contributions.
For a BagNet it is by construction, as long as no patch of size q sees two masked parts;
for deep networks with large receptive fields parts interact.

For every image we pick ``n_patches`` non-overlapping square patches on a lattice
(``patch_size`` pixels with ``gap`` pixels between lattice neighbours), replace each
alone with the image's channel-wise mean, then all together, and record the change of
the target-class logit (masked minus original). Additivity means
``joint change == sum of single changes``.

.. note::
    The paper's exact patch count and placement are not reproduced; both are options.
    The same patches (seeded by the image's index) are used for every model, so the
    models are compared on identical perturbations.

Uncertainty: every fitted number has a 95% percentile-bootstrap interval over images
(``slope_ci``, ``intercept_ci``, ``r_ci``, ``mean_abs_deviation_ci``,
``relative_deviation_ci``: resample images, refit). Since all models see the same images and
patches, every pair of models is compared with a paired bootstrap (``comparisons``: the
difference of slope and of relative deviation, its interval and two-sided p-value).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._text import plural
from ._cells import channel_mean
from ._classifier import Classifier
from ._data import EvalData
from ._output import panel_grid, write_result
from ._predictions import LogitCache, predictions
from ._stats import Bootstrap, bootstrap_interval, paired_bootstrap, pearson

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "InteractionResult",
    "add_fits",
    "choose_patches",
    "fit_intervals",
    "interactions",
    "mask_patches",
    "plot_interactions",
    "write_interactions",
]

TARGETS = ("true", "predicted")


@dataclass
class InteractionResult:
    """Per model: one (sum of single changes, joint change) pair per image, and a fit."""

    patch_size: int
    n_patches: int
    gap: int
    target: str
    models: list[dict] = field(default_factory=list)
    images: int = 0
    comparisons: list[dict] = field(default_factory=list)  # a, b, metric, diff, diff_ci, p
    bootstrap: dict = field(default_factory=dict)


def choose_patches(height: int, width: int, n: int, size: int, gap: int = 0, *, seed: Sequence[int] | int = 0) -> np.ndarray:
    """Top-left corners ``[n, 2]`` of ``n`` distinct lattice patches inside the image.

    Lattice points are ``size + gap`` apart, so any two chosen patches are at least
    ``gap`` pixels apart (0: they may touch but never overlap).
    """
    if size < 1 or n < 1 or gap < 0:
        raise ValueError(f"need patch size >= 1, at least one patch and gap >= 0 (got {size}, {n}, {gap})")
    step = size + gap
    rows = (height - size) // step + 1 if height >= size else 0
    cols = (width - size) // step + 1 if width >= size else 0
    if rows * cols < n:
        raise ValueError(
            f"only {plural(rows * cols, 'patch')} of {size}x{size} with gap {gap} fit into a {height}x{width} image, "
            f"fewer than the {n} asked for; use fewer or smaller patches, a smaller gap or larger images"
        )
    rng = np.random.default_rng(seed)
    cells = rng.choice(rows * cols, size=n, replace=False)
    return np.stack([cells // cols * step, cells % cols * step], axis=1)


def mask_patches(pixels: torch.Tensor, corners: np.ndarray, size: int) -> torch.Tensor:
    """Variants of one image ``[C, H, W]``: each patch masked alone, then all together.

    Returns ``[n + 1, C, H, W]``; masked pixels get the image's channel-wise mean.
    """
    n = len(corners)
    fill = channel_mean(pixels[None])[0]
    masks = torch.zeros(n + 1, 1, *pixels.shape[-2:], dtype=torch.bool, device=pixels.device)
    for i, (top, left) in enumerate(corners):
        masks[i, :, top : top + size, left : left + size] = True
    masks[n] = masks[:n].any(0)
    return torch.where(masks, fill, pixels)


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares line ``y = slope * x + intercept``, Pearson r and the mean deviation."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok].astype(np.float64), y[ok].astype(np.float64)
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope = intercept = float("nan")
    scale = float(np.abs(x).mean()) if x.size else float("nan")
    dev = float(np.abs(y - x).mean()) if x.size else float("nan")
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r": pearson(x, y) if x.size >= 2 else float("nan"),
        "mean_abs_deviation": dev,
        "relative_deviation": dev / scale if scale > 0 else float("nan"),
    }


_FIT_KEYS = ("slope", "intercept", "r", "mean_abs_deviation", "relative_deviation")


def _fit_statistics(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The numbers of :func:`_fit` as functions of resampling weights ``[R, n]`` over images
    (weighted least squares with integer weights is the fit of the resample)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = (np.isfinite(x) & np.isfinite(y)).astype(np.float64)
    x, y = np.where(ok > 0, x, 0.0), np.where(ok > 0, y, 0.0)
    # Centred by the overall means, which keeps the moments accurate.
    ox, oy = (x * ok).sum() / max(ok.sum(), 1.0), (y * ok).sum() / max(ok.sum(), 1.0)
    cx, cy = (x - ox) * ok, (y - oy) * ok
    cols = np.stack([ok, cx, cy, cx * cx, cx * cy, cy * cy, np.abs(y - x) * ok, np.abs(x) * ok], axis=1)

    def moments(w: np.ndarray) -> dict[str, np.ndarray]:
        s = w @ cols
        n = s[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mx, my = s[:, 1] / n, s[:, 2] / n
            return {"n": n, "mx": mx, "my": my, "vxx": s[:, 3] / n - mx * mx, "vxy": s[:, 4] / n - mx * my,
                    "vyy": s[:, 5] / n - my * my, "dev": s[:, 6] / n, "scale": s[:, 7] / n}

    def slope(w):
        m = moments(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((m["n"] >= 2) & (m["vxx"] > 0), m["vxy"] / m["vxx"], np.nan)

    def intercept(w):
        m = moments(w)
        return (m["my"] + oy) - slope(w) * (m["mx"] + ox)

    def r(w):
        m = moments(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            den = np.sqrt(m["vxx"] * m["vyy"])
            return np.where((m["n"] >= 2) & (den > 0), m["vxy"] / den, np.nan)

    def mad(w):
        return moments(w)["dev"]

    def rel(w):
        m = moments(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(m["scale"] > 0, m["dev"] / m["scale"], np.nan)

    return {"slope": slope, "intercept": intercept, "r": r, "mean_abs_deviation": mad, "relative_deviation": rel}


def fit_intervals(x: np.ndarray, y: np.ndarray, boot: Bootstrap, weights: np.ndarray | None = None) -> dict[str, list]:
    """``KEY_ci`` (percentile bootstrap over images) of every number of the fit of ``y`` on ``x``."""
    stats = _fit_statistics(x, y)
    w = boot.weights(len(x)) if weights is None else weights
    return {f"{k}_ci": bootstrap_interval(stats[k], len(x), boot, weights=w).ci for k in _FIT_KEYS}


def interactions(
    models: Sequence[Classifier],
    data: EvalData,
    *,
    n_patches: int = 10,
    patch_size: int | str = 8,
    gap: int = 0,
    target: str = "true",
    max_images: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    cache: LogitCache | None = None,
    show_progress: bool = True,
    bootstrap: Bootstrap | None = None,
) -> InteractionResult:
    """Single and joint masking effects on the target logit of every model.

    Args:
        models: BagNets and reference networks.
        data: the images.
        n_patches: patches masked per image.
        patch_size: side in pixels, or ``"q"`` for the largest BagNet receptive field.
        gap: minimum distance in pixels between patches (>= q - 1 makes BagNets exactly
            additive).
        target: ``"true"`` class or each model's own ``"predicted"`` class.
        max_images: the first images of ``data``'s order.
        batch_size: images per forward pass (masked variants are batched).
        seed: patch placement (combined with each image's index).
        cache: outputs of the unmasked images are taken from (and added to) here.
        bootstrap: resamples and seed of the intervals and comparisons.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not models:
        raise ValueError("interactions needs at least one model")
    if patch_size == "q":
        qs = [m.receptive_field for m in models if m.is_bagnet]
        if not qs:
            raise ValueError("patch size 'q' needs a BagNet among the models")
        patch_size = max(qs)
    patch_size = int(patch_size)
    cache = cache or LogitCache()
    indices = data.indices(max_images)
    base = {m.label: predictions(m, data, max_images, batch_size=batch_size, cache=cache) for m in models}
    rows = {m.label: {int(i): k for k, i in enumerate(base[m.label].indices)} for m in models}
    singles: dict[str, list[float]] = {m.label: [] for m in models}
    joints: dict[str, list[float]] = {m.label: [] for m in models}
    done: list[int] = []
    per_batch = max(1, batch_size // (n_patches + 1))
    desc = "interactions" if show_progress else None
    for x, _y, idx in data.iter_batches(indices, per_batch, desc=desc):
        h, w = x.shape[-2:]
        variants = torch.cat([
            mask_patches(img, choose_patches(h, w, n_patches, patch_size, gap, seed=(seed, int(i))), patch_size)
            for img, i in zip(x, idx)
        ])
        for m in models:
            p = base[m.label]
            r = np.asarray([rows[m.label][int(i)] for i in idx])
            orig = p.logits[r]
            cls = p.targets[r] if target == "true" else orig.argmax(1)
            masked = torch.cat([m.restrict(m.full_logits(chunk)).cpu() for chunk in variants.split(batch_size)])
            masked = masked.view(len(idx), n_patches + 1, -1).numpy()
            t = masked[np.arange(len(idx)), :, cls] - orig[np.arange(len(idx)), cls][:, None]
            singles[m.label] += t[:, :n_patches].sum(1).tolist()
            joints[m.label] += t[:, n_patches].tolist()
        done += idx.tolist()
    result = InteractionResult(patch_size, n_patches, gap, target, images=len(done))
    for m in models:
        s, j = np.asarray(singles[m.label]), np.asarray(joints[m.label])
        result.models.append({**m.describe(), "indices": done, "sum_single": s.tolist(), "joint": j.tolist()})
    return add_fits(result, bootstrap or Bootstrap())


def add_fits(result: InteractionResult, boot: Bootstrap) -> InteractionResult:
    """Fit, intervals and paired comparisons from the per-image changes of every model
    (``sum_single``, ``joint``): also how a result read back from JSON gets new intervals."""
    n = result.images
    w = boot.weights(n)
    stats = {}
    for m in result.models:
        x, y = np.asarray(m["sum_single"], dtype=np.float64), np.asarray(m["joint"], dtype=np.float64)
        m.update(_fit(x, y))
        m.update(fit_intervals(x, y, boot, w))
        stats[m["label"]] = _fit_statistics(x, y)
    result.comparisons = []
    for a, b in itertools.combinations(result.models, 2):
        for key in ("slope", "relative_deviation"):
            c = paired_bootstrap(stats[a["label"]][key], stats[b["label"]][key], n, boot, weights=w)
            result.comparisons.append({"a": a["label"], "b": b["label"], "metric": key, "diff": c.diff,
                                       "diff_ci": c.ci, "p": c.p})
    result.bootstrap = boot.describe()
    return result


def plot_interactions(result: InteractionResult | dict) -> tuple[Figure, Any]:
    """Scatter of joint vs summed single changes, one panel per model. Returns ``(fig, axes)``."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, axes = panel_grid(len(r["models"]), (3.3, 3.2))
    for ax, m in zip(axes, r["models"]):
        x, y = np.asarray(m["sum_single"], float), np.asarray(m["joint"], float)
        ax.scatter(x, y, s=8, alpha=0.6)
        lo = float(np.nanmin(np.concatenate([x, y]))) if x.size else -1.0
        hi = float(np.nanmax(np.concatenate([x, y]))) if x.size else 1.0
        ax.plot([lo, hi], [lo, hi], ":", color="gray", lw=1)
        slope = m["slope"] if m["slope"] is not None else float("nan")
        rv = m["r"] if m["r"] is not None else float("nan")
        ci = m.get("slope_ci") or [None, None]
        band = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
        ax.set_title(f"{m['label']}: slope {slope:.2f}{band}, r {rv:.2f}", fontsize=9)
        ax.set_xlabel("sum of single changes")
        ax.set_ylabel("joint change")
    fig.suptitle(
        f"target logit change, {plural(r['n_patches'], 'patch')} of {r['patch_size']}x{r['patch_size']} px", fontsize=10
    )
    return fig, axes


def write_interactions(result: InteractionResult, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``interactions.json`` and ``interactions.png`` in ``out_dir``."""
    fig, _ = plot_interactions(result)
    return write_result(out_dir, "interactions", "interactions", result.__dict__, fig, meta)
