"""Class patches over a data set: which image patches make the model say class c?

The paper's "book jacket" figure: the patches with the most evidence for a class come
from images of that class, and also from images of other classes (text on any object
makes a BagNet say "book jacket").
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._text import plural
from ..data.images import ImageError, is_image_file
from ..data.transforms import Preprocessing
from ._explain import class_names, model_config
from ._figures import new_figure
from ._images import preprocess
from ._maps import EvidenceMapper
from ._patches import Patch, top_patches

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

__all__ = ["ClassPatches", "class_patches", "plot_class_patches"]

_log = logging.getLogger(__name__)


@dataclass
class ClassPatches:
    """The patches with the most evidence for one class, from a labelled image folder.

    Attributes:
        class_index: the class.
        class_name: its name.
        positive: best patches from images labelled ``class_index``, best first.
        negative: best patches from images labelled otherwise, best first.
        positive_crops: the pixels of each positive patch, ``[3, h, w]`` in [0, 1].
        negative_crops: likewise for the negatives.
        label_names: name of every label that occurs among the patches.
        num_images: images searched.
        skipped: files that could not be read, with the reason.
    """

    class_index: int
    class_name: str
    positive: list[Patch]
    negative: list[Patch]
    positive_crops: list[torch.Tensor] = field(repr=False)
    negative_crops: list[torch.Tensor] = field(repr=False)
    label_names: dict[int, str] = field(repr=False)
    num_images: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "class_index": self.class_index,
            "class_name": self.class_name,
            "num_images": self.num_images,
            "positive": [p.to_dict() for p in self.positive],
            "negative": [p.to_dict() for p in self.negative],
            "skipped": list(self.skipped),
        }

    def plot(self, *, ncols: int | None = None) -> tuple[Figure, np.ndarray]:
        """See :func:`plot_class_patches`."""
        return plot_class_patches(self, ncols=ncols)


def _folder_labels(root: Path, model: nn.Module, labels: dict[str, int] | None) -> dict[str, int]:
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise ValueError(f"{root} has no class folders; expected the layout {root}/<class>/<image>")
    if labels is not None:
        missing = [d for d in dirs if d not in labels]
        if missing:
            raise ValueError(f"labels has no class index for the folders {', '.join(missing[:5])}")
        return {d: int(labels[d]) for d in dirs}
    names = model_config(model).get("classes")
    if names is not None and all(d in names for d in dirs):
        return {d: list(names).index(d) for d in dirs}
    if len(dirs) == model.num_classes:
        return {d: i for i, d in enumerate(dirs)}  # torchvision ImageFolder's convention
    raise ValueError(
        f"cannot tell which class each folder of {root} is ({plural(len(dirs), 'folder')}, {plural(model.num_classes, 'class')}, "
        "names that are not the model's class names); pass labels={folder: class_index}"
    )


def class_patches(
    model: nn.Module,
    root: str | os.PathLike,
    class_index: int,
    *,
    k: int = 8,
    per_image: int = 1,
    stride: int | str = "native",
    labels: dict[str, int] | None = None,
    img_size: int | None = None,
    batch_size: int = 16,
    mapper: EvidenceMapper | None = None,
) -> ClassPatches:
    """The ``k`` patches with the most evidence for ``class_index`` among images labelled
    with it, and among images labelled otherwise.

    Images are read from ``root/<label folder>/<image>``, resized so that the short side is
    ``img_size`` (default: the model's, else 224) and centre-cropped to a square, so that
    they can be batched; evidence maps are computed for the one class, a batch at a time.
    Only patches wholly inside the image are ranked (the maps are unpadded unless a padded
    ``mapper`` is given, whose windows reaching past the image are then skipped), so every
    crop is a whole ``q x q`` patch; at the native stride they are the model's own patches,
    those whose mean evidence is the logit.

    Args:
        model: a :class:`~bagnet.models.BagNet`.
        root: the labelled image folder.
        class_index: the class whose evidence is ranked.
        k: patches to keep for each of the two groups.
        per_image: at most this many (non-overlapping) patches from one image.
        stride: evidence map stride (``"native"`` is cheapest, the model's own patches; 1
            finds the best crops anywhere in the image).
        labels: class index of each folder name; by default folders named like the
            model's classes map to them, else folders in sorted order are classes 0, 1, ...
            (torchvision's ImageFolder) when their number is the number of classes.
        img_size: short side to resize to.
        batch_size: images per model call.
        mapper: a prepared :class:`EvidenceMapper` (its stride is used).

    Returns:
        A :class:`ClassPatches`; unreadable files are listed in ``skipped``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if not 0 <= class_index < model.num_classes:
        raise ValueError(f"class index {class_index} is out of range for a model with {plural(model.num_classes, 'class')}")
    if k < 1 or per_image < 1 or batch_size < 1:
        raise ValueError("k, per_image and batch_size must be positive")
    folder_labels = _folder_labels(root, model, labels)
    files = [
        (f, label)
        for d, label in folder_labels.items()
        for f in sorted((root / d).rglob("*"))
        if f.is_file() and is_image_file(f)
    ]
    cfg = model_config(model)
    size = Preprocessing.from_cfg(cfg, img_size or None).img_size  # the model's size, as every command uses
    mapper = mapper or EvidenceMapper(model, stride=stride, pad_value=None)
    geometry = mapper.geometry((size, size))
    heaps: dict[bool, list] = {True: [], False: []}
    tie = itertools.count()  # equal scores keep the file order
    skipped: list[str] = []
    count = 0

    for start in range(0, len(files), batch_size):
        batch, shown, meta = [], [], []
        for path, label in files[start : start + batch_size]:
            try:
                x, disp = preprocess(path, cfg, crop=True, img_size=size)
            except ImageError as e:
                _log.warning("skipping %s", e)
                skipped.append(str(e))
                continue
            if x.shape[-2:] != (size, size):  # an image thinner than the crop
                skipped.append(f"{path}: smaller than {size}x{size} after resizing")
                continue
            batch.append(x)
            shown.append(disp)
            meta.append((path, label))
        if not batch:
            continue
        count += len(batch)
        maps = mapper(torch.stack(batch).to(mapper.device), [class_index])[:, 0].float().cpu()
        for ev, disp, (path, label) in zip(maps, shown, meta):
            for p in top_patches(ev, geometry, k=per_image, classes=[class_index], non_overlapping=True, inside=True):
                p = replace(p, source=str(path), label=label)
                crop = disp[:, p.box[1] : p.box[3], p.box[0] : p.box[2]].clone()
                heap = heaps[label == class_index]
                item = (p.score, -next(tie), p, crop)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)

    names = class_names(model)
    best = {group: sorted(h, key=lambda it: (it[0], it[1]), reverse=True) for group, h in heaps.items()}
    used = {class_index} | {it[2].label for items in best.values() for it in items}
    return ClassPatches(
        class_index=class_index,
        class_name=names[class_index],
        positive=[it[2] for it in best[True]],
        negative=[it[2] for it in best[False]],
        positive_crops=[it[3] for it in best[True]],
        negative_crops=[it[3] for it in best[False]],
        label_names={i: names[i] for i in sorted(used)},
        num_images=count,
        skipped=skipped,
    )


def plot_class_patches(result: ClassPatches, *, ncols: int | None = None) -> tuple[Figure, np.ndarray]:
    """Two groups of patch crops: from images of the class, and from other images
    (titled with their score, and the other image's label).

    Returns:
        ``(fig, axes)``, one axes per shown patch.
    """
    groups = [("from images of", result.positive, result.positive_crops),
              ("from other images", result.negative, result.negative_crops)]
    ncols = ncols or max(1, min(8, max(len(result.positive), len(result.negative))))
    rows = [max(1, -(-len(patches) // ncols)) for _, patches, _ in groups]
    fig = new_figure((1.4 * ncols, 1.6 * sum(rows) + 0.6))
    grid = fig.add_gridspec(sum(rows), ncols)
    axes, row = [], 0
    for (head, patches, crops), nrows in zip(groups, rows):
        for i, (p, crop) in enumerate(zip(patches, crops)):
            ax = fig.add_subplot(grid[row + i // ncols, i % ncols])
            ax.imshow(crop.permute(1, 2, 0).numpy(), interpolation="nearest")
            extra = "" if p.label == result.class_index else f"\n{result.label_names.get(p.label, p.label)}"
            ax.set_title(f"{p.score:.2f}{extra}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            axes.append(ax)
        if not patches:
            ax = fig.add_subplot(grid[row, :])
            ax.text(0.5, 0.5, "no images", ha="center", va="center")
            ax.axis("off")
        first = axes[-len(patches)] if patches else ax
        first.set_ylabel(f"{head} '{result.class_name}'" if head.endswith("of") else head, fontsize=8)
        row += nrows
    fig.suptitle(f"patches with the most evidence for '{result.class_name}'", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig, axes
