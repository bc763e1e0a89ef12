"""What every experiment shares: models, data, masking, cached predictions, JSON output.

Images travel through the experiments in *pixel space* (``[0, 1]`` RGB, resized and
centre-cropped): masking happens there, so every model sees the same masked image, and
each :class:`Classifier` applies its own normalization. Outputs are restricted to the
data set's classes (``Classifier.columns``), so a model trained on the folder and an
ImageNet-1k model are compared on the same labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_path, write_text  # noqa: F401  (re-exported for the experiments)
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

__all__ = [
    "Classifier",
    "EvalData",
    "LogitCache",
    "ModelSpec",
    "Predictions",
    "cell_sums",
    "channel_mean",
    "load_classifier",
    "load_data",
    "parse_model_spec",
    "pearson",
    "predictions",
    "read_json",
    "write_json",
]

# Prefixes under which a bagnet model file may name a torchvision classifier.
_TV_PREFIXES = ("torchvision:", "torchvision/", "torchvision.")


# -- model specifications -------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model to analyse: what to build and what to call it in tables and figures.

    Attributes:
        label: short name used in results (``"BagNet-33"``); unique within a run.
        model: a registered BagNet (``bagnet33_slim``) or a torchvision classifier
            (``resnet18``); ``None`` when ``weights`` is a bagnet model file that names it.
        weights: ``None`` (random initialisation), a tag (``imagenet``), or a path/URL.
    """

    label: str
    model: str | None = None
    weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_model_spec(text: str | dict) -> ModelSpec:
    """Read ``[LABEL=]NAME[@WEIGHTS]`` or ``[LABEL=]PATH`` (or a dict with those keys).

    Examples: ``bagnet33_slim@runs/b33/model.pt``, ``R18=resnet18@runs/r18/model.pt``,
    ``vgg16@imagenet``, ``runs/b9/model.pt`` (a bagnet model file names its model).
    """
    if isinstance(text, dict):
        unknown = set(text) - {"label", "model", "weights"}
        if unknown:
            raise ValueError(f"model entry {text}: unknown keys {sorted(unknown)}; use label, model, weights")
        if not text.get("model") and not text.get("weights"):
            raise ValueError(f"model entry {text} names neither a model nor a weight file")
        model, weights = text.get("model"), text.get("weights")
        label = text.get("label") or _default_label(model, weights)
        return ModelSpec(str(label), model, None if weights is None else str(weights))
    text = str(text).strip()
    if not text:
        raise ValueError("empty model specification; use [LABEL=]NAME[@WEIGHTS] or [LABEL=]PATH")
    label = None
    if "=" in text and not Path(text).exists():
        label, text = text.split("=", 1)
        label = label.strip() or None
    if Path(text).expanduser().is_file():
        model, weights = None, text
    elif "@" in text:
        model, weights = text.split("@", 1)
    else:
        model, weights = text, None
    if not model and not weights:
        raise ValueError(f"model specification {text!r} names neither a model nor a weight file")
    return ModelSpec(label or _default_label(model, weights), model or None, weights or None)


def _default_label(model: str | None, weights: str | None) -> str:
    if model:
        return model
    return Path(str(weights)).parent.name or Path(str(weights)).stem


# -- classifiers ------------------------------------------------------------------------


