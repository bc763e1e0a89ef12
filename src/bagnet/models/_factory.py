"""``create_model`` and ``load_model``: the one loader of every model and weight file.

Registered BagNets and torchvision classifiers, random or with weights: a registered tag
(hash-checked, from the package, the download cache, or a file the user supplies), a
bagnet model file, a training checkpoint, a run folder, a (wrapped) state dict, or a URL.
Training, evaluation, benchmarks, analyses, the demo and the server all load through here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
from ._pretrained import is_model_location
from ._registry import get_model_fn, list_models
from ._weights import (
    CheckpointMismatchError,
    WeightFile,
    hash_in_name,
    install_in_cache,
    is_downloaded,
    load_state_dict_strict,
    meta_of,
    model_for_tag,
    models_with_tag,
    pretrained_cfg,
    pretrained_tags,
    read_weights,
    registered_file,
    registered_tags,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "IMAGENET_MODEL", "UnnamedWeightsError", "create_model", "default_model", "load_model"]

# The model that `bagnet demo`, `serve`, `explain` and `eval` use when given no model
# options: (name, registered tag). Swapping the default is a change of this line.
DEFAULT_MODEL = ("bagnet33_w25", "imagenette")
# The published model they use instead when its weights are already downloaded.
IMAGENET_MODEL = ("bagnet33", "imagenet")

class UnnamedWeightsError(ValueError):
    """A weight file that does not say which model it belongs to (a plain state dict)."""


# Prefixes under which a model name or a model file may name a torchvision classifier.
_TV_PREFIXES = ("torchvision:", "torchvision/", "torchvision.")
# Tags that mean torchvision's own ImageNet weights (besides its enum names, e.g. IMAGENET1K_V2).
_TV_IMAGENET = ("imagenet", "default")


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    *,
    file: str | os.PathLike | None = None,
    check_hash: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered BagNet or a torchvision classifier, optionally with weights.

    Args:
        name: a name from :func:`list_models`, a torchvision classifier (``resnet50``,
            also ``torchvision:resnet50``), or a model folder (:func:`save_pretrained`) or
            Hugging Face model repo ``hf-hub:ORG/NAME``, which say which model they hold.
        pretrained: ``False`` (random initialisation); ``True`` for the model's default
            registered weights; a registered tag such as ``"imagenet"`` (for torchvision
            models also a weight enum name such as ``"IMAGENET1K_V2"``); or a checkpoint:
            a path, a run folder of ``bagnet train``, a model folder, a ``.safetensors``
            file, ``hf-hub:ORG/NAME`` or a URL. Nothing is unpickled beyond tensors. A bagnet model file or
            training checkpoint brings its constructor arguments, class names and
            normalization (``kwargs`` given here win); the head size of any checkpoint is
            read from it.
        file: a local copy of the registered weights ``pretrained`` names (downloaded
            elsewhere); it is checked against the registered hash and keeps the tag's
            metadata.
        check_hash: for a URL, check the SHA-256 prefix its file name carries
            (``NAME-<hex>.EXT``). Registered weights are always checked.
        **kwargs: constructor arguments such as ``num_classes`` and ``in_chans``; only the
            ones given are passed on.

    Returns:
        The model, with ``model_name``, ``model_args`` and ``pretrained_cfg`` (a dict with
        ``classes``, ``mean``, ``std``, ``img_size`` where known) attached.

    Raises:
        ValueError: unknown name or tag, a hash mismatch, or a checkpoint that does not fit
            (listing the missing, unexpected and mis-shaped keys; nothing is loaded then).
        FileNotFoundError: a weight file or folder that does not exist.
    """
    tv_name = _torchvision_name(name)
    if tv_name is not None:
        return _create_torchvision(tv_name, pretrained, file, check_hash, kwargs)
    if name not in list_models() and (is_model_location(name) or os.path.isdir(name)):
        # a model folder, run folder or hf-hub:ORG/NAME says which model it holds
        if pretrained not in (False, None) or file is not None:
            raise ValueError(f"{name} brings its own weights; pass pretrained= only with a model name")
        return load_model(name, **kwargs)
    fn = get_model_fn(name)
    if pretrained is True:
        tags = pretrained_tags(name)
        if not tags:
            raise ValueError(f"no published weights for {name!r}; pass a checkpoint path instead")
        pretrained = tags[0]
    tag = _tag(name, pretrained)
    if file is not None and tag is None:
        raise ValueError(
            f"a weights file is given for {pretrained!r}, which is not a registered tag of {name} "
            f"({', '.join(pretrained_tags(name)) or 'none'}); pass the file itself as the weights"
        )
    if tag is not None:
        cfg = pretrained_cfg(name, tag)
        weights = read_weights(registered_file(name, tag, file))
        # Shipped files are model files with their own meta; the authors' are plain state dicts.
        weights.meta = {**(meta_of(cfg) if cfg.file is None else {}), **weights.meta}
        if cfg.file is not None and cfg.metrics:
            # A shipped file's accuracy and how it was measured: weights/metrics.json, the one source.
            weights.meta.update(metrics=dict(cfg.metrics), evaluation=dict(cfg.evaluation))
        return _build(name, weights, kwargs, source=tag)
    if pretrained:
        return _build(name, _read(pretrained, check_hash), kwargs, source=os.fspath(pretrained))
    return _finish(fn(**kwargs), name, kwargs, None, None, {})


