"""Image folders you can trust: ``root/<class>/<image>`` with bad files reported, not fatal.

Built on torchvision's :class:`~torchvision.datasets.DatasetFolder`, but every image goes
through :func:`bagnet.data.images.load_image` (EXIF, grayscale, palette, RGBA, CMYK and
16-bit become upright 8-bit RGB). A file that cannot be decoded is skipped with one
warning and counted, instead of killing a run hours in; :func:`collate_skip` drops such
samples from a batch and reports how many it dropped.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision import transforms as T
from torchvision.datasets import DatasetFolder

from .._text import plural
from .images import ImageError, is_image_file, load_image

__all__ = [
    "ImageFolder",
    "collate_skip",
    "eval_transform",
    "read_class_index",
    "split_indices",
    "train_transform",
]

logger = logging.getLogger(__name__)

# Resize to img_size / CROP_PCT, then centre-crop img_size: the usual ImageNet evaluation.
CROP_PCT = 0.875


class ImageFolder(DatasetFolder):
    """An ImageFolder whose unreadable images are skipped instead of raising.

    Args:
        root: folder with one sub-folder per class (searched recursively for images).
        transform: applied to the RGB PIL image.
        classes: expected class names in output order (e.g. those of a checkpoint or of
            the training split); a folder whose classes differ is an error.

    Attributes:
        empty_classes: class folders without any image (kept as classes, reported).
        non_image_files: files ignored because their extension is not an image's.

    ``dataset[i]`` is ``(image, target)``, or ``None`` for a file that cannot be decoded;
    each such file is warned about once per process.
    """

    def __init__(self, root: str | os.PathLike, transform=None, classes: Sequence[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self._expected = list(classes) if classes is not None else None
        self.non_image_files: list[str] = []
        # allow_empty: empty class folders are reported below rather than refused.
        super().__init__(
            str(root), loader=load_image, transform=transform, is_valid_file=self._keep, allow_empty=True
        )
        self.empty_classes = [c for c in self.classes if not any(t == self.class_to_idx[c] for t in self.targets)]
        self._warned: set[str] = set()
        if self.empty_classes:
            logger.warning(
                "%s: %s without images: %s",
                root, plural(len(self.empty_classes), "class folder"), ", ".join(self.empty_classes[:10]),
            )
        if self.non_image_files:
            shown = ", ".join(os.path.relpath(p, root) for p in self.non_image_files[:5])
            logger.warning("%s: ignored %s without an image extension: %s", root, plural(len(self.non_image_files), "file"), shown)
        if not self.samples:
            raise ValueError(f"{root}: no images found in its class folders")

    def _keep(self, path: str) -> bool:
        if is_image_file(path):
            return True
        self.non_image_files.append(path)
        return False

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise ValueError(f"{directory} has no class folders; expected {directory}/<class>/<image>")
        if self._expected is not None and classes != sorted(self._expected):
            missing = sorted(set(self._expected) - set(classes))
            extra = sorted(set(classes) - set(self._expected))
            raise ValueError(
                f"{directory}: class folders differ from the expected classes "
                f"(missing: {', '.join(missing[:5]) or '-'}; unexpected: {', '.join(extra[:5]) or '-'})"
            )
        order = self._expected if self._expected is not None else classes
        return list(order), {c: i for i, c in enumerate(order)}

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except ImageError as e:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping unreadable image %s", e)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def collate_skip(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples of a batch; returns ``(images, targets, skipped)``.

    ``images`` may be empty (``shape[0] == 0``) when every sample was unreadable.
    """
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([b[0] for b in good])
    targets = torch.as_tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, skipped


def train_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], crop_scale: float = 0.08
) -> T.Compose:
    """RandomResizedCrop to ``img_size`` (crops of ``crop_scale`` to all of the image's area),
    horizontal flip, normalize."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(mean, std),
    ])


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = CROP_PCT) -> T.Compose:
    """Resize the short side to ``img_size / crop_pct``, centre-crop ``img_size``, normalize."""
    return T.Compose([
        T.Resize(round(img_size / crop_pct), antialias=True),
        T.CenterCrop(img_size),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(mean, std),
    ])


def split_indices(targets: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val), taking ``fraction`` of every class for val.

    Stratified so that small classes still appear in both parts; at least one image per
    class goes to val when the class has two or more.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--val-split must lie strictly between 0 and 1, got {fraction}")
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for idx in by_class.values():
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


def read_class_index(path: str | os.PathLike) -> dict[str, int]:
    """Read a ``classes.tsv`` (``wnid<TAB>imagenet_index[<TAB>name]``, header optional).

    Returns:
        folder name (WordNet id) -> ImageNet-1k class index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} does not exist")
    mapping: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected 'folder<TAB>index', got {row!r}")
            try:
                mapping[row[0].strip()] = int(row[1])
            except ValueError:
                if n == 1:  # a header line
                    continue
                raise ValueError(f"{path}:{n}: class index {row[1]!r} is not an integer") from None
    if not mapping:
        raise ValueError(f"{path}: no 'folder<TAB>index' lines found")
    return mapping


def read_class_names(root: str | os.PathLike, classes: list[str]) -> list[str] | None:
    """Display names for folder classes from ``root/classes.tsv`` (third column), if present.

    Imagenette's folders are WordNet ids; people want to read "tench", not "n01440764".
    Returns ``None`` when the file is missing or does not name every class.
    """
    path = Path(root) / "classes.tsv"
    if not path.is_file():
        return None
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) >= 3 and row[0].strip():
                names[row[0].strip()] = row[2].strip()
    if not all(c in names for c in classes):
        return None
    return [names[c] for c in classes]

