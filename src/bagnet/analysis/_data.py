"""The labelled image folder of an analysis, read in a fixed shuffled order, in pixel space."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._output import progress

__all__ = ["EvalData", "find_class_index", "load_data"]


@dataclass
class EvalData:
    """A labelled image folder, read in a fixed shuffled order.

    ``order`` is a seeded permutation of the folder's samples (so that the first n images
    cover all classes); experiments use the first ``max_images`` of it, which makes the
    image sets of cheap and expensive experiments nested and their cached outputs shared.
    """

    dataset: Any  # bagnet.data.folder.ImageFolder yielding pixel-space tensors
    root: Path
    img_size: int | None
    order: list[int]
    workers: int = 0

    def set_img_size(self, img_size: int) -> None:
        """Resize (short side to ``img_size / 0.875``) and centre-crop to ``img_size``, unnormalized."""
        from ..data.folder import eval_transform

        if img_size < 8:
            raise ValueError(f"image size must be at least 8 pixels, got {img_size}")
        self.img_size = int(img_size)
        self.dataset.transform = eval_transform(self.img_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets, dtype=np.int64)

    def indices(self, max_images: int | None = None) -> list[int]:
        return self.order if max_images is None else self.order[:max_images]

    def fingerprint(self) -> str:
        h = hashlib.sha1(f"{self.root.resolve()}|{self.img_size}|{len(self.dataset.samples)}".encode())
        for path, _ in self.dataset.samples:
            h.update(path.encode())
        return h.hexdigest()[:16]

    def iter_batches(
        self, indices: Sequence[int], batch_size: int, desc: str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(pixels, targets, sample indices)``; unreadable images are left out."""
        from torch.utils.data import DataLoader, Subset

        if self.img_size is None:
            raise ValueError("set the image size first (EvalData.set_img_size)")
        indices = list(indices)
        loader = DataLoader(
            Subset(_Indexed(self.dataset), indices),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_collate_indexed,
        )
        for x, y, idx in progress(loader, desc, total=len(loader)):
            if len(idx):
                yield x, y, idx


class _Indexed(torch.utils.data.Dataset):
    """Adds the sample index to each item, so results stay tied to their image."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return None if item is None else (item[0], item[1], i)


def _collate_indexed(batch):
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return (
        torch.stack([b[0] for b in good]),
        torch.as_tensor([b[1] for b in good], dtype=torch.long),
        torch.as_tensor([b[2] for b in good], dtype=torch.long),
    )


def load_data(
    root: str | os.PathLike,
    img_size: int | None,
    *,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    workers: int = 0,
) -> EvalData:
    """The image folder ``root`` (``root/<class>/<image>``) in evaluation resizing, unnormalized.

    ``img_size`` may be left ``None`` and set later with :meth:`EvalData.set_img_size`
    (e.g. once the models say what they were trained at).
    """
    from ..data.folder import ImageFolder

    dataset = ImageFolder(root, classes=classes)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    data = EvalData(dataset, Path(root), None, order, workers)
    if img_size is not None:
        data.set_img_size(img_size)
    return data


def find_class_index(root: str | os.PathLike) -> dict[str, int] | None:
    """A ``classes.tsv`` in the data folder or its parent (the Imagenette layout), if any."""
    from ..data.folder import read_class_index

    for d in (Path(root), Path(root).parent):
        if (d / "classes.tsv").is_file():
            return read_class_index(d / "classes.tsv")
    return None
