"""Model folders without pickle, the same layout as a Hugging Face model repo.

``save_pretrained(model, DIR)`` writes::

    DIR/model.safetensors   the state dict (safetensors: tensors only, no code)
    DIR/config.json         what the weights are: see below

``config.json`` is a timm hub config (``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg`` with input size, mean/std, crop and classifier name, ``label_names``)
plus a ``"bagnet"`` section with everything bagnet's model files carry: model name and
arguments, receptive field, patch stride, classes and their display names, mean/std,
image size, the training command and metrics. So a folder pushed to the Hub loads with
``bagnet.create_model("hf-hub:ORG/NAME")`` and, after ``import bagnet``, with
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``.

Reading a folder gives the same dict as reading a ``.pt`` bagnet model file, so every
loader (``create_model``, ``load_model``, ``--weights``) takes both.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path, write_text

__all__ = [
    "HUB_PREFIX",
    "PretrainedFolder",
    "hub_snapshot",
    "is_model_location",
    "push_to_hub",
    "read_pretrained",
    "read_safetensors",
    "save_pretrained",
    "timm_data_config",
]

HUB_PREFIX = "hf-hub:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_FORMAT = "bagnet-pretrained/1"
# timm's name for pytorch weights in a hub repo; read (weights_only) when there is no safetensors file
_TORCH_WEIGHTS_NAME = "pytorch_model.bin"
PAPER = "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet"
PAPER_ID = "arXiv:1904.00760"
ORIGIN = "https://github.com/wielandbrendel/bag-of-local-features-models"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# keys of a model's pretrained_cfg that describe where it was loaded from or are timm's
# restatement of the others; they are not metadata of the weights
_NOT_META = {"source", "tag", "architecture", "input_size", "min_input_size", "fixed_input_size", "interpolation",
             "crop_pct", "crop_mode", "num_classes", "label_names", "label_descriptions", "pool_size", "first_conv",
             "classifier", "paper_name", "paper_ids", "origin_url", "bagnet_crop_pct"}


def timm_data_config(model: nn.Module, meta: dict | None = None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` keys for a BagNet built by :func:`bagnet.create_model`.

    The preprocessing is the model's own (:class:`bagnet.data.transforms.Preprocessing`):
    bagnet's models take the whole image with its short side resized to ``img_size``,
    which timm spells ``crop_pct=1.0``, ``crop_mode="center"``, bilinear. timm always makes
    a square input, so for an image that is not square timm's pipeline keeps the central
    square where bagnet keeps the whole image; for square images the two agree.

    Args:
        model: the model; its ``pretrained_cfg`` gives image size, mean/std and classes.
        meta: metadata that overrides the model's (what :func:`save_pretrained` writes).
    """
    from ..data.transforms import Preprocessing

    cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **(meta or {})}
    in_chans = int(getattr(model, "in_chans", 3))
    pre = Preprocessing.from_cfg(cfg)
    size = pre.img_size
    q = int(model.receptive_field)
    classes = cfg.get("classes")
    names = cfg.get("class_names")
    described = bool(classes and names and len(names) == len(classes) and list(names) != list(classes))
    return {
        "architecture": getattr(model, "model_name", None),
        "input_size": (in_chans, size, size),
        "min_input_size": (in_chans, q, q),
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": pre.crop_pct if pre.crop_pct is not None else 1.0,
        "crop_mode": "center",
        # bagnet's own crop (None: the whole image), which Preprocessing.from_cfg reads first
        "bagnet_crop_pct": pre.crop_pct,
        "mean": pre.mean,
        "std": pre.std,
        "num_classes": int(model.num_classes),
        "label_names": tuple(classes) if classes else None,
        "label_descriptions": dict(zip(classes, names)) if described else None,
        "pool_size": None,
        "first_conv": "conv1",
        "classifier": "fc",
        "paper_name": PAPER,
        "paper_ids": PAPER_ID,
        "origin_url": ORIGIN,
    }


def is_model_location(source: str | os.PathLike) -> bool:
    """True for ``hf-hub:ORG/NAME``, a ``.safetensors`` file, or a folder with a model's
    ``config.json`` or weights (not a run folder of ``bagnet train``, which holds ``model.pt``)."""
    s = os.fspath(source)
    if s.startswith(HUB_PREFIX) or s.endswith(".safetensors"):
        return True
    path = Path(s).expanduser()
    if not path.is_dir() or any((path / n).is_file() for n in ("model.pt", "last.pt")):
        return False
    return any((path / n).is_file() for n in (CONFIG_NAME, WEIGHTS_NAME, _TORCH_WEIGHTS_NAME))