class Classifier:
    """A model with its normalization and the output columns of the data set's classes.

    Args:
        label: name in results.
        model: the network (put in eval mode here).
        mean, std: per-channel normalization the network expects.
        columns: output index of each data-set class; ``None`` means output k is class k.
        fingerprint: identifies model and weights, for caches.
    """

    def __init__(
        self,
        label: str,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        columns: Sequence[int] | None = None,
        fingerprint: str = "",
    ):
        self.label = label
        self.model = model.eval()
        device = _device_of(model)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.columns = None if columns is None else torch.as_tensor(list(columns), dtype=torch.long, device=device)
        self.fingerprint = fingerprint or label
        self._captum_model: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def is_bagnet(self) -> bool:
        from ..models import BagNet

        return isinstance(self.model, BagNet)

    @property
    def receptive_field(self) -> int | None:
        return self.model.receptive_field if self.is_bagnet else None

    @property
    def name(self) -> str:
        return getattr(self.model, "model_name", type(self.model).__name__)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(self.device) - self.mean) / self.std

    def column(self, classes: torch.Tensor) -> torch.Tensor:
        """Model output index of data-set classes."""
        classes = classes.to(self.device)
        return classes if self.columns is None else self.columns[classes]

    def full_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """All outputs of the model for pixel-space images."""
        with torch.inference_mode():
            return self.model(self.normalize(pixels)).float()

    def restrict(self, full: torch.Tensor) -> torch.Tensor:
        """Columns of the data set's classes from full outputs."""
        return full if self.columns is None else full[:, self.columns]

    def target_scores(self, pixels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit, probability) of one data-set class per image; the probability is the
        softmax over all of the model's outputs."""
        full = self.full_logits(pixels)
        col = self.column(targets)[:, None]
        logit = full.gather(1, col)[:, 0]
        return logit, (logit - full.logsumexp(1)).exp()

    def captum_model(self) -> nn.Module:
        """A functionally identical copy that captum's DeepLift and LRP can walk (see
        :func:`bagnet.analysis._captum.captum_ready`); built once. A network that cannot
        be rewritten gets a plain frozen copy (DeepLift and LRP then report it unsupported)."""
        if self._captum_model is None:
            import copy

            from ._captum import UnsupportedModelError, captum_ready

            try:
                self._captum_model = captum_ready(self.model)
            except UnsupportedModelError as e:
                logger.warning("%s: %s; DeepLift and LRP are unavailable for it", self.label, e)
                plain = copy.deepcopy(self.model).eval()
                for m in plain.modules():
                    if hasattr(m, "inplace"):
                        m.inplace = False
                for p in plain.parameters():
                    p.requires_grad_(False)
                self._captum_model = plain
        return self._captum_model

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.name,
            "kind": "bagnet" if self.is_bagnet else "reference",
            "receptive_field": self.receptive_field,
            "source": getattr(self.model, "pretrained_cfg", {}).get("source"),
        }


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def torchvision_classifiers() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build_model(spec: ModelSpec, num_classes: int | None = None) -> nn.Module:
    """The network of ``spec`` with ``pretrained_cfg`` (mean, std, classes, img_size, source).

    BagNets come from :func:`bagnet.create_model`; any other name is looked up among
    torchvision's classifiers. A bagnet model file (as written by ``bagnet train``) may
    name either kind. ``num_classes`` sizes the head of a model without weights (random
    initialisation, for smoke runs); weights bring their own.
    """
    from ..models import create_model, list_models
    from ..models._weights import model_file_info, read_checkpoint

    name, weights = spec.model, spec.weights
    if name is None:
        if weights is None:
            raise ValueError(f"{spec.label}: give a model name or a weight file")
        stored, _, _ = model_file_info(read_checkpoint(weights))
        if stored is None:
            raise ValueError(f"{weights} is a plain state dict; name its model, e.g. resnet18@{weights}")
        name = stored
    extra = {"num_classes": num_classes} if weights is None and num_classes else {}
    if name in list_models():
        if weights is None:
            logger.warning("%s has no weights: it is randomly initialised", name)
        return create_model(name, pretrained=weights or False, **extra)
    tv_name = _strip_tv_prefix(name)
    if tv_name in torchvision_classifiers():
        return _torchvision_model(tv_name, weights, **extra)
    raise ValueError(
        f"unknown model {name!r}: neither a registered BagNet (see `bagnet models`) "
        "nor a torchvision classifier (torchvision.models.list_models())"
    )


