"""The most predictive patches of an evidence map, as boxes in image coordinates."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._maps import MapGeometry

__all__ = ["Patch", "top_patches"]


@dataclass(frozen=True)
class Patch:
    """One image patch and its class evidence.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in image pixels, end-exclusive, clipped to the image.
        score: the class evidence (logit) of the patch.
        class_index: the class the evidence is for.
        center: ``(x, y)``, the pixel the (unclipped) patch is centred on (the same order
            as ``box``).
        source: image file the patch comes from, when patches are collected over a data set.
        label: that image's label, when known.
    """

    box: tuple[int, int, int, int]
    score: float
    class_index: int
    center: tuple[int, int]
    source: str | None = None
    label: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"], d["center"] = list(self.box), list(self.center)
        return {k: v for k, v in d.items() if v is not None}


def top_patches(
    evidence: torch.Tensor | np.ndarray,
    geometry: MapGeometry,
    *,
    k: int = 5,
    classes: list[int] | None = None,
    non_overlapping: bool = False,
    max_overlap: float = 0.0,
    largest: bool = True,
    inside: bool = False,
) -> list[Patch] | list[list[Patch]]:
    """The ``k`` highest-scoring patches of an evidence map, per class.

    Args:
        evidence: one map ``[h, w]`` or one per class ``[K, h, w]`` (from :func:`evidence_map`).
        geometry: where the map entries sit in the image (:func:`map_geometry`).
        k: patches per class (fewer if the map, or the non-overlapping choice, runs out).
        classes: the class index of each map, for :attr:`Patch.class_index`
            (default ``0 .. K-1``).
        non_overlapping: choose greedily in order of score, skipping any patch whose box
            overlaps an already chosen one by more than ``max_overlap`` (intersection over
            union; 0 means the boxes may not share a pixel), like non-maximum suppression.
        max_overlap: see ``non_overlapping``.
        largest: ``False`` for the patches with the least evidence instead.
        inside: only entries whose whole ``q x q`` window lies inside the image; the
            others (near the border of a padded map) see part zero padding, and their
            boxes are clipped.

    Returns:
        A list of :class:`Patch`, best first, for a 2-D map; a list of such lists for ``[K, h, w]``.
        Ties go to the entry that comes first in row-major order.
    """
    ev = evidence.detach().float().cpu().numpy() if isinstance(evidence, torch.Tensor) else np.asarray(evidence, np.float32)
    if ev.ndim not in (2, 3):
        raise ValueError(f"evidence must be [h, w] or [K, h, w], got shape {ev.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not 0.0 <= max_overlap < 1.0:
        raise ValueError(f"max_overlap must lie in [0, 1), got {max_overlap}")
    maps = ev[None] if ev.ndim == 2 else ev
    if tuple(maps.shape[-2:]) != geometry.map_size:
        raise ValueError(f"evidence map is {maps.shape[-2]}x{maps.shape[-1]}, but the geometry gives {geometry.map_size}")
    if classes is None:
        classes = list(range(len(maps)))
    if len(classes) != len(maps):
        raise ValueError(f"{len(classes)} class indices for {len(maps)} maps")
    boxes = _boxes(geometry)
    keep = _inside(geometry) if inside else None
    out = [_select(m.reshape(-1), boxes, k, non_overlapping, max_overlap, largest, geometry, c, keep)
           for m, c in zip(maps, classes)]
    return out[0] if ev.ndim == 2 else out


def _boxes(geom: MapGeometry) -> np.ndarray:
    """``[h*w, 4]`` clipped boxes (x0, y0, x1, y1) of all map entries, row-major."""
    h, w = geom.map_size
    ih, iw = geom.image_size
    y0 = np.arange(h) * geom.stride - geom.offset
    x0 = np.arange(w) * geom.stride - geom.offset
    yy0, xx0 = np.meshgrid(y0, x0, indexing="ij")
    q = geom.patch_size
    return np.stack(
        [np.clip(xx0, 0, iw), np.clip(yy0, 0, ih), np.clip(xx0 + q, 0, iw), np.clip(yy0 + q, 0, ih)], -1
    ).reshape(-1, 4)


def _inside(geom: MapGeometry) -> np.ndarray:
    """``[h*w]`` bool, row-major: the entry's unclipped window lies wholly inside the image."""
    h, w = geom.map_size
    ih, iw = geom.image_size
    q = geom.patch_size
    y0 = np.arange(h) * geom.stride - geom.offset
    x0 = np.arange(w) * geom.stride - geom.offset
    rows = (y0 >= 0) & (y0 + q <= ih)
    cols = (x0 >= 0) & (x0 + q <= iw)
    return (rows[:, None] & cols[None, :]).reshape(-1)


def _select(scores, boxes, k, non_overlapping, max_overlap, largest, geom, class_index, keep=None) -> list[Patch]:
    # A stable sort keeps row-major order among equal scores.
    order = np.argsort(-scores if largest else scores, kind="stable")
    if keep is not None:
        order = order[keep[order]]
    if not non_overlapping:
        chosen = order[:k]
    else:
        alive = np.ones(len(scores), bool)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        chosen = []
        pos = 0
        while len(chosen) < k:
            while pos < len(order) and not alive[order[pos]]:
                pos += 1
            if pos == len(order):
                break
            best = order[pos]
            chosen.append(best)
            bx = boxes[best]
            iw = np.clip(np.minimum(boxes[:, 2], bx[2]) - np.maximum(boxes[:, 0], bx[0]), 0, None)
            ih = np.clip(np.minimum(boxes[:, 3], bx[3]) - np.maximum(boxes[:, 1], bx[1]), 0, None)
            inter = iw * ih
            iou = inter / np.maximum(area + area[best] - inter, 1)
            alive &= iou <= max_overlap if max_overlap > 0 else inter == 0
    w, half = geom.map_size[1], (geom.patch_size - 1) // 2 - geom.offset
    return [
        Patch(
            box=tuple(int(v) for v in boxes[i]),
            score=float(scores[i]),
            class_index=int(class_index),
            center=(int(i % w) * geom.stride + half, int(i // w) * geom.stride + half),
        )
        for i in chosen
    ]
