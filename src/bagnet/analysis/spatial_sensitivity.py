"""Experiment 6: are BagNet heatmaps good guides to what other networks look at?

Brendel & Bethge (ICLR 2019), Section 4 ("spatial sensitivity"): rank the 8x8 cells of
an image by (a) a BagNet's class-evidence heatmap, (b) attribution methods applied to the
tested network itself, (c) random order; mask the top k cells with the image's
channel-wise mean and watch the true-class probability of the tested network fall. The
paper found BagNet heatmaps at least as predictive for VGG-16 and other DNNs as the
white-box attributions computed on those networks.

Per tested network and ranking, the result holds the mean true-class probability and
its drop (unmasked minus masked) for every k, with standard errors, and the mean drop of
the true-class logit. Probabilities are softmax over all of the network's outputs.

.. note::
    BagNet heatmaps are the paper's: evidence of the true class for the q x q patch
    centred on every pixel (zero padding of the normalized image), summed over the
    pixels of each cell (``heatmap_stride=1``). ``heatmap_stride="native"`` uses the
    model's own, unpadded patch logits instead (each patch counted in the cell of its
    centre), which is cheaper and is exactly what a BagNet adds up.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._captum import DEEPLIFT_DELTA_WARN, METHODS, UnsupportedModelError, attribution_cells, warn_deeplift
from ._cells import cell_sums, channel_mean
from ._classifier import Classifier
from ._data import EvalData
from ._output import panel_grid, write_result
from ._predictions import LogitCache, predictions
from ._stats import nan_if_none

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "SpatialSensitivity",
    "bagnet_cells",
    "mask_top_cells",
    "masking_scores",
    "plot_spatial_sensitivity",
    "spatial_sensitivity",
    "write_spatial_sensitivity",
]

RANDOM = "random"


@dataclass
class SpatialSensitivity:
    ks: list[int]
    cell: int
    heatmap_stride: int | str
    rankings: list[str]
    models: list[dict] = field(default_factory=list)  # per tested network: curves per ranking
    images: int = 0


def bagnet_cells(
    clf: Classifier, pixels: torch.Tensor, targets: torch.Tensor, *, cell: int = 8, stride: int | str = 1,
    dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """True-class evidence of a BagNet summed per ``cell x cell`` cell, ``[B, H/cell, W/cell]``.

    The map comes from :class:`bagnet.explain.PatchEvidence`, through captum's
    ``attribute(inputs, target=...)`` like the attribution methods of the tested networks,
    and is reduced to cells the same way (channel sum, then cell sums). Each patch's
    evidence sits on its centre pixel, so it counts in the cell that holds its centre.
    """
    from ..explain import PatchEvidence

    if not clf.is_bagnet:
        raise ValueError(f"{clf.label} is not a BagNet, so it has no evidence heatmap")
    attribution = PatchEvidence(clf.model, stride=stride, dtype=dtype).attribute(clf.normalize(pixels), target=clf.column(targets))
    return cell_sums(attribution.float(), cell)


def mask_top_cells(pixels: torch.Tensor, scores: torch.Tensor, ks: Sequence[int], cell: int) -> torch.Tensor:
    """Mask the ``k`` highest-scoring cells of one image, for every k.

    Args:
        pixels: one image ``[C, H, W]``.
        scores: ``[H/cell, W/cell]`` (ties keep row-major order).
        ks: numbers of cells to mask.
        cell: cell side in pixels.

    Returns:
        ``[len(ks), C, H, W]``; masked cells hold the image's channel-wise mean.
    """
    gh, gw = scores.shape
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    k = torch.as_tensor(list(ks), device=pixels.device)
    masks = (rank.to(pixels.device)[None, :] < k[:, None]).view(-1, 1, gh, gw)
    masks = masks.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)
    h, w = pixels.shape[-2:]
    masks = torch.nn.functional.pad(masks, (0, w - gw * cell, 0, h - gh * cell), value=False)
    return torch.where(masks, channel_mean(pixels[None])[0], pixels)


def masking_scores(
    clf: Classifier,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    rankings: dict[str, torch.Tensor],
    ks: Sequence[int],
    *,
    cell: int = 8,
    batch_size: int = 32,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """True-class (logit, probability) ``[B, len(ks)]`` of ``clf`` after masking each
    ranking's top k cells; all rankings and k of an image go through the model together."""
    names = list(rankings)
    out_l = {n: np.empty((len(pixels), len(ks)), np.float32) for n in names}
    out_p = {n: np.empty((len(pixels), len(ks)), np.float32) for n in names}
    for b in range(len(pixels)):
        variants = torch.cat([mask_top_cells(pixels[b], rankings[n][b], ks, cell) for n in names])
        t = targets[b : b + 1].expand(len(variants))
        logit, prob = [], []
        for chunk, tc in zip(variants.split(batch_size), t.split(batch_size)):
            lo, pr = clf.target_scores(chunk, tc)
            logit.append(lo.cpu())
            prob.append(pr.cpu())
        logit = torch.cat(logit).view(len(names), len(ks)).numpy()
        prob = torch.cat(prob).view(len(names), len(ks)).numpy()
        for i, n in enumerate(names):
            out_l[n][b], out_p[n][b] = logit[i], prob[i]
    return {n: (out_l[n], out_p[n]) for n in names}