def _strip_tv_prefix(name: str) -> str:
    for p in _TV_PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def _torchvision_model(name: str, weights: str | None, **kwargs: Any) -> nn.Module:
    """A torchvision classifier: random, torchvision's published weights, or a checkpoint."""
    import torchvision

    from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
    from ..models._weights import clean_state_dict, load_state_dict_strict, model_file_info, read_checkpoint

    meta: dict[str, Any] = {}
    if weights is None:
        logger.warning("%s has no weights: it is randomly initialised", name)
        model = torchvision.models.get_model(name, **kwargs)
    elif weights.lower() in ("imagenet", "default") or weights.isupper():
        # Only on explicit request: this downloads torchvision's published weights once.
        enum = torchvision.models.get_model_weights(name)
        tv_weights = enum.DEFAULT if weights.lower() in ("imagenet", "default") else enum[weights]
        model = torchvision.models.get_model(name, weights=tv_weights)
        crop = getattr(tv_weights.transforms(), "crop_size", [224])
        meta = {"classes": list(imagenet_classes()), "img_size": int(crop[0]), "dataset": "imagenet"}
    else:
        checkpoint = read_checkpoint(weights)
        stored, stored_args, meta = model_file_info(checkpoint)
        if stored is not None and _strip_tv_prefix(stored) != name:
            raise ValueError(f"{weights} holds a {stored!r} model, not {name!r}")
        state_dict = clean_state_dict(checkpoint)
        kwargs = dict(stored_args)
        if "num_classes" not in kwargs:
            kwargs["num_classes"] = _num_classes_of(name, state_dict)
        model = torchvision.models.get_model(name, **kwargs)
        try:
            load_state_dict_strict(model, state_dict)
        except ValueError as e:
            raise ValueError(f"{weights}: {e}") from None
    model.model_name = name
    model.model_args = kwargs
    classes = meta.get("classes")
    n_out = _last_linear(model).out_features
    model.pretrained_cfg = {
        "mean": list(meta.get("mean", IMAGENET_MEAN)),
        "std": list(meta.get("std", IMAGENET_STD)),
        **{k: v for k, v in meta.items() if k not in ("mean", "std", "classes")},
        "classes": list(classes) if classes is not None and len(classes) == n_out else None,
        "source": weights,
    }
    return model


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier head")
    return linears[-1]


def _num_classes_of(name: str, state_dict: dict[str, torch.Tensor]) -> int:
    """Outputs of a torchvision classifier from its checkpoint: the last linear layer's rows."""
    import torchvision

    with torch.device("meta"):
        probe = torchvision.models.get_model(name)
    head = _last_linear(probe)
    key = next(n for n, m in probe.named_modules() if m is head) + ".weight"
    if key not in state_dict:
        raise ValueError(f"checkpoint has no {key!r}, so it is not a {name} classifier")
    return int(state_dict[key].shape[0])


def class_columns(
    model_classes: Sequence[str] | None,
    num_outputs: int,
    data_classes: Sequence[str],
    class_index: dict[str, int] | None = None,
    label: str = "model",
) -> list[int] | None:
    """Output column of every data-set class, or ``None`` when output k is class k.

    Matched by class name when the model knows its classes, by position when it has one
    output per class, and through ``class_index`` (folder name -> output index, e.g. an
    Imagenette ``classes.tsv`` for ImageNet-1k models) otherwise.
    """
    data_classes = list(data_classes)
    if model_classes is not None and set(data_classes) <= set(model_classes):
        cols = [list(model_classes).index(c) for c in data_classes]
        return None if cols == list(range(num_outputs)) else cols
    if num_outputs == len(data_classes) and model_classes is None:
        return None
    if class_index is not None:
        missing = [c for c in data_classes if c not in class_index]
        if missing:
            raise ValueError(f"class map has no entry for the data's classes {missing[:5]}")
        cols = [int(class_index[c]) for c in data_classes]
        if max(cols) >= num_outputs:
            raise ValueError(f"{label}: class map index {max(cols)} is beyond its {num_outputs} outputs")
        return cols
    if model_classes is not None and num_outputs == len(data_classes):
        raise ValueError(
            f"{label}: its classes ({', '.join(list(model_classes)[:3])}, ...) are not the data's "
            f"({', '.join(data_classes[:3])}, ...); pass a class map or the matching data"
        )
    raise ValueError(
        f"{label} has {num_outputs} outputs but the data has {len(data_classes)} classes and no class map "
        "(e.g. --class-map classes.tsv with 'folder<TAB>output index' lines)"
    )


def load_classifier(
    spec: ModelSpec,
    data_classes: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    class_index: dict[str, int] | None = None,
) -> Classifier:
    """Build ``spec``'s model on ``device`` and map its outputs to ``data_classes``."""
    model = build_model(spec, num_classes=len(data_classes)).to(device)
    return make_classifier(spec, model, data_classes, class_index)


def make_classifier(
    spec: ModelSpec, model: nn.Module, data_classes: Sequence[str], class_index: dict[str, int] | None = None
) -> Classifier:
    """Wrap a model built by :func:`build_model` with its normalization and class columns."""
    cfg = getattr(model, "pretrained_cfg", {})
    n_out = model.num_classes if hasattr(model, "num_classes") else _last_linear(model).out_features
    cols = class_columns(cfg.get("classes"), n_out, data_classes, class_index, label=spec.label)
    return Classifier(
        spec.label, model.eval(), cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), cols,
        fingerprint=_fingerprint(spec, model),
    )