def save_pretrained(model: nn.Module, directory: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` as ``model.safetensors`` + ``config.json`` into ``directory``.

    Args:
        model: a model made by :func:`bagnet.create_model` (its name, arguments and
            ``pretrained_cfg`` are stored).
        directory: created if needed; the two files in it are replaced, weights first,
            each atomically. Other files are left alone.
        meta: more metadata for the ``"bagnet"`` section (e.g. ``metrics``, ``command``).

    Returns:
        ``directory``.

    Raises:
        ValueError: the model's name is unknown, or its metadata is not JSON.
        TypeError: a fused BagNet (save the model it was fused from).
    """
    from safetensors.torch import save_file

    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("model was not made by bagnet.create_model, so its name is unknown")
    from ._fuse import FusedBagNet

    if isinstance(model, FusedBagNet):
        raise TypeError("a fused BagNet cannot be saved (its weights are folded); save the model it was fused from")
    config = _config(model, meta)
    text = json.dumps(config, indent=2) + "\n"  # fails before anything is written if meta is not JSON
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_text(directory / CONFIG_NAME, text)
    return directory


def _config(model: nn.Module, meta: dict | None) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    stored = {k: v for k, v in cfg.items() if k not in _NOT_META and v is not None}
    stored.update(meta or {})
    # timm's input size and labels follow the metadata written, as bagnet's loader reads them
    timm_cfg = timm_data_config(model, meta) if hasattr(model, "receptive_field") else {}
    label_names = timm_cfg.pop("label_names", None)
    label_descriptions = timm_cfg.pop("label_descriptions", None)
    timm_cfg.pop("architecture", None)
    timm_cfg.pop("bagnet_crop_pct", None)  # not a timm key; bagnet's crop is in the metadata
    config: dict[str, Any] = {
        "architecture": model.model_name,
        "num_classes": int(getattr(model, "num_classes", 0)),
        "num_features": getattr(model, "num_features", None),
        "global_pool": "avg",
        "model_args": dict(getattr(model, "model_args", None) or {}),
        "pretrained_cfg": {k: v for k, v in timm_cfg.items() if v is not None},
    }
    if label_names:
        config["label_names"] = list(label_names)
    if label_descriptions:
        config["label_descriptions"] = label_descriptions
    config["bagnet"] = {
        "format": CONFIG_FORMAT,
        "model": model.model_name,
        "model_args": config["model_args"],
        **({"receptive_field": int(model.receptive_field), "patch_stride": int(model.patch_stride)}
           if hasattr(model, "receptive_field") else {}),
        "meta": stored,
    }
    return config


@dataclass(frozen=True)
class PretrainedFolder:
    """What a model folder (or a lone ``.safetensors`` file) holds."""

    weights: Path  # model.safetensors, or pytorch_model.bin (read with weights_only=True)
    name: str | None = None  # None: a bare weight file without config.json
    model_args: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def read_pretrained(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> PretrainedFolder:
    """Locate and read the config of a model folder, ``hf-hub:ORG/NAME`` or ``.safetensors``
    file (the weights are read by the loader: :func:`read_safetensors`, or ``torch.load``
    with ``weights_only=True`` for ``pytorch_model.bin``)."""
    s = os.fspath(source)
    path = hub_snapshot(s, cache_dir=cache_dir) if s.startswith(HUB_PREFIX) else Path(s).expanduser()
    if path.is_file():  # a .safetensors file: the folder's config.json, if any, describes it
        weights, config_path = path, path.parent / CONFIG_NAME
        if not config_path.is_file():
            return PretrainedFolder(weights)
    elif path.is_dir():
        config_path = path / CONFIG_NAME
        weights = path / WEIGHTS_NAME
        if not weights.is_file() and (path / _TORCH_WEIGHTS_NAME).is_file():
            weights = path / _TORCH_WEIGHTS_NAME
        if not config_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not a model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    else:
        raise FileNotFoundError(f"weight file or model folder {path} does not exist")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path} is not a readable model config ({e})") from None
    name, args, meta = _parse_config(config, config_path)
    return PretrainedFolder(weights, name, args, meta)


def _parse_config(config: Any, where: Path) -> tuple[str, dict, dict]:
    if not isinstance(config, dict) or not isinstance(config.get("architecture", config.get("bagnet")), (str, dict)):
        raise ValueError(f"{where} names no model architecture")
    section = config.get("bagnet")
    if isinstance(section, dict):
        if section.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{where} is in format {section.get('format')!r}; this bagnet reads {CONFIG_FORMAT}")
        return str(section["model"]), dict(section.get("model_args") or {}), dict(section.get("meta") or {})
    # a timm hub config (e.g. written by timm.models.push_to_hf_hub for a BagNet)
    cfg = dict(config.get("pretrained_cfg") or {})
    meta: dict[str, Any] = {}
    for key in ("mean", "std"):
        if key in cfg:
            meta[key] = list(cfg[key])
    if cfg.get("input_size"):
        meta["img_size"] = int(cfg["input_size"][-1])
    labels = config.get("label_names", cfg.get("label_names"))
    if isinstance(labels, list):
        meta["classes"] = [str(c) for c in labels]
        descriptions = config.get("label_descriptions", cfg.get("label_descriptions"))
        if isinstance(descriptions, dict):
            meta["class_names"] = [str(descriptions.get(c, c)) for c in meta["classes"]]
    args = dict(config.get("model_args") or {})
    if "num_classes" in config:
        args.setdefault("num_classes", int(config["num_classes"]))
    return str(config["architecture"]), args, meta


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def hub_snapshot(source: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or find in the Hugging Face cache) ``config.json`` and the weights of
    ``hf-hub:ORG/NAME``; returns the local snapshot folder holding them.

    Honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` as huggingface_hub does.
    """
    repo_id = source.removeprefix(HUB_PREFIX)
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{source!r} is not a Hugging Face model id; use hf-hub:ORG/NAME")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ImportError(f"loading {source} needs huggingface_hub: pip install 'bagnet[hub]'") from None
    kwargs = {"repo_id": repo_id, "cache_dir": os.fspath(cache_dir) if cache_dir is not None else None}
    try:
        config = Path(hf_hub_download(filename=CONFIG_NAME, **kwargs))
        missing = None
        for filename in (WEIGHTS_NAME, _TORCH_WEIGHTS_NAME):
            try:
                hf_hub_download(filename=filename, **kwargs)
                break
            except EntryNotFoundError as e:  # also "not in the cache" when offline
                missing = missing or e
        else:
            raise missing
    # LocalEntryNotFoundError is an EntryNotFoundError: it must be handled first
    except LocalEntryNotFoundError:
        raise OSError(f"{source} is not in the Hugging Face cache and the Hub cannot be reached "
                      "(offline or HF_HUB_OFFLINE=1)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{source}: no such model repo on the Hugging Face Hub (or it is private: set HF_TOKEN)") \
            from None
    except EntryNotFoundError as e:
        raise ValueError(f"{source} holds no {CONFIG_NAME} and {WEIGHTS_NAME}, so it is not a bagnet or timm "
                         f"model repo ({type(e).__name__})") from None
    return config.parent


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    meta: dict | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload BagNet",
    revision: str | None = None,
    api: Any = None,
) -> Any:
    """Upload ``model`` as a Hugging Face model repo (``save_pretrained``'s two files and
    a model card); ``bagnet.create_model("hf-hub:" + repo_id)`` loads it back.

    Args:
        model: a model made by :func:`bagnet.create_model`.
        repo_id: ``ORG/NAME``; created if it does not exist.
        meta: more metadata for ``config.json`` (see :func:`save_pretrained`).
        private: visibility of a newly created repo.
        token: Hub token (default: huggingface_hub's, e.g. ``HF_TOKEN``).
        commit_message: of the upload commit.
        revision: branch to upload to.
        api: a ``huggingface_hub.HfApi`` (default: a new one with ``token``).

    Returns:
        huggingface_hub's commit info.
    """
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repo id; use ORG/NAME")
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise ImportError("push_to_hub needs huggingface_hub: pip install 'bagnet[hub]'") from None
        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="bagnet-push-") as tmp:
        save_pretrained(model, tmp, meta)
        (Path(tmp) / "README.md").write_text(_model_card(model, repo_id), encoding="utf-8")
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                                 commit_message=commit_message, revision=revision)


def _model_card(model: nn.Module, repo_id: str) -> str:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    lines = [
        "---",
        "library_name: bagnet",
        "tags: [image-classification, bagnet, timm]",
        "---",
        f"# {model.model_name}",
        "",
        "A bag-of-local-features network (BagNet; Brendel & Bethge, ICLR 2019): every class",
        "score is the mean of the class evidence of its image patches.",
        "",
        "```python",
        "import bagnet",
        f'model = bagnet.create_model("hf-hub:{repo_id}")',
        "```",
        "",
    ]
    if hasattr(model, "receptive_field"):
        lines.append(f"- patch size {model.receptive_field} px, stride {model.patch_stride} px")
    if cfg.get("img_size"):
        lines.append(f"- input size {cfg['img_size']} px")
    if cfg.get("dataset"):
        lines.append(f"- trained on {cfg['dataset']}")
    metrics = cfg.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if k in ("top1", "top5") and isinstance(v, (int, float))}
    if shown:
        evaluation = cfg.get("evaluation") or {}
        where = f" on {evaluation['images']} images of {evaluation['data']}" if evaluation.get("data") else ""
        lines.append("- " + " / ".join(f"{k.replace('top', 'top-')} {v:.2f}%" for k, v in shown.items()) + where)
        for key in ("preprocessing", "scoring", "selection", "command"):
            if evaluation.get(key):
                lines.append(f"  - {key}: {evaluation[key]}")
    return "\n".join(lines) + "\n"
