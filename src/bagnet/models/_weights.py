"""Weight files: the registry of named weights, reading every file bagnet can load, and
writing model files.

A *bagnet model file* is a ``torch.save``d dict::

    {"format": "bagnet-model/1", "model": NAME, "model_args": {...},
     "state_dict": {...}, "meta": {"classes": [...], "mean": [...], "std": [...],
                                   "img_size": int, "metrics": {...}, ...}}

``bagnet train`` writes one (``model.pt``) and training checkpoints (``last.pt``,
``best.pt``, format ``bagnet-train/1``), which name their model too; a run folder stands
for its ``model.pt``. Published checkpoints are plain state dicts; wrapped ones
(``state_dict``/``model``) and ones with ``module.``/``_orig_mod.`` prefixes (DDP,
``torch.compile``) load too. Every file is read with ``torch.load(weights_only=True)``:
loading never runs code from a file. :func:`read_weights` is the one place that reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .._io import atomic_path, atomic_save
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
from ._pretrained import is_model_location, read_pretrained, read_safetensors

logger = logging.getLogger(__name__)

MODEL_FILE_FORMAT = "bagnet-model/1"
# Written by bagnet.train.checkpoint (last.pt, best.pt of a run).
TRAINING_CHECKPOINT_FORMAT = "bagnet-train/1"

_PUBLISHED_ROOT = (
    "https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
    "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/"
)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a named weight comes from, its hash, and what it was trained on.

    ``sha256`` is a prefix (8 or more hex digits) of the file's SHA-256; every load of the
    weights checks it, whether the file is downloaded, shipped or given by the user.
    """

    url: str | None = None
    file: str | None = None  # inside the package's ``weights/`` folder
    sha256: str | None = None
    dataset: str = "imagenet"
    img_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    metrics: dict[str, float] = field(default_factory=dict)
    num_classes: int = 1000
    # How the metrics were measured: preprocessing, data split, scoring, command, and what
    # (if anything) was chosen on that split. Shipped files: from weights/metrics.json.
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.file or os.path.basename(urlparse(self.url or "").path)


METRICS_FILE = "metrics.json"


@lru_cache(maxsize=1)
def shipped_metrics() -> dict[str, dict[str, Any]]:
    """``bagnet/weights/metrics.json``: the one place the measured accuracy of every shipped
    model lives (``{"NAME-TAG": {"top1", "top5", "preprocessing", "split", "selection",
    "command", ...}}``), written by ``tools/package_model.py`` from a ``bagnet eval --json``
    report. The registry, the model files' ``pretrained_cfg``, ``bagnet models``, the Hub
    card, the model cards and the README take the numbers from here or are checked
    against it by the tests."""
    path = resources.files("bagnet.weights").joinpath(METRICS_FILE)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _shipped(name: str, tag: str, file: str, **kwargs: Any) -> PretrainedCfg:
    """A shipped file's registry entry, its metrics and their provenance from metrics.json."""
    entry = dict(shipped_metrics().get(f"{name}-{tag}", {}))
    metrics = {k: float(entry.pop(k)) for k in ("top1", "top5") if k in entry}
    sha = re.search(r"-([a-f0-9]{8,})\.", file)
    return PretrainedCfg(file=file, sha256=sha.group(1) if sha else None, metrics=metrics, evaluation=entry, **kwargs)


# (model name, tag) -> config. Published metrics are the paper's (ImageNet val, 224 px).
_PRETRAINED: dict[tuple[str, str], PretrainedCfg] = {
    ("bagnet9", "imagenet"): PretrainedCfg(url=_PUBLISHED_ROOT + "bagnet8-34f4ccd2.pth.tar", sha256="34f4ccd2"),
    ("bagnet17", "imagenet"): PretrainedCfg(
        url=_PUBLISHED_ROOT + "bagnet16-105524de.pth.tar", sha256="105524de", metrics={"top5": 80.5}
    ),
    ("bagnet33", "imagenet"): PretrainedCfg(
        url=_PUBLISHED_ROOT + "bagnet32-2ddd53ed.pth.tar", sha256="2ddd53ed", metrics={"top5": 87.6}
    ),
    # The default model, shipped (docs/models/bagnet33_w25-imagenette.md is its model card).
    ("bagnet33_w25", "imagenette"): _shipped(
        "bagnet33_w25", "imagenette", "bagnet33_w25-imagenette-51a3e482.pt",
        dataset="imagenette", img_size=192, num_classes=10,
    ),
    # The earlier default, shipped too: docs/ROBUSTNESS.md's measurements and the slim
    # BagNet-9/17/33 comparison use it (docs/models/bagnet17_slim-imagenette.md).
    ("bagnet17_slim", "imagenette"): _shipped(
        "bagnet17_slim", "imagenette", "bagnet17_slim-imagenette-26d3f162.pt",
        dataset="imagenette", img_size=112, num_classes=10,
    ),
}