def load_model(
    source: str | os.PathLike, *, file: str | os.PathLike | None = None, check_hash: bool = False, **kwargs: Any
) -> nn.Module:
    """Load a model whose weights name it: a model file or training checkpoint of
    ``bagnet train`` (or its run folder), a model folder or ``hf-hub:ORG/NAME``, or a
    registered tag alone (``"imagenette"``).

    Args:
        source: a path, run folder, URL, or registered tag.
        file: with a tag, a local copy of its weights (see :func:`create_model`).
        check_hash: see :func:`create_model`.
        **kwargs: constructor arguments that override the file's.

    Raises:
        ValueError: the file holds a plain state dict (which does not name its model).
    """
    text = os.fspath(source)
    if text in registered_tags():
        _warn_if_also_a_path(text)
        name = model_for_tag(text, default=DEFAULT_MODEL[0])
        return create_model(name, pretrained=text, file=file, **kwargs)
    if file is not None:
        raise ValueError(f"a weights file goes with a registered tag ({', '.join(registered_tags())}), not {text}")
    weights = _read(text, check_hash)
    if weights.model is None:
        raise UnnamedWeightsError(f"{weights.path} holds a plain state dict, which does not name its model; name the model")
    return _build(weights.model, weights, kwargs, source=text)


def default_model(*, prefer_downloaded: bool = True) -> tuple[nn.Module, str]:
    """The model used when none is named, and one line saying what it is.

    The authors' ImageNet BagNet-33 when its weights are already in the torch hub cache
    (nothing is downloaded to find out), else the model shipped with the package
    (:data:`DEFAULT_MODEL`); the line then says how to get the ImageNet one.

    Args:
        prefer_downloaded: use the ImageNet BagNet-33 if it is downloaded.
    """
    imagenet_name, imagenet_tag = IMAGENET_MODEL
    cfg = pretrained_cfg(imagenet_name, imagenet_tag)
    if prefer_downloaded and is_downloaded(imagenet_name, imagenet_tag):
        model = create_model(imagenet_name, pretrained=imagenet_tag)
        return model, (f"{imagenet_name} with the authors' ImageNet weights (1000 classes), found in the torch hub "
                       f"cache; --weights {DEFAULT_MODEL[1]} uses the shipped {DEFAULT_MODEL[0]} instead")
    name, tag = DEFAULT_MODEL
    missing = f"the shipped default model {name} ({tag}) is missing; reinstall bagnet or pass --weights"
    if pretrained_cfg(name, tag) is None:  # not registered (another model may still have the tag)
        raise ValueError(missing)
    try:
        model = create_model(name, pretrained=tag)
    except FileNotFoundError:
        raise ValueError(missing) from None
    classes = model.pretrained_cfg.get("class_names") or model.pretrained_cfg.get("classes") or []
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    return model, (f"{name} trained on {tag} ({len(classes)} classes: {shown}), shipped with bagnet. "
                   f"For the authors' ImageNet {imagenet_name} (1000 classes), pass --weights {imagenet_tag} once: "
                   f"it downloads {os.path.basename(cfg.url) if cfg and cfg.url else 'the weights'} into the torch "
                   "hub cache, and is the default from then on")


