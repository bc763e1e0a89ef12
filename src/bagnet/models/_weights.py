"""Weight files: published checkpoints, bagnet model files, and one filter for both.

A *bagnet model file* is a ``torch.save``d dict::

    {"format": "bagnet-model/1", "model": NAME, "model_args": {...},
     "state_dict": {...}, "meta": {"classes": [...], "mean": [...], "std": [...],
                                   "img_size": int, "metrics": {...}, ...}}

Published checkpoints are plain state dicts; wrapped ones (``state_dict``/``model``)
and ones with ``module.``/``_orig_mod.`` prefixes (DDP, ``torch.compile``) load too.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .._io import atomic_save
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes

MODEL_FILE_FORMAT = "bagnet-model/1"

_PUBLISHED_ROOT = (
    "https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
    "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/"
)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a named weight comes from and what it was trained on."""

    url: str | None = None
    file: str | None = None  # inside the package's ``weights/`` folder
    dataset: str = "imagenet"
    img_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    metrics: dict[str, float] = field(default_factory=dict)
    num_classes: int = 1000


# (model name, tag) -> config. Published metrics are the paper's (ImageNet val, 224 px).
_PRETRAINED: dict[tuple[str, str], PretrainedCfg] = {
    ("bagnet9", "imagenet"): PretrainedCfg(
        url=_PUBLISHED_ROOT + "bagnet8-34f4ccd2.pth.tar"
    ),
    ("bagnet17", "imagenet"): PretrainedCfg(
        url=_PUBLISHED_ROOT + "bagnet16-105524de.pth.tar", metrics={"top5": 80.5}
    ),
    ("bagnet33", "imagenet"): PretrainedCfg(
        url=_PUBLISHED_ROOT + "bagnet32-2ddd53ed.pth.tar", metrics={"top5": 87.6}
    ),
    # Shipped with the package (docs/models/bagnet17_slim-imagenette.md is its model card).
    ("bagnet17_slim", "imagenette"): PretrainedCfg(
        file="bagnet17_slim-imagenette-cea5e27d.pt",
        dataset="imagenette",
        img_size=112,
        num_classes=10,
        metrics={"top1": 67.29, "top5": 95.75},
    ),
}

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model; nothing was loaded."""


def pretrained_cfg(name: str, tag: str) -> PretrainedCfg | None:
    return _PRETRAINED.get((name, tag))


def pretrained_tags(name: str) -> list[str]:
    return [t for (n, t) in _PRETRAINED if n == name]


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


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https", "file", "ftp")


def fetch(url: str) -> Path:
    """Download ``url`` into the torch hub cache once; check a hash prefix in its name."""
    filename = os.path.basename(urlparse(url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / filename
    if not dst.exists():
        m = _HASH_IN_NAME.search(filename)
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=m.group(1) if m else None, progress=False)
        except RuntimeError as e:
            raise ValueError(f"download of {url} failed its hash check: {e}") from None
        except OSError as e:
            raise OSError(f"could not download {url}: {e}. Copy the file to {dst} to use it offline.") from None
    return dst


def packaged_file(filename: str) -> Path:
    """A model file shipped in ``bagnet/weights``, checked against the hash in its name."""
    path = Path(str(resources.files("bagnet.weights").joinpath(filename)))
    if not path.is_file():
        raise FileNotFoundError(f"the packaged weight file {filename} is missing; reinstall bagnet")
    m = _HASH_IN_NAME.search(filename)
    if m and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(m.group(1)):
        raise ValueError(f"the packaged weight file {path} is corrupt (hash mismatch); reinstall bagnet")
    return path


def read_checkpoint(source: str | os.PathLike) -> dict[str, Any]:
    """Read a weight file or URL; returns the raw object ``torch.load`` gives."""
    source = str(source)
    path = fetch(source) if _is_url(source) else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def model_file_info(checkpoint: Any) -> tuple[str | None, dict, dict]:
    """(model name, constructor kwargs, meta) of a bagnet model file; (None, {}, {}) otherwise."""
    if isinstance(checkpoint, dict) and checkpoint.get("format") == MODEL_FILE_FORMAT:
        return checkpoint.get("model"), dict(checkpoint.get("model_args") or {}), dict(checkpoint.get("meta") or {})
    return None, {}, {}


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