# A tag that several models share names this one of them when given alone
# (``--weights imagenet``: the most accurate published BagNet). The default model
# (``bagnet.models.DEFAULT_MODEL``) wins for its own tag.
_TAG_MODEL = {"imagenet": "bagnet33"}

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
_PREFIXES = ("module.", "_orig_mod.")


def pretrained_cfg(name: str, tag: str) -> PretrainedCfg | None:
    """The registered weights ``tag`` of model ``name``, if any."""
    return _PRETRAINED.get((name, tag))


def pretrained_tags(name: str) -> list[str]:
    """Tags of the weights registered for model ``name``."""
    return [t for (n, t) in _PRETRAINED if n == name]


def registered_tags() -> list[str]:
    """Every registered tag, sorted."""
    return sorted({t for (_, t) in _PRETRAINED})


def models_with_tag(tag: str) -> list[str]:
    """Models that have weights registered under ``tag``, in registration order."""
    return [n for (n, t) in _PRETRAINED if t == tag]


def model_for_tag(tag: str, default: str | None = None) -> str:
    """The model a tag names when it is given alone (``--weights imagenette``).

    Args:
        tag: a registered tag.
        default: the default model's name; it wins where it has the tag.

    Raises:
        ValueError: no model, or several without a preferred one, has the tag.
    """
    names = models_with_tag(tag)
    if not names:
        raise ValueError(f"{tag!r} is not a registered tag; registered: {', '.join(registered_tags())}")
    if len(names) == 1:
        return names[0]
    for preferred in (default, _TAG_MODEL.get(tag)):
        if preferred in names:
            return preferred
    raise ValueError(f"weights {tag!r} are registered for {', '.join(names)}; name the model")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model; nothing was loaded."""


def clean_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``model`` containers and strip DDP/compile prefixes."""
    sd = checkpoint
    for key in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointMismatchError("the file holds no state dict (a mapping of parameter names to tensors)")
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load all of ``state_dict`` or nothing, naming every missing, extra and mis-shaped key."""
    own = model.state_dict()
    state_dict = dict(state_dict)
    # Checkpoints saved before BatchNorm counted its batches lack these counters.
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state_dict:
            state_dict[k] = torch.zeros_like(own[k])
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointMismatchError("checkpoint does not fit the model, nothing was loaded; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def hash_in_name(filename: str) -> str | None:
    """The SHA-256 prefix a file name carries by torch hub's convention (``NAME-<hex>.EXT``)."""
    m = _HASH_IN_NAME.search(os.path.basename(filename))
    return m.group(1) if m else None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str, what: str, remedy: str) -> None:
    """Raise a ``ValueError`` unless the SHA-256 of ``path`` starts with ``expected``.

    The message names the file, ``what`` it should be, the expected and actual hash, and
    ``remedy`` (what to do).
    """
    actual = file_sha256(path)
    if not actual.startswith(expected.lower()):
        raise ValueError(
            f"{path} is not {what}: its SHA-256 starts with {actual[: len(expected)]}, expected {expected}; {remedy}"
        )


def is_url(source: str) -> bool:
    return urlparse(str(source)).scheme in ("http", "https", "file", "ftp")