def _fingerprint(spec: ModelSpec, model: nn.Module) -> str:
    """Changes when the weights change (file size and time), so caches never serve stale outputs."""
    parts = [spec.label, getattr(model, "model_name", ""), json.dumps(getattr(model, "model_args", {}), sort_keys=True)]
    if spec.weights:
        p = Path(spec.weights).expanduser()
        parts.append(str(spec.weights))
        if p.is_file():
            st = p.stat()
            parts += [str(st.st_size), str(st.st_mtime_ns)]
    else:
        # Random weights differ per process unless seeded; hash them so a cache never lies.
        h = hashlib.sha1()
        for t in model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes()[:4096])
        parts.append(h.hexdigest())
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


# -- data -------------------------------------------------------------------------------


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


# -- predictions, computed once per model and image ----------------------------------


@dataclass
class Predictions:
    """Outputs of one model on a set of images.

    Attributes:
        indices: sample indices into the data set ``[N]``.
        targets: true classes ``[N]``.
        logits: outputs of the data set's classes ``[N, C]``.
        logsumexp: log-sum-exp over all outputs of the model ``[N]`` (so softmax
            probabilities over the full output follow from ``logits`` without rerunning).
        seconds: time spent in the model's forward passes (not in data loading).
    """

    indices: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    logsumexp: np.ndarray
    seconds: float

    @property
    def images_per_s(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else float("nan")

    def probs(self) -> np.ndarray:
        """Softmax over all model outputs, at the data set's classes ``[N, C]``."""
        return np.exp(self.logits - self.logsumexp[:, None])

    def take(self, indices: Sequence[int]) -> Predictions:
        """The rows of these sample indices, in this order (missing ones are dropped)."""
        pos = {int(i): k for k, i in enumerate(self.indices)}
        rows = np.asarray([pos[int(i)] for i in indices if int(i) in pos], dtype=np.int64)
        frac = len(rows) / max(len(self.indices), 1)
        return Predictions(
            self.indices[rows], self.targets[rows], self.logits[rows], self.logsumexp[rows], self.seconds * frac
        )


class LogitCache:
    """Model outputs per model and image, kept in memory and in ``DIR/logits-*.npz``.

    A request computes only the images not yet cached and adds them, so experiments that
    use nested image subsets never recompute an output.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else Path(directory)
        self._mem: dict[str, Predictions] = {}

    def _path(self, key: str, label: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"logits-{slug(label)}-{key}.npz"

    def get(
        self, clf: Classifier, data: EvalData, indices: Sequence[int], batch_size: int = 32
    ) -> Predictions:
        key = hashlib.sha1(f"{clf.fingerprint}|{data.fingerprint()}".encode()).hexdigest()[:12]
        have = self._mem.get(key) or self._read(key, clf.label)
        wanted = [int(i) for i in indices]
        known = set() if have is None else set(have.indices.tolist())
        todo = [i for i in wanted if i not in known]
        if todo:
            new = _compute(clf, data, todo, batch_size)
            have = new if have is None else _concat(have, new)
            self._write(key, clf.label, have)
        self._mem[key] = have
        return have.take(wanted)

    def _read(self, key: str, label: str) -> Predictions | None:
        path = self._path(key, label)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return Predictions(
                    z["indices"], z["targets"], z["logits"], z["logsumexp"], float(z["seconds"])
                )
        except (OSError, KeyError, ValueError) as e:
            logger.warning("ignoring unreadable cache %s (%s)", path, e)
            return None

    def _write(self, key: str, label: str, p: Predictions) -> None:
        path = self._path(key, label)
        if path is None:
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, indices=p.indices, targets=p.targets, logits=p.logits, logsumexp=p.logsumexp,
                     seconds=np.float64(p.seconds))


def _compute(clf: Classifier, data: EvalData, indices: list[int], batch_size: int) -> Predictions:
    out_idx, out_y, out_logits, out_lse = [], [], [], []
    seconds = 0.0
    for x, y, idx in data.iter_batches(indices, batch_size, desc=f"outputs of {clf.label}"):
        x = x.to(clf.device)
        _sync(clf.device)
        t0 = time.perf_counter()
        full = clf.full_logits(x)
        _sync(clf.device)
        seconds += time.perf_counter() - t0
        out_idx.append(idx.numpy())
        out_y.append(y.numpy())
        out_logits.append(clf.restrict(full).cpu().numpy())
        out_lse.append(full.logsumexp(1).cpu().numpy())
    if not out_idx:
        raise ValueError(f"none of the {len(indices)} requested images could be read")
    return Predictions(
        np.concatenate(out_idx), np.concatenate(out_y), np.concatenate(out_logits).astype(np.float32),
        np.concatenate(out_lse).astype(np.float32), seconds,
    )


def _concat(a: Predictions, b: Predictions) -> Predictions:
    return Predictions(
        np.concatenate([a.indices, b.indices]), np.concatenate([a.targets, b.targets]),
        np.concatenate([a.logits, b.logits]), np.concatenate([a.logsumexp, b.logsumexp]), a.seconds + b.seconds,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predictions(
    clf: Classifier,
    data: EvalData,
    max_images: int | None = None,
    *,
    batch_size: int = 32,
    cache: LogitCache | None = None,
) -> Predictions:
    """Outputs of ``clf`` on the first ``max_images`` images of ``data`` (cached)."""
    return (cache or LogitCache()).get(clf, data, data.indices(max_images), batch_size)


# -- masking and cells -----------------------------------------------------------------


def channel_mean(pixels: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean ``[B, C, 1, 1]``: the value masked regions get."""
    return pixels.mean(dim=(-2, -1), keepdim=True)


def cell_sums(maps: torch.Tensor, cell: int) -> torch.Tensor:
    """Sum ``[B, (C,) H, W]`` maps over channels and ``cell x cell`` grid-aligned cells.

    Returns ``[B, H // cell, W // cell]``; pixels beyond the last whole cell are ignored.
    """
    if maps.dim() == 4:
        maps = maps.sum(1)
    b, h, w = maps.shape
    gh, gw = h // cell, w // cell
    if gh == 0 or gw == 0:
        raise ValueError(f"image is {h}x{w} pixels, smaller than one {cell}x{cell} cell")
    return maps[:, : gh * cell, : gw * cell].reshape(b, gh, cell, gw, cell).sum(dim=(2, 4))


# -- numbers and files -----------------------------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long vectors (NaN when either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally long inputs, got {a.size} and {b.size}")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def nan_if_none(v: float | None) -> float:
    """JSON stores NaN as null; plots want NaN back."""
    return float("nan") if v is None else float(v)


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (dataclasses, numpy values allowed; NaN becomes null) atomically."""
    return write_text(path, json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def new_figure(ncols: int = 1, nrows: int = 1, *, size: tuple[float, float] = (4.5, 3.4), squeeze: bool = True):
    """A pyplot-free figure (no GUI backend, nothing to close) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def panel_grid(n: int, size: tuple[float, float], max_cols: int = 3):
    """A figure with ``n`` panels in rows of up to ``max_cols``; returns ``(fig, axes[:n])``."""
    cols = max(1, min(max_cols, n))
    fig, axes = new_figure(cols, max(1, math.ceil(n / cols)), size=size, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def write_result(out_dir: str | os.PathLike, stem: str, experiment: str, payload: dict, fig,
                 meta: dict | None = None) -> dict[str, Path]:
    """``STEM.png`` then ``STEM.json`` (``experiment``, ``meta`` and the payload) in ``out_dir``.

    The JSON is written last: its presence marks the step as finished.
    """
    out = Path(out_dir)
    return {
        "png": save_figure(fig, out / f"{stem}.png"),
        "json": write_json({"experiment": experiment, "meta": meta or {}, **payload}, out / f"{stem}.json"),
    }


def aligned_predictions(
    models: Sequence[Classifier], data: EvalData, max_images: int | None, *, batch_size: int, cache: LogitCache | None
) -> dict[str, Predictions]:
    """Outputs of every model on the same images (those all of them could read), in one order."""
    cache = cache or LogitCache()
    preds = {m.label: predictions(m, data, max_images, batch_size=batch_size, cache=cache) for m in models}
    common = set.intersection(*(set(p.indices.tolist()) for p in preds.values()))
    order = [int(i) for i in data.indices(max_images) if int(i) in common]
    return {k: p.take(order) for k, p in preds.items()}


def progress(iterable, desc: str | None, total: int | None = None):
    """tqdm when a description is given and progress is on (``BAGNET_PROGRESS=0`` turns it off)."""
    if desc is None or os.environ.get("BAGNET_PROGRESS", "1") == "0":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
