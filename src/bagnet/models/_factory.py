"""``create_model``: one entry point for every registered BagNet and its weights."""

from __future__ import annotations

import os
from importlib import resources
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
                checkpoint = read_checkpoint(str(resources.files("bagnet.weights").joinpath(cfg.file)))
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


def load_model(source: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a bagnet model file (as written by ``bagnet train``) without naming the model."""
    name, _, _ = model_file_info(read_checkpoint(source))
    if name is None:
        raise ValueError(f"{source} is a plain state dict; name the model: create_model(NAME, pretrained=...)")
    return create_model(name, pretrained=source, **kwargs)