def cached_path(url: str) -> Path:
    """Where :func:`fetch` keeps the download of ``url`` (torch hub's checkpoint cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch(url: str, *, sha256: str | None = None, check_hash: bool = False) -> Path:
    """Download ``url`` into the torch hub cache once, with a progress bar on a terminal.

    Args:
        url: the file to download.
        sha256: prefix of its SHA-256 (registered weights); checked on download.
        check_hash: check the SHA-256 prefix the file name carries (``NAME-<hex>.EXT``).

    Raises:
        ValueError: the download does not match its hash (nothing is cached then).
        OSError: the download failed.
    """
    dst = cached_path(url)
    if check_hash and sha256 is None:
        sha256 = hash_in_name(dst.name)
        if sha256 is None:
            raise ValueError(f"check_hash: the file name of {url} carries no hash (NAME-<8+ hex digits>.EXT)")
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    if not progress:
        logger.info("downloading %s to %s", url, dst)
    try:
        # torch writes to a temporary file and renames it only once the hash matched.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256, progress=progress)
    except RuntimeError as e:  # torch's hash mismatch
        raise ValueError(
            f"the download of {url} does not match its hash ({e}); it was not kept. Try again; if it keeps "
            f"failing the file at that address changed: download it yourself and pass it as a local file"
        ) from None
    except OSError as e:
        raise OSError(f"could not download {url}: {e}. Download it elsewhere and copy it to {dst}") from None
    return dst


def packaged_file(filename: str, sha256: str | None = None) -> Path:
    """A model file shipped in ``bagnet/weights``, checked against its hash."""
    path = Path(str(resources.files("bagnet.weights").joinpath(filename)))
    if not path.is_file():
        raise FileNotFoundError(f"the packaged weight file {filename} is missing; reinstall bagnet")
    expected = sha256 or hash_in_name(filename)
    if expected:
        check_sha256(path, expected, f"the shipped {filename}", "reinstall bagnet")
    return path


def registered_file(name: str, tag: str, file: str | os.PathLike | None = None) -> Path:
    """The local file of the registered weights ``name``/``tag``, hash-checked.

    ``file`` is a copy the user obtained elsewhere; otherwise the shipped file, or the
    download (cached once).
    """
    cfg = pretrained_cfg(name, tag)
    if cfg is None:
        raise ValueError(f"no weights {tag!r} are registered for {name}; registered: {pretrained_tags(name) or 'none'}")
    expected = cfg.sha256 or hash_in_name(cfg.filename)
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--weights-file {path} does not exist")
        if expected:
            where = cfg.url or f"bagnet's package ({cfg.file})"
            check_sha256(path, expected, f"the registered {tag!r} weights of {name} ({cfg.filename})",
                         f"download {where} again, or load it as an unregistered checkpoint (a path, no tag)")
        return path
    if cfg.file is not None:
        return packaged_file(cfg.file, expected)
    try:
        return fetch(cfg.url, sha256=expected)
    except OSError as e:
        raise OSError(f"{e}; with a copy of the file, pass it as --weights-file PATH (file=PATH in Python)") from None


def is_downloaded(name: str, tag: str) -> bool:
    """Whether the registered weights ``name``/``tag`` are shipped or already in the torch
    hub cache (nothing is downloaded or read to answer)."""
    cfg = pretrained_cfg(name, tag)
    if cfg is None:
        return False
    if cfg.file is not None:
        return Path(str(resources.files("bagnet.weights").joinpath(cfg.file))).is_file()
    return cached_path(cfg.url).is_file()


# -- reading weight files --------------------------------------------------------------


@dataclass
class WeightFile:
    """What a weight file holds, whatever its format.

    Attributes:
        state_dict: parameter name -> tensor, unwrapped and without DDP/compile prefixes.
        model: the model name the file records (``None`` for a plain state dict).
        model_args: constructor arguments the file records.
        meta: class names, normalization, image size, metrics, ... the file records.
        path: the local file read.
        kind: ``"model file"``, ``"training checkpoint"`` or ``"state dict"``.
    """

    state_dict: dict[str, torch.Tensor]
    model: str | None
    model_args: dict[str, Any]
    meta: dict[str, Any]
    path: Path
    kind: str


def local_path(source: str | os.PathLike) -> Path:
    """The file ``source`` names: itself, or for a run folder of ``bagnet train`` its
    ``model.pt`` (else ``last.pt``).

    Raises:
        FileNotFoundError: no such file, or a folder without a model file, said as such.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("model.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} is a folder without model.pt or last.pt, nor a model folder (config.json and "
            "model.safetensors); pass a weight file, or the folder of a `bagnet train` run once it has "
            "finished an epoch"
        )
    if not path.exists():
        parent = path.parent
        hint = "" if parent.is_dir() else f" (nor does its folder {parent})"
        raise FileNotFoundError(f"weight file {path} does not exist{hint}")
    return path


