"""``create_model``: one entry point for every registered BagNet and its weights."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ._registry import get_model_fn
from ._weights import (
    CheckpointMismatchError,
    clean_state_dict,
    fetch,
    load_state_dict_strict,
    meta_of,
    model_file_info,
    packaged_file,
    pretrained_cfg,
    pretrained_tags,
    read_checkpoint,
)


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **kwargs: Any) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: a name from :func:`list_models`.
        pretrained: ``False``; ``True`` for the model's default published weights; a tag
            such as ``"imagenet"``; or a path or URL of a checkpoint (plain or wrapped state
            dict, or a bagnet model file whose stored constructor arguments, class names and
            normalization are used unless overridden here).
        **kwargs: constructor arguments such as ``num_classes`` and ``in_chans``; only the
            ones given are passed on.

    Returns:
        The model, with ``model_name``, ``model_args`` and ``pretrained_cfg`` (a dict with
        ``classes``, ``mean``, ``std``, ``img_size`` where known) attached.

    Raises:
        ValueError: unknown name or tag, or a checkpoint that does not fit (listing the
            missing, unexpected and mis-shaped keys; nothing is loaded then).
    """
    torchvision_name = _torchvision_name(name)
    if torchvision_name is not None:
        return _create_torchvision(torchvision_name, name, pretrained, kwargs)
    fn = get_model_fn(name)
    state_dict, meta = None, {}
    if pretrained is True:
        tags = pretrained_tags(name)
        if not tags:
            raise ValueError(f"no published weights for {name!r}; pass a checkpoint path instead")
        pretrained = tags[0]
    if pretrained:
        source = os.fspath(pretrained)
        cfg = pretrained_cfg(name, source)
        if cfg is not None:
            if cfg.file is not None:
                checkpoint = read_checkpoint(packaged_file(cfg.file))
            else:
                checkpoint = read_checkpoint(fetch(cfg.url))
                meta = meta_of(cfg)
        else:
            checkpoint = read_checkpoint(source)
        stored_name, stored_args, stored_meta = model_file_info(checkpoint)
        if stored_name is not None and stored_name != name:
            raise CheckpointMismatchError(
                f"{source} holds a {stored_name!r} model, not {name!r}; use --model {stored_name}"
            )
        kwargs = {**stored_args, **kwargs}
        meta = {**meta, **stored_meta}
        state_dict = clean_state_dict(checkpoint)
    model = fn(**kwargs)
    return _finish(model, name, kwargs, pretrained, state_dict, meta)


def _finish(model: nn.Module, name: str, kwargs: dict, pretrained, state_dict, meta: dict) -> nn.Module:
    """Load ``state_dict`` all-or-nothing and attach name, arguments and metadata."""
    if state_dict is not None:
        try:
            load_state_dict_strict(model, state_dict)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{pretrained}: {e}") from None
    model.model_name = name
    model.model_args = dict(kwargs)
    num_classes = getattr(model, "num_classes", None)
    classes = meta.get("classes")
    if classes is not None and len(classes) != num_classes:
        # The caller replaced the head (e.g. num_classes=10 on ImageNet weights would not
        # load anyway); names that no longer match the outputs are dropped, never kept wrong.
        classes = None
    model.pretrained_cfg = {
        "mean": list(meta.get("mean", IMAGENET_MEAN)),
        "std": list(meta.get("std", IMAGENET_STD)),
        **{k: v for k, v in meta.items() if k not in ("mean", "std", "classes")},
        "classes": classes,
        "source": os.fspath(pretrained) if pretrained else None,
    }
    return model


def _torchvision_name(name: str) -> str | None:
    """Torchvision classifier behind ``name`` ("resnet50" or "torchvision:resnet50"), if any.

    Registered BagNet names win, so reference DNNs are reachable through the same factory
    (training, evaluation, benchmarks and analyses all take either).
    """
    plain = name.removeprefix("torchvision:")
    try:
        get_model_fn(plain)
        return None
    except ValueError:
        pass
    import torchvision

    return plain if plain in torchvision.models.list_models(module=torchvision.models) else None


def _create_torchvision(tv_name: str, name: str, pretrained, kwargs: dict) -> nn.Module:
    import torchvision

    if "in_chans" in kwargs:
        raise ValueError(f"torchvision's {tv_name} takes 3-channel input only; drop in_chans")
    state_dict, meta = None, {}
    if pretrained is True or pretrained == "imagenet":
        # torchvision's own weights (downloaded into the torch hub cache when asked for)
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
        if kwargs.get("num_classes", 1000) != 1000:
            raise ValueError(f"imagenet weights of {tv_name} have 1000 classes, not {kwargs['num_classes']}")
        state_dict = weights.get_state_dict(progress=False)
        meta = {"dataset": "imagenet", "classes": list(weights.meta["categories"]), "img_size": 224}
    elif pretrained:
        checkpoint = read_checkpoint(os.fspath(pretrained))
        stored_name, stored_args, meta = model_file_info(checkpoint)
        if stored_name is not None and _torchvision_name(stored_name) != tv_name:
            raise CheckpointMismatchError(f"{pretrained} holds a {stored_name!r} model, not {name!r}")
        state_dict = clean_state_dict(checkpoint)
        if "fc.weight" in state_dict and "num_classes" not in stored_args:
            stored_args["num_classes"] = state_dict["fc.weight"].shape[0]
        kwargs = {**stored_args, **kwargs}
    model = torchvision.models.get_model(tv_name, **kwargs)
    model.num_classes = kwargs.get("num_classes", 1000)
    return _finish(model, tv_name, kwargs, pretrained, state_dict, meta)


def load_model(source: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a bagnet model file (as written by ``bagnet train``) without naming the model."""
    name, _, _ = model_file_info(read_checkpoint(source))
    if name is None:
        raise ValueError(f"{source} is a plain state dict; name the model: create_model(NAME, pretrained=...)")
    return create_model(name, pretrained=source, **kwargs)