def _tag(name: str, pretrained: Any) -> str | None:
    """``pretrained`` if it is a registered tag of ``name``; an error if it is another model's."""
    if not isinstance(pretrained, str) or pretrained not in registered_tags():
        return None
    if pretrained_cfg(name, pretrained) is None:
        raise ValueError(
            f"no weights {pretrained!r} are registered for {name} (registered: "
            f"{', '.join(pretrained_tags(name)) or 'none'}); {pretrained!r} weights exist for "
            f"{', '.join(models_with_tag(pretrained))}"
        )
    _warn_if_also_a_path(pretrained)
    return pretrained


def _warn_if_also_a_path(tag: str) -> None:
    if os.path.exists(tag):
        logger.warning("%r is a registered tag and also a path here; using the tag (write ./%s for the path)", tag, tag)


def _read(source: str | os.PathLike, check_hash: bool) -> WeightFile:
    """:func:`read_weights`, with the registered tags named where a missing path may be a typo."""
    try:
        return read_weights(source, check_hash=check_hash)
    except FileNotFoundError as e:
        text = os.fspath(source)
        if os.sep in text or "." in os.path.basename(text):
            raise
        raise FileNotFoundError(f"{e}; nor is {text!r} a registered tag ({', '.join(registered_tags())})") from None


def _build(name: str, weights: WeightFile, kwargs: dict, source: str) -> nn.Module:
    """The model ``name`` with the weights of a read file (its head size and arguments)."""
    tv_name = _torchvision_name(name)
    if weights.model is not None:
        stored = _torchvision_name(weights.model) or weights.model
        if stored != (tv_name or name):
            raise CheckpointMismatchError(f"{source} holds a {weights.model!r} model, not {name!r}")
    args = dict(weights.model_args)
    if "num_classes" not in args:
        head = _head_size(tv_name or name, weights.state_dict, tv_name is not None)
        if head is not None:
            args["num_classes"] = head
    args.update(kwargs)
    if tv_name is not None:
        if "in_chans" in args:
            raise ValueError(f"torchvision's {tv_name} takes 3-channel input only; drop in_chans")
        model = _torchvision_model(tv_name, args)
    else:
        model = get_model_fn(name)(**args)
    return _finish(model, tv_name or name, args, source, weights.state_dict, weights.meta)


def _finish(model: nn.Module, name: str, kwargs: dict, source: str | None, state_dict, meta: dict) -> nn.Module:
    """Load ``state_dict`` all-or-nothing and attach name, arguments and metadata."""
    if state_dict is not None:
        try:
            load_state_dict_strict(model, state_dict)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{source}: {e}") from None
    model.model_name = name
    model.model_args = dict(kwargs)
    num_classes = kwargs["num_classes"] if "num_classes" in kwargs else _num_outputs(model)
    model.num_classes = num_classes
    classes = meta.get("classes")
    if classes is not None and len(classes) != num_classes:
        # The caller replaced the head (e.g. num_classes=10 on ImageNet weights would not
        # load anyway); names that no longer match the outputs are dropped, never kept wrong.
        classes = None
    model.pretrained_cfg = {
        "mean": list(meta.get("mean", IMAGENET_MEAN)),
        "std": list(meta.get("std", IMAGENET_STD)),
        # the crop of the model's preprocessing (bagnet.data.transforms): None, the whole image
        "crop_pct": meta.get("crop_pct"),
        **{k: v for k, v in meta.items() if k not in ("mean", "std", "classes")},
        "classes": list(classes) if classes is not None else None,
        "source": source,
    }
    return model


# -- torchvision classifiers -----------------------------------------------------------------


def _torchvision_name(name: str) -> str | None:
    """Torchvision classifier behind ``name`` (``resnet50``, ``torchvision:resnet50``), if any.

    Registered BagNet names win, so reference DNNs are reachable through the same factory
    (training, evaluation, benchmarks and analyses all take either).
    """
    plain = name
    for prefix in _TV_PREFIXES:
        plain = plain.removeprefix(prefix)
    if plain == name and name in list_models():
        return None
    import torchvision

    return plain if plain in torchvision.models.list_models(module=torchvision.models) else None


