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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
from ._stats import pearson

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "InteractionResult",
    "choose_patches",
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
        result.models.append({
            **m.describe(), **_fit(s, j),
            "indices": done, "sum_single": s.tolist(), "joint": j.tolist(),
        })
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
        ax.set_title(f"{m['label']}: slope {slope:.2f}, r {rv:.2f}", fontsize=9)
        ax.set_xlabel("sum of single changes")
        ax.set_ylabel("joint change")
    fig.suptitle(
        f"target logit change, {plural(r['n_patches'], 'patch')} of {r['patch_size']}x{r['patch_size']} px", fontsize=10
    )
    return fig, axes


def write_interactions(result: InteractionResult, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    fig, _ = plot_interactions(result)
    return write_result(out_dir, "interactions", "interactions", result.__dict__, fig, meta)