def _random_cells(shape: tuple[int, int], seed: int, index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.rand(shape, generator=g)


def spatial_sensitivity(
    bagnets: Sequence[Classifier],
    tested: Sequence[Classifier],
    data: EvalData,
    *,
    methods: Sequence[str] = METHODS,
    ks: Sequence[int] = tuple(range(0, 31, 2)),
    cell: int = 8,
    heatmap_stride: int | str = 1,
    heatmap_dtype: torch.dtype | str | None = None,
    max_images: int | None = None,
    batch_size: int = 32,
    ig_steps: int = 25,
    lrp_epsilon: float = 1e-2,
    seed: int = 0,
    cache: LogitCache | None = None,
    show_progress: bool = True,
) -> SpatialSensitivity:
    """Drop of each tested network's true-class probability when masking top-ranked cells.

    Args:
        bagnets: BagNets whose heatmaps rank the cells (shared by all tested networks).
        tested: networks whose probability is measured; attribution ``methods`` are
            computed on each of them.
        data: the images.
        methods: attribution methods from :data:`METHODS` (any subset; may be empty).
        ks: numbers of masked cells (0 is the unmasked image, taken from the cache).
        cell: cell side in pixels (the paper: 8).
        heatmap_stride: 1 (the paper's heatmaps) or ``"native"`` (see the module note).
        heatmap_dtype: arithmetic of the BagNet heatmaps (default float32; bfloat16 is
            faster on hardware with bfloat16 units, and approximate).
        max_images: the first images of ``data``'s order.
        batch_size: model inputs per forward pass.
        ig_steps: integration steps of integrated gradients.
        lrp_epsilon: epsilon of the LRP rule.
        seed: random rankings (combined with each image's index).
        cache: unmasked outputs are taken from (and added to) here.

    A method that cannot be applied to a network (e.g. LRP on layers captum has no rule
    for) is left out for that network; the reason is in ``models[i]["unsupported"]``.
    ``models[i]["diagnostics"]`` holds DeepLift's largest relative miss of its
    summation-to-delta property.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not tested:
        raise ValueError("spatial-sensitivity needs at least one network to test")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 0:
        raise ValueError(f"ks must be non-negative numbers of cells, got {ks}")
    n_cells = (data.img_size // cell) ** 2
    if ks[-1] > n_cells:
        raise ValueError(f"cannot mask {ks[-1]} cells: a {data.img_size}px image has {n_cells} cells of {cell}px")
    for b in bagnets:
        if not b.is_bagnet:
            raise ValueError(f"{b.label} is not a BagNet, so it has no heatmap to rank cells with")
    cache = cache or LogitCache()
    masked_ks = [k for k in ks if k > 0]
    heat_names = {b.label: f"heatmap {b.label}" for b in bagnets}
    base = {m.label: predictions(m, data, max_images, batch_size=batch_size, cache=cache) for m in tested}
    rows = {m.label: {int(i): r for r, i in enumerate(base[m.label].indices)} for m in tested}
    unsupported: dict[str, dict[str, str]] = {m.label: {} for m in tested}
    diagnostics: dict[str, dict[str, float]] = {m.label: {} for m in tested}
    scores: dict[str, dict[str, list[np.ndarray]]] = {m.label: {} for m in tested}
    n_done = 0
    per_batch = max(1, min(8, batch_size // 4))
    for x, y, idx in data.iter_batches(data.indices(max_images), per_batch, desc="spatial sensitivity" if show_progress else None):
        common: dict[str, torch.Tensor] = {heat_names[b.label]: bagnet_cells(b, x, y, cell=cell, stride=heatmap_stride, dtype=heatmap_dtype).cpu() for b in bagnets}
        common[RANDOM] = torch.stack([_random_cells((x.shape[-2] // cell, x.shape[-1] // cell), seed, int(i)) for i in idx])
        for m in tested:
            rankings = dict(common)
            for method in methods:
                if method in unsupported[m.label]:
                    continue
                try:
                    rankings[method] = attribution_cells(
                        m, x, y, method, cell=cell, ig_steps=ig_steps, lrp_epsilon=lrp_epsilon,
                        batch_size=batch_size, diagnostics=diagnostics[m.label],
                    ).cpu()
                except UnsupportedModelError as e:
                    logger.warning("%s: %s is left out: %s", m.label, method, e)
                    unsupported[m.label][method] = str(e)
            got = masking_scores(m, x, y, rankings, masked_ks, cell=cell, batch_size=batch_size) if masked_ks else {}
            p = base[m.label]
            r = np.asarray([rows[m.label][int(i)] for i in idx])
            t = p.targets[r]
            l0 = p.logits[r, t]
            p0 = np.exp(l0 - p.logsumexp[r])
            for name in rankings:
                lo, pr = got.get(name, (np.empty((len(idx), 0)), np.empty((len(idx), 0))))
                full_l = np.empty((len(idx), len(ks)), np.float32)
                full_p = np.empty((len(idx), len(ks)), np.float32)
                j = 0
                for c, k in enumerate(ks):
                    if k == 0:
                        full_l[:, c], full_p[:, c] = l0, p0
                    else:
                        full_l[:, c], full_p[:, c] = lo[:, j], pr[:, j]
                        j += 1
                scores[m.label].setdefault(name, []).append(np.stack([full_l, full_p]))
        n_done += len(idx)
    ranking_names = [*heat_names.values(), *list(methods), RANDOM]
    result = SpatialSensitivity(ks=ks, cell=cell, heatmap_stride=heatmap_stride, rankings=ranking_names, images=n_done)
    for m in tested:
        curves = {}
        for name, chunks in scores[m.label].items():
            arr = np.concatenate(chunks, axis=1)  # [2, N, len(ks)]: logit, probability
            logit, prob = arr[0].astype(np.float64), arr[1].astype(np.float64)
            drop = prob[:, :1] - prob
            n = max(len(prob), 1)
            curves[name] = {
                "prob": prob.mean(0).tolist(),
                "prob_drop": drop.mean(0).tolist(),
                "prob_drop_sem": (drop.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(ks))).tolist(),
                "logit_drop": (logit[:, :1] - logit).mean(0).tolist(),
            }
        rel = diagnostics[m.label].get("deeplift_relative_delta", 0.0)
        if rel > DEEPLIFT_DELTA_WARN:
            warn_deeplift(m.label, rel)
        result.models.append({**m.describe(), "curves": curves, "unsupported": unsupported[m.label],
                              "diagnostics": diagnostics[m.label]})
    return result


def plot_spatial_sensitivity(result: SpatialSensitivity | dict) -> tuple[Figure, Any]:
    """Mean true-class probability drop against k, one panel per tested network."""
    r = result if isinstance(result, dict) else result.__dict__
    fig, axes = panel_grid(len(r["models"]), (3.8, 3.3))
    for ax, m in zip(axes, r["models"]):
        for name, c in m["curves"].items():
            mean = np.array([nan_if_none(v) for v in c["prob_drop"]])
            sem = np.array([nan_if_none(v) for v in c["prob_drop_sem"]])
            style = "--" if name.startswith("heatmap") else (":" if name == RANDOM else "-")
            lw = 2.2 if name.startswith("heatmap") else 1.2
            ax.plot(r["ks"], mean, style, lw=lw, label=name)
            ax.fill_between(r["ks"], mean - sem, mean + sem, alpha=0.12)
        ax.set_title(f"tested: {m['label']}", fontsize=9)
        ax.set_xlabel(f"masked {r['cell']}x{r['cell']} cells (k)")
        ax.set_ylabel("drop of true-class probability")
        ax.legend(fontsize=7, loc="upper left")
    return fig, axes


def write_spatial_sensitivity(result: SpatialSensitivity, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    fig, _ = plot_spatial_sensitivity(result)
    return write_result(out_dir, "spatial_sensitivity", "spatial-sensitivity", result.__dict__, fig, meta)
