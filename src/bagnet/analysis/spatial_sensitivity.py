"""Experiment 6: are BagNet heatmaps good guides to what other networks look at?

Brendel & Bethge (ICLR 2019), Section 4 ("spatial sensitivity"): rank the 8x8 cells of
an image, mask the top k cells (k up to 30) with the image's channel-wise mean and watch
the true-class probability of the tested network fall. The paper found BagNet heatmaps at
least as predictive for VGG-16 and other DNNs as white-box attributions computed on those
networks themselves. The cells are ranked by

(a) each BagNet's class-evidence heatmap of the true class (``heatmap LABEL``), predicting
    the sensitivity of every *other* tested network;
(b) attribution methods of the tested network itself (``saliency``, ``integrated_gradients``,
    ``deeplift``, ``lrp``, ``occlusion``, ``gradcam``: captum, see :mod:`._captum`);
(c) the other direction: for a tested BagNet, the same methods computed on each reference
    network (``METHOD LABEL``, e.g. ``gradcam R18``): do the references' attributions
    predict what the BagNet is sensitive to?
(d) random order (``random``), the floor.

Per tested network and ranking, the result holds the mean true-class probability and its
drop (unmasked minus masked) for every k with 95% percentile-bootstrap intervals over
images (``prob_drop_ci``) and standard errors, the mean drop of the true-class logit
(``logit_drop``, ``logit_drop_ci``) and the drop averaged over the masked k
(``mean_drop``, ``mean_drop_ci``). ``comparisons`` hold, for every tested network, each
BagNet heatmap against every other ranking on the same images: the paired-bootstrap
interval of the difference of drops at every k (heatmap minus other; positive: the
heatmap finds more sensitive cells) and its two-sided p-value. The per-image
probabilities and logits are kept (``spatial_sensitivity_images.npz``), so intervals can
be recomputed with other bootstrap settings without masking again. Probabilities are
softmax over all of the network's outputs.

.. note::
    BagNet heatmaps are the paper's: evidence of the true class for the q x q patch
    centred on every pixel (zero padding of the normalized image), summed over the
    pixels of each cell (``heatmap_stride=1``). ``heatmap_stride="native"`` uses the
    model's own, unpadded patch logits instead (each patch counted in the cell of its
    centre), which is cheaper and is exactly what a BagNet adds up.

.. note::
    Attributions are of the true-class logit with the channel-mean image as baseline
    (integrated gradients, DeepLift, occlusion), the image masking puts in. Occlusion
    uses ``occlusion_window`` px squares every ``occlusion_stride`` px (default: the
    cell, so it masks one cell at a time) and Grad-CAM the unclipped map of the last
    convolutional block; see :mod:`._captum`.
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

from .._io import atomic_path
from ._captum import DEEPLIFT_DELTA_WARN, METHODS, attribution_cells, warn_deeplift
from ._captum_ready import UnsupportedModelError
from ._cells import cell_sums, channel_mean
from ._classifier import Classifier
from ._data import EvalData
from ._output import panel_grid, write_result
from ._predictions import LogitCache, predictions
from ._stats import Bootstrap, bootstrap_interval, nan_if_none, paired_bootstrap, two_sided_p, weighted_mean

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "SpatialSensitivity",
    "add_curves",
    "bagnet_cells",
    "mask_top_cells",
    "masking_scores",
    "plot_spatial_sensitivity",
    "read_per_image",
    "spatial_sensitivity",
    "write_spatial_sensitivity",
]

RANDOM = "random"
HEATMAP = "heatmap"
PER_IMAGE_FILE = "spatial_sensitivity_images.npz"


@dataclass
class SpatialSensitivity:
    """How much masking the top-ranked cells hurts each tested network (:func:`spatial_sensitivity`).

    Attributes:
        ks: the numbers of masked cells.
        cell: cell side in pixels.
        heatmap_stride: stride of the BagNet heatmaps (1 or ``"native"``).
        rankings: the cell rankings compared (BagNet heatmaps, captum methods on the tested
            network, captum methods on the references for tested BagNets, random).
        models: per tested network: its ``curves`` per ranking (with intervals), the
            paired ``comparisons`` of the heatmaps against the other rankings, methods
            left out (``unsupported``) and DeepLift's ``diagnostics``.
        images: images used.
        options: the attribution settings (integration steps, LRP epsilon, occlusion
            window and stride, Grad-CAM layer).
        bootstrap: how the intervals were computed.
        indices: the images' sample indices, in the order of ``per_image``.
        per_image: per tested network, ranking -> ``[2, N, len(ks)]`` true-class (logit,
            probability) per image and k (not in the JSON; see :func:`write_spatial_sensitivity`).
    """

    ks: list[int]
    cell: int
    heatmap_stride: int | str
    rankings: list[str]
    models: list[dict] = field(default_factory=list)  # per tested network: curves per ranking
    images: int = 0
    options: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)
    per_image: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def payload(self) -> dict[str, Any]:
        """What goes into the JSON file: everything but the per-image arrays."""
        return {k: v for k, v in self.__dict__.items() if k not in ("per_image", "indices")}


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


class _Ranker:
    """Cell scores ``[B, H/cell, W/cell]`` of one ranking (a BagNet heatmap, a captum method
    on a network, or random) for a batch; remembers the methods a network cannot take."""

    def __init__(self, networks: dict[str, Classifier], cell: int, heatmap_stride: int | str, heatmap_dtype,
                 seed: int, options: dict[str, Any]):
        self.networks, self.cell, self.seed, self.options = networks, cell, seed, options
        self.heatmap_stride, self.heatmap_dtype = heatmap_stride, heatmap_dtype
        self.unsupported: dict[str, dict[str, str]] = {label: {} for label in networks}
        self.diagnostics: dict[str, dict[str, float]] = {label: {} for label in networks}

    def cells(self, source: str, method: str, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        if method == HEATMAP:
            return bagnet_cells(self.networks[source], x, y, cell=self.cell, stride=self.heatmap_stride,
                                dtype=self.heatmap_dtype).cpu()
        if method == RANDOM:
            grid = (x.shape[-2] // self.cell, x.shape[-1] // self.cell)
            return torch.stack([_random_cells(grid, self.seed, int(i)) for i in idx])
        if method in self.unsupported[source]:
            return None
        try:
            return attribution_cells(self.networks[source], x, y, method, cell=self.cell,
                                     diagnostics=self.diagnostics[source], **self.options).cpu()
        except UnsupportedModelError as e:
            logger.warning("%s: %s is left out: %s", source, method, e)
            self.unsupported[source][method] = str(e)
            return None


def _ranking_names(bagnets: Sequence[Classifier], tested: Classifier, methods: Sequence[str],
                   references: Sequence[Classifier]) -> list[tuple[str, str, str]]:
    """(ranking name, source network label, method) of the rankings applied to ``tested``."""
    out = [(f"{HEATMAP} {b.label}", b.label, HEATMAP) for b in bagnets]
    out += [(m, tested.label, m) for m in methods]
    if tested.is_bagnet:
        out += [(f"{m} {r.label}", r.label, m) for r in references if r.label != tested.label for m in methods]
    return [*out, (RANDOM, "", RANDOM)]


def spatial_sensitivity(
    bagnets: Sequence[Classifier],
    tested: Sequence[Classifier],
    data: EvalData,
    *,
    methods: Sequence[str] = METHODS,
    references: Sequence[Classifier] = (),
    ks: Sequence[int] = tuple(range(0, 31, 2)),
    cell: int = 8,
    heatmap_stride: int | str = 1,
    heatmap_dtype: torch.dtype | str | None = None,
    max_images: int | None = None,
    batch_size: int = 32,
    ig_steps: int = 25,
    lrp_epsilon: float = 1e-2,
    occlusion_window: int | None = None,
    occlusion_stride: int | None = None,
    gradcam_layer: str | None = None,
    seed: int = 0,
    cache: LogitCache | None = None,
    show_progress: bool = True,
    bootstrap: Bootstrap | None = None,
) -> SpatialSensitivity:
    """Drop of each tested network's true-class probability when masking top-ranked cells.

    Args:
        bagnets: BagNets whose heatmaps rank the cells (shared by all tested networks).
        tested: networks whose probability is measured; attribution ``methods`` are
            computed on each of them.
        data: the images.
        methods: attribution methods from :data:`METHODS` (any subset; may be empty).
        references: networks whose attributions (every one of ``methods``) also rank the
            cells for each tested *BagNet* (the other direction of the comparison);
            computed once per image and shared with their own test.
        ks: numbers of masked cells (0 is the unmasked image, taken from the cache).
        cell: cell side in pixels (the paper: 8).
        heatmap_stride: 1 (the paper's heatmaps) or ``"native"`` (see the module note).
        heatmap_dtype: arithmetic of the BagNet heatmaps (default float32; bfloat16 is
            faster on hardware with bfloat16 units, and approximate).
        max_images: the first images of ``data``'s order.
        batch_size: model inputs per forward pass.
        ig_steps: integration steps of integrated gradients.
        lrp_epsilon: epsilon of the LRP rule.
        occlusion_window: occluded square side in pixels (default ``cell``).
        occlusion_stride: step between occluded squares (default: the window).
        gradcam_layer: module Grad-CAM reads in every network (default: each network's
            last convolutional block, :func:`~bagnet.analysis._captum.gradcam_layer`).
        seed: random rankings (combined with each image's index).
        cache: unmasked outputs are taken from (and added to) here.
        bootstrap: resamples and seed of the intervals and comparisons.

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
    window = int(occlusion_window or cell)
    stride = int(occlusion_stride or window)
    if "occlusion" in methods and not (1 <= stride <= window <= data.img_size):
        raise ValueError(f"occlusion needs 1 <= stride <= window <= the image size ({data.img_size} px); "
                         f"got window {window} px, stride {stride} px")
    for b in bagnets:
        if not b.is_bagnet:
            raise ValueError(f"{b.label} is not a BagNet, so it has no heatmap to rank cells with")
    cache = cache or LogitCache()
    masked_ks = [k for k in ks if k > 0]
    plans = {m.label: _ranking_names(bagnets, m, methods, references) for m in tested}
    networks = {c.label: c for c in [*bagnets, *tested, *references]}
    base = {m.label: predictions(m, data, max_images, batch_size=batch_size, cache=cache) for m in tested}
    rows = {m.label: {int(i): r for r, i in enumerate(base[m.label].indices)} for m in tested}
    ranker = _Ranker(networks, cell, heatmap_stride, heatmap_dtype, seed, {
        "ig_steps": ig_steps, "lrp_epsilon": lrp_epsilon, "batch_size": batch_size, "occlusion_window": window,
        "occlusion_stride": stride, "gradcam_layer": gradcam_layer})
    unsupported, diagnostics = ranker.unsupported, ranker.diagnostics
    scores: dict[str, dict[str, list[np.ndarray]]] = {m.label: {} for m in tested}
    done: list[int] = []
    per_batch = max(1, min(8, batch_size // 4))
    for x, y, idx in data.iter_batches(data.indices(max_images), per_batch, desc="spatial sensitivity" if show_progress else None):
        memo: dict[tuple[str, str], torch.Tensor | None] = {}
        for m in tested:
            rankings = {}
            for name, source, method in plans[m.label]:
                if (source, method) not in memo:
                    memo[(source, method)] = ranker.cells(source, method, x, y, idx)
                if memo[(source, method)] is not None:
                    rankings[name] = memo[(source, method)]
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
        done += [int(i) for i in idx]
    names = [n for n in dict.fromkeys(name for m in tested for name, _, _ in plans[m.label]) if n != RANDOM] + [RANDOM]
    result = SpatialSensitivity(
        ks=ks, cell=cell, heatmap_stride=heatmap_stride, rankings=names, images=len(done), indices=done,
        options={"methods": list(methods), "ig_steps": ig_steps, "lrp_epsilon": lrp_epsilon,
                 "occlusion_window": window, "occlusion_stride": stride, "gradcam_layer": gradcam_layer,
                 "references": [r.label for r in references]},
    )
    for m in tested:
        result.per_image[m.label] = {name: np.concatenate(chunks, axis=1) for name, chunks in scores[m.label].items()}
        sources = {m.label, *(r.label for r in references if m.is_bagnet)}
        left_out = {(name if source == m.label else f"{name} {source}"): why
                    for source in sources for name, why in unsupported[source].items()}
        rel = diagnostics[m.label].get("deeplift_relative_delta", 0.0)
        if rel > DEEPLIFT_DELTA_WARN:
            warn_deeplift(m.label, rel)
        result.models.append({**m.describe(), "unsupported": left_out, "diagnostics": diagnostics[m.label]})
    return add_curves(result, bootstrap or Bootstrap())


def add_curves(result: SpatialSensitivity, boot: Bootstrap) -> SpatialSensitivity:
    """Curves, intervals and paired comparisons of every tested network from the per-image
    scores (``result.per_image``); also how intervals are recomputed from a saved result."""
    ks = result.ks
    masked = np.asarray([k > 0 for k in ks])
    n = result.images
    w = boot.weights(n)
    for m in result.models:
        arrays = result.per_image[m["label"]]
        drops: dict[str, np.ndarray] = {}
        curves = {}
        for name, arr in arrays.items():
            logit, prob = arr[0].astype(np.float64), arr[1].astype(np.float64)
            drop = drops[name] = prob[:, :1] - prob
            ldrop = logit[:, :1] - logit
            mean_drop = drop[:, masked].mean(1) if masked.any() else np.zeros(len(drop))
            curves[name] = {
                "prob": prob.mean(0).tolist(),
                "prob_drop": drop.mean(0).tolist(),
                "prob_drop_ci": bootstrap_interval(lambda w_, d=drop: weighted_mean(w_, d), n, boot, weights=w).ci,
                "prob_drop_sem": (drop.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(ks))).tolist(),
                "logit_drop": ldrop.mean(0).tolist(),
                "logit_drop_ci": bootstrap_interval(lambda w_, d=ldrop: weighted_mean(w_, d), n, boot, weights=w).ci,
                "mean_drop": float(mean_drop.mean()) if n else float("nan"),
                "mean_drop_ci": bootstrap_interval(lambda w_, d=mean_drop: weighted_mean(w_, d), n, boot,
                                                   weights=w).ci,
            }
        comparisons = []
        for a in (name for name in arrays if name.startswith(f"{HEATMAP} ")):
            for b in arrays:
                if b.startswith(f"{HEATMAP} "):
                    continue
                diff = drops[a] - drops[b]  # per image: how much more the heatmap's cells hurt
                per_k = bootstrap_interval(lambda w_, d=diff: weighted_mean(w_, d), n, boot, weights=w)
                over_k = diff[:, masked].mean(1) if masked.any() else np.zeros(n)
                mean = paired_bootstrap(lambda w_, d=over_k: weighted_mean(w_, d), lambda w_: np.zeros(len(w_)), n,
                                        boot, weights=w)
                comparisons.append({
                    "a": a, "b": b, "diff": np.asarray(per_k.estimate).tolist(), "diff_ci": per_k.ci,
                    "p": _paired_p(diff, w), "mean_diff": mean.diff, "mean_diff_ci": mean.ci, "mean_p": mean.p,
                })
        m["curves"] = curves
        m["comparisons"] = comparisons
    result.bootstrap = boot.describe()
    return result


def _paired_p(diff: np.ndarray, w: np.ndarray) -> list[float]:
    """Two-sided paired-bootstrap p-value per column of per-image differences ``[N, K]``."""
    p = np.atleast_1d(two_sided_p(weighted_mean(w, diff)))
    return [float(v) for v in p]


def plot_spatial_sensitivity(result: SpatialSensitivity | dict) -> tuple[Figure, Any]:
    """Mean true-class probability drop against k, one panel per tested network, with 95%
    intervals (for the heatmaps and random only when a panel has more than 10 curves)."""
    r = result.payload() if isinstance(result, SpatialSensitivity) else result
    fig, axes = panel_grid(len(r["models"]), (3.8, 3.3))
    for ax, m in zip(axes, r["models"]):
        for name, c in m["curves"].items():
            mean = np.array([nan_if_none(v) for v in c["prob_drop"]])
            ci = c.get("prob_drop_ci")
            lo, hi = (np.array([[nan_if_none(v) for v in pair] for pair in ci]).T if ci
                      else (mean - np.asarray(c["prob_drop_sem"]), mean + np.asarray(c["prob_drop_sem"])))
            heat, cross = name.startswith(HEATMAP), " " in name and not name.startswith(HEATMAP)
            style = "--" if heat else (":" if name == RANDOM else ("-." if cross else "-"))
            (line,) = ax.plot(r["ks"], mean, style, lw=2.2 if heat else 1.2, label=name)
            if heat or name == RANDOM or len(m["curves"]) <= 10:  # many bands would hide the curves
                ax.fill_between(r["ks"], lo, hi, alpha=0.12, color=line.get_color())
        ax.set_title(f"tested: {m['label']}", fontsize=9)
        ax.set_xlabel(f"masked {r['cell']}x{r['cell']} cells (k)")
        ax.set_ylabel("drop of true-class probability")
        if len(m["curves"]) > 10:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            ax.legend(fontsize=7, loc="upper left")
    return fig, axes


def write_spatial_sensitivity(result: SpatialSensitivity, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``spatial_sensitivity_images.npz`` (per-image scores), ``spatial_sensitivity.png`` and,
    last, ``spatial_sensitivity.json`` in ``out_dir``."""
    out = Path(out_dir)
    npz = _write_per_image(result, out / PER_IMAGE_FILE)
    fig, _ = plot_spatial_sensitivity(result)
    paths = write_result(out, "spatial_sensitivity", "spatial-sensitivity",
                         {**result.payload(), "per_image_file": PER_IMAGE_FILE}, fig, meta)
    return {**paths, "npz": npz}


def _write_per_image(result: SpatialSensitivity, path: Path) -> Path:
    arrays: dict[str, np.ndarray] = {"indices": np.asarray(result.indices, np.int64), "ks": np.asarray(result.ks)}
    for i, m in enumerate(result.models):
        per = result.per_image[m["label"]]
        arrays[f"label_{i}"] = np.asarray(m["label"])
        arrays[f"rankings_{i}"] = np.asarray(list(per))
        arrays[f"scores_{i}"] = np.stack(list(per.values())) if per else np.zeros((0, 2, result.images, len(result.ks)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def read_per_image(saved: dict[str, Any], out_dir: str | os.PathLike) -> SpatialSensitivity | None:
    """The result of a saved ``spatial_sensitivity.json`` (its content ``saved``) with its
    per-image scores read back, ready for :func:`add_curves`; ``None`` when the per-image
    file is missing or does not match the JSON (then the experiment must run again)."""
    name = saved.get("per_image_file")
    path = Path(out_dir) / str(name)
    if not name or not path.is_file():
        return None
    keep = {"ks", "cell", "heatmap_stride", "rankings", "images", "options"}
    result = SpatialSensitivity(**{k: v for k, v in saved.items() if k in keep})
    try:
        with np.load(path) as z:
            if list(z["ks"]) != list(result.ks) or len(z["indices"]) != result.images:
                return None
            result.indices = [int(i) for i in z["indices"]]
            for i, m in enumerate(saved.get("models", [])):
                if str(z[f"label_{i}"]) != m["label"]:
                    return None
                result.per_image[m["label"]] = dict(zip([str(r) for r in z[f"rankings_{i}"]], z[f"scores_{i}"]))
                result.models.append({k: v for k, v in m.items() if k not in ("curves", "comparisons")})
    except (OSError, KeyError, ValueError) as e:
        logger.warning("ignoring unreadable %s (%s)", path, e)
        return None
    return result