def read_checkpoint(source: str | os.PathLike, *, check_hash: bool = False) -> Any:
    """The raw object ``torch.load(weights_only=True)`` gives for a file, run folder or URL."""
    source = os.fspath(source)
    path = fetch(source, check_hash=check_hash) if is_url(source) else local_path(source)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def read_weights(source: str | os.PathLike, *, check_hash: bool = False) -> WeightFile:
    """Read any weight file bagnet loads: model files, training checkpoints, state dicts,
    model folders (``model.safetensors`` + ``config.json``, see :mod:`._pretrained`).

    Args:
        source: a path, a run folder (its ``model.pt``, else ``last.pt``), a model folder,
            a ``.safetensors`` file, ``hf-hub:ORG/NAME`` or a URL.
        check_hash: for a URL, check the SHA-256 prefix its file name carries.

    A training checkpoint gives its EMA weights when the run kept an EMA (the weights the
    run evaluated and shipped as ``model.pt``), else its model weights.
    """
    source = os.fspath(source)
    if is_model_location(source):  # a model folder, .safetensors file or hf-hub:ORG/NAME
        return _read_folder(source)
    path = cached_path(source) if is_url(source) else local_path(source)
    checkpoint = read_checkpoint(source, check_hash=check_hash)
    fmt = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if fmt == MODEL_FILE_FORMAT:
        return WeightFile(clean_state_dict(checkpoint["state_dict"]), checkpoint.get("model"),
                          dict(checkpoint.get("model_args") or {}), dict(checkpoint.get("meta") or {}), path,
                          "model file")
    if fmt == TRAINING_CHECKPOINT_FORMAT:
        config = checkpoint.get("config") or {}
        meta = {"img_size": config.get("img_size"), "classes": checkpoint.get("classes"),
                **(checkpoint.get("meta") or {})}
        meta["epoch"] = checkpoint.get("epoch")
        ema = checkpoint.get("ema")
        if ema:  # torch's AveragedModel: the model under "module.", plus its counters
            state = {k: v for k, v in ema.items() if k.startswith("module.")}
            meta["weights"] = "ema"
        else:
            state = checkpoint["model"]
        return WeightFile(clean_state_dict(state), checkpoint.get("model_name"),
                          dict(checkpoint.get("model_args") or {}), {k: v for k, v in meta.items() if v is not None},
                          path, "training checkpoint")
    if isinstance(fmt, str) and fmt.startswith("bagnet-"):
        raise ValueError(f"{path} is a {fmt} file, which this version of bagnet cannot read; update bagnet")
    return WeightFile(clean_state_dict(checkpoint), None, {}, {}, path, "state dict")


def _read_folder(source: str) -> WeightFile:
    folder = read_pretrained(source)
    if folder.weights.suffix == ".safetensors":
        state = read_safetensors(folder.weights)
    else:  # pytorch_model.bin of a timm repo: unpickled with weights_only=True like every file
        state = read_checkpoint(folder.weights)
    kind = "safetensors file" if folder.name is None else "model folder"
    return WeightFile(clean_state_dict(state), folder.name, folder.model_args, folder.meta, folder.weights, kind)


def model_file_info(checkpoint: Any) -> tuple[str | None, dict, dict]:
    """(model name, constructor kwargs, meta) of a bagnet model file; (None, {}, {}) otherwise."""
    if isinstance(checkpoint, dict) and checkpoint.get("format") == MODEL_FILE_FORMAT:
        return checkpoint.get("model"), dict(checkpoint.get("model_args") or {}), dict(checkpoint.get("meta") or {})
    return None, {}, {}


def install_in_cache(path: Path, url: str) -> Path:
    """Copy a verified local file to where a download of ``url`` would be cached."""
    dst = cached_path(url)
    if not dst.exists():
        with atomic_path(dst) as tmp:
            shutil.copyfile(path, tmp)
    return dst


# -- writing model files ------------------------------------------------------------------


def save_model_file(path: str | os.PathLike, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model`` with its name, constructor arguments and ``meta`` atomically."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("model was not made by bagnet.create_model, so its name is unknown")
    meta = {**getattr(model, "pretrained_cfg", {}), **(meta or {})}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    obj = {
        "format": MODEL_FILE_FORMAT,
        "model": name,
        "model_args": dict(getattr(model, "model_args", {})),
        "state_dict": state,
        "meta": meta,
    }
    return atomic_save(obj, path)


def meta_of(cfg: PretrainedCfg) -> dict:
    """Meta dict of a registered ImageNet weight (packaged model files carry their own)."""
    return {
        "dataset": cfg.dataset,
        "classes": list(imagenet_classes()),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "img_size": cfg.img_size,
        "metrics": dict(cfg.metrics),
    }
