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
from .transforms import Preprocessing

__all__ = [
    "ImageFolder",
    "RandomMasks",
    "collate_skip",
    "eval_transform",
    "read_class_index",
    "split_indices",
    "stratified_order",
    "subset_indices",
    "train_transform",
]

logger = logging.getLogger(__name__)

# The usual ImageNet evaluation crop (resize to img_size / CROP_PCT, centre-crop img_size),
# the convention the authors' published accuracies were measured with.
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
            if isinstance(self.transform, Preprocessing):
                # The preprocessing decodes the file itself, exactly as explain and serve do.
                return self.transform(path), target
            image = self.loader(path)
        except ImageError as e:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping unreadable image %s", e)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def collate_skip(batch: list) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, int]:
    """Stack the readable samples of a batch; returns ``(images, targets, skipped)``.

    ``images`` is one ``[B, C, H, W]`` tensor, or, when whole images of other aspect ratios
    meet in a batch, the list of their ``[C, H, W]`` tensors (see :func:`bagnet.train.engine.
    forward_images`). It may be empty (``len(images) == 0``) when every sample was unreadable.
    """
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    shapes = {tuple(b[0].shape) for b in good}
    images = torch.stack([b[0] for b in good]) if len(shapes) == 1 else [b[0] for b in good]
    targets = torch.as_tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, skipped


class RandomMasks:
    """Cutout with PatchCleanser's masks: ``count`` rectangles of ``size`` at uniformly random
    positions (each whole inside the image; they may overlap), filled with ``fill``.

    Applied to normalized ``[C, H, W]`` tensors, the default fill 0 is the normalization's
    mean colour, what :class:`bagnet.robust.PatchCleanser` masks with by default. The
    positions come from torch's global generator, like the random crop's, so a loader's
    seed (and a resumed run's saved generator state) decides them.

    Args:
        count: masks per image (PatchCleanser fine-tunes its models with 2).
        size: ``(rows, cols)`` of every mask in pixels; clamped to the image.
        fill: the value written into the masked pixels.

    Raises:
        ValueError: a negative count or a mask side below 1.
    """

    def __init__(self, count: int, size: tuple[int, int] | int, fill: float = 0.0):
        mh, mw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if count < 0 or mh < 1 or mw < 1:
            raise ValueError(f"RandomMasks needs count >= 0 and mask sides >= 1, got {count} masks of {mh}x{mw}")
        self.count, self.size, self.fill = int(count), (mh, mw), float(fill)

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """``count`` random ``(top, left)`` corners for an image of ``height x width``: top in
        ``[0, height - rows]``, left in ``[0, width - cols]``."""
        mh, mw = min(self.size[0], height), min(self.size[1], width)
        tops = torch.randint(0, height - mh + 1, (self.count,)).tolist()
        lefts = torch.randint(0, width - mw + 1, (self.count,)).tolist()
        return list(zip(tops, lefts))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        mh, mw = min(self.size[0], h), min(self.size[1], w)
        out = image.clone()
        for top, left in self.positions(h, w):
            out[..., top:top + mh, left:left + mw] = self.fill
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count}, size={self.size}, fill={self.fill:g})"


def train_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], crop_scale: float = 0.08,
    masks: RandomMasks | None = None,
) -> T.Compose:
    """RandomResizedCrop to ``img_size`` (crops of ``crop_scale`` to all of the image's area),
    horizontal flip, normalize, then ``masks`` (``bagnet train --mask-patches``) if given."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(mean, std),
        *([masks] if masks is not None and masks.count else []),
    ])


def eval_transform(
    img_size: int | None, mean: Sequence[float], std: Sequence[float], crop_pct: float | None = None
) -> Preprocessing:
    """The evaluation pipeline: :class:`~bagnet.data.transforms.Preprocessing`, the one every
    path uses (the whole image at short side ``img_size`` unless ``crop_pct`` is given)."""
    return Preprocessing(img_size, crop_pct, tuple(mean), tuple(std))


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


def stratified_order(targets: Sequence[int], seed: int = 0) -> list[int]:
    """A seeded order of sample indices whose every prefix is a class-stratified subset.

    Each class is shuffled with ``seed``; the sample ranked ``r`` of a class of ``n`` comes
    at position ``(r + 0.5) / n`` of the whole order (ties: the lower class first), so the
    first N samples hold each class in proportion to its size (within one image), and the
    first N are always among the first M > N: cheap and expensive runs share images.
    """
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    keyed = []
    for c, idx in sorted(by_class.items()):
        perm = torch.randperm(len(idx), generator=g).tolist()
        keyed += [((r + 0.5) / len(idx), c, idx[j]) for r, j in enumerate(perm)]
    return [i for _, _, i in sorted(keyed)]


def subset_indices(targets: Sequence[int], n: int | None, seed: int = 0) -> list[int]:
    """The ``--max-images`` subset of every command: the first ``n`` of
    :func:`stratified_order`, in sample order (all samples when ``n`` is ``None``)."""
    if n is None or n >= len(targets):
        return list(range(len(targets)))
    if n < 1:
        raise ValueError(f"--max-images must be at least 1, got {n}")
    return sorted(stratified_order(targets, seed)[:n])


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