def _torchvision_model(tv_name: str, kwargs: dict) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(tv_name, **kwargs)


def _create_torchvision(tv_name: str, pretrained, file, check_hash: bool, kwargs: dict) -> nn.Module:
    import torchvision

    if "in_chans" in kwargs:
        raise ValueError(f"torchvision's {tv_name} takes 3-channel input only; drop in_chans")
    enum = None
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() in _TV_IMAGENET):
        enum = torchvision.models.get_model_weights(tv_name).DEFAULT
    elif isinstance(pretrained, str) and pretrained.isupper() and not os.path.exists(pretrained):
        members = torchvision.models.get_model_weights(tv_name).__members__
        if pretrained not in members:
            raise ValueError(f"torchvision has no weights {pretrained!r} for {tv_name}; it has {', '.join(members)}")
        enum = members[pretrained]
    if file is not None and enum is None:
        raise ValueError(f"a weights file goes with a registered tag (imagenet, or a torchvision enum name), "
                         f"not {pretrained!r}")
    if enum is None:
        if pretrained:
            return _build(tv_name, _read(pretrained, check_hash), kwargs, source=os.fspath(pretrained))
        return _finish(_torchvision_model(tv_name, kwargs), tv_name, kwargs, None, None, {})
    if kwargs.get("num_classes", len(enum.meta["categories"])) != len(enum.meta["categories"]):
        raise ValueError(f"imagenet weights of {tv_name} have 1000 classes, not {kwargs['num_classes']}")
    if file is not None:
        # torchvision reads its weights from the torch hub cache: verify the copy, put it there.
        from ._weights import check_sha256

        expected = hash_in_name(enum.url)
        if expected:
            check_sha256(file, expected, f"torchvision's {enum} weights",
                         f"download {enum.url} again, or load it as an unregistered checkpoint (a path)")
        install_in_cache(_existing(file), enum.url)
    try:
        model = torchvision.models.get_model(tv_name, weights=enum, **kwargs)  # downloads once, hash-checked
    except RuntimeError as e:
        if "hash" in str(e):
            raise ValueError(f"the download of {enum.url} does not match its hash ({e}); try again") from None
        raise
    except OSError as e:  # urllib's URLError (offline, DNS) is an OSError
        raise OSError(f"could not download torchvision's {enum} weights for {tv_name} from {enum.url} "
                      f"({getattr(e, 'reason', e)}); download the file elsewhere and pass it with "
                      f"--weights imagenet --weights-file PATH (API: pretrained='imagenet', file=PATH), or "
                      f"use {tv_name}@random for random weights") from None
    crop = getattr(enum.transforms(), "crop_size", [224])
    meta = {"dataset": "imagenet", "classes": list(imagenet_classes()), "img_size": int(crop[0]),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return _finish(model, tv_name, kwargs, str(pretrained) if pretrained is not True else "imagenet", None, meta)


def _existing(file) -> Any:
    from pathlib import Path

    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--weights-file {path} does not exist")
    return path


def _last_linear_name(model: nn.Module) -> str | None:
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    return last


def _head_size(name: str, state_dict: dict[str, torch.Tensor], torchvision: bool) -> int | None:
    """Outputs of the classifier in ``state_dict``: the rows of the model's last linear layer,
    whatever it is called (``fc``, ``classifier.6``, ``heads.head``, ...)."""
    if not torchvision:
        w = state_dict.get("fc.weight")
        return int(w.shape[0]) if w is not None else None
    import torchvision as tv

    with torch.device("meta"):
        probe = tv.models.get_model(name)
    head = _last_linear_name(probe)
    if head is None:  # a convolutional classifier (SqueezeNet): the constructor's default
        return None
    w = state_dict.get(f"{head}.weight")
    if w is None:
        raise CheckpointMismatchError(f"the checkpoint has no {head}.weight, so it is not a {name} classifier")
    return int(w.shape[0])


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    head = _last_linear_name(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier head; pass num_classes")
    return int(model.get_submodule(head).out_features)
