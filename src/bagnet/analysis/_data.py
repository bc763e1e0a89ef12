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

__all__ = ["EvalData", "load_data"]


@dataclass
class EvalData:
    """A labelled image folder, read in a fixed shuffled order.

    ``order`` is the seeded, class-stratified order of :func:`bagnet.data.folder.
    stratified_order`: its first n images are the ``--max-images n`` subset every other
    command uses with the same seed. Experiments use the first ``max_images`` of it, which
    makes the image sets of cheap and expensive experiments nested and their cached outputs
    shared.
    """

    dataset: Any  # bagnet.data.folder.ImageFolder yielding pixel-space tensors
    root: Path
    img_size: int | None
    order: list[int]
    workers: int = 0
    preprocessing: Any = None

    def set_img_size(self, img_size: int, crop_pct: float | None = None) -> None:
        """Preprocess as every bagnet command does (:class:`~bagnet.data.transforms.Preprocessing`:
        the whole image, short side ``img_size``), unnormalized: each model normalizes itself."""
        from ..data.transforms import Preprocessing

        if img_size < 8:
            raise ValueError(f"image size must be at least 8 pixels, got {img_size}")
        self.img_size = int(img_size)
        self.preprocessing = Preprocessing(self.img_size, crop_pct, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.dataset.transform = self.preprocessing

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
            if isinstance(x, list):  # whole images of several sizes: one batch per size
                groups: dict[tuple, list[int]] = {}
                for k, t in enumerate(x):
                    groups.setdefault(tuple(t.shape), []).append(k)
                for ks in groups.values():
                    yield torch.stack([x[k] for k in ks]), y[ks], idx[ks]
            elif len(idx):
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
    images = [b[0] for b in good]
    return (
        torch.stack(images) if len({tuple(t.shape) for t in images}) == 1 else images,
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
    from ..data.folder import ImageFolder, stratified_order

    dataset = ImageFolder(root, classes=classes)
    order = stratified_order(dataset.targets, seed)
    data = EvalData(dataset, Path(root), None, order, workers)
    if img_size is not None:
        data.set_img_size(img_size)
    return data


