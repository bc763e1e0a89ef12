"""BagNets in timm's registry: ``timm.create_model("bagnet33", pretrained=True)``.

Every registered BagNet becomes a timm model whose entry point builds it through
:func:`bagnet.create_model` (one loader, the same weights and checks) and attaches a
timm ``pretrained_cfg`` (input size, mean/std, crop, interpolation, classifier name,
label names), so ``timm.data.resolve_data_config``, timm's transforms, optimizers and
training script work on it. timm is optional: ``import bagnet`` registers the models
when timm is imported, before or after bagnet, without importing timm itself (it takes
longer to import than bagnet).

Weights are chosen as timm chooses them: ``"bagnet33.imagenet"`` or ``pretrained_cfg``
names a tag, ``pretrained_cfg_overlay=dict(file=PATH)`` a local file, a
``hf-hub:ORG/NAME`` model id a Hugging Face model repo and ``local-dir:FOLDER`` a model
folder (:func:`bagnet.save_pretrained`, or ``RUN/model`` of ``bagnet train``).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import Any

from torch import nn

from ._pretrained import PAPER, PAPER_ID, timm_data_config

__all__ = ["install_timm_hook", "register_with_timm"]

log = logging.getLogger(__name__)

# timm arguments that a BagNet has no use for at their neutral value; any other value is
# refused rather than ignored (timm's train.py passes drop_rate=0.0 by default).
_NEUTRAL = {"drop_rate": 0.0, "drop_path_rate": 0.0, "drop_block_rate": 0.0, "global_pool": "avg"}
_registered: list[str] | None = None


def _default_cfgs() -> dict:
    """timm ``DefaultCfg`` per architecture: one entry per published tag, in bagnet's order."""
    from timm.models import generate_default_cfgs

    from ._registry import list_models
    from ._weights import _PRETRAINED

    cfgs: dict[str, dict] = {}
    for name in list_models():
        tags = [t for (n, t) in _PRETRAINED if n == name]
        if not tags:
            cfgs[name] = {"paper_name": PAPER, "paper_ids": PAPER_ID}
        for i, tag in enumerate(tags):
            w = _PRETRAINED[(name, tag)]
            entry = {
                "url": w.url or "",
                # shipped files are found (and hash-checked) by bagnet's loader; the name
                # only tells timm that weights exist
                "file": w.file,
                "input_size": (3, w.img_size, w.img_size),
                # bagnet's whole-image preprocessing, as timm spells it (see timm_data_config)
                "crop_pct": 1.0,
                "crop_mode": "center",
                "mean": tuple(w.mean),
                "std": tuple(w.std),
                "num_classes": w.num_classes,
                "interpolation": "bilinear",
                "first_conv": "conv1",
                "classifier": "fc",
                "paper_name": PAPER,
                "paper_ids": PAPER_ID,
            }
            cfgs[f"{name}.{tag}" + ("*" if i == 0 else "")] = entry
    return generate_default_cfgs(cfgs)


def _entrypoint(name: str):
    from ._registry import get_model_fn

    def fn(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        return _create(name, pretrained, pretrained_cfg, pretrained_cfg_overlay, cache_dir, kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = get_model_fn(name).__doc__
    return fn


def _create(name: str, pretrained: bool, pretrained_cfg, overlay, cache_dir, kwargs: dict) -> nn.Module:
    from timm.models import resolve_pretrained_cfg

    from ._factory import create_model
    from ._weights import pretrained_tags

    kwargs = dict(kwargs)
    kwargs.pop("pretrained_model_args", None)  # timm's copy of a hub config's model_args, merged already
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if kwargs.pop("features_only", False):
        raise ValueError(f"{name}: features_only is not supported; use model.forward_features(x) for the "
                         "feature map or model.patch_logits(x) for the class evidence of every patch")
    for key, neutral in _NEUTRAL.items():
        if key in kwargs:
            value = kwargs.pop(key)
            if value not in (None, neutral):
                raise ValueError(f"{name}: {key}={value!r} is not supported by BagNets (only {neutral!r})")
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    tag = cfg.tag or ""
    source: Any = False
    if pretrained:
        if cfg.source == "hf-hub" and cfg.hf_hub_id:
            source = f"hf-hub:{cfg.hf_hub_id}"
        elif cfg.source == "local-dir" and cfg.file:
            source = cfg.file  # "local-dir:FOLDER": timm read FOLDER/config.json, bagnet loads the folder
        elif cfg.state_dict is not None:
            raise ValueError(f"{name}: pretrained_cfg with an in-memory state_dict is not supported; save it to a file")
        elif overlay and (overlay.get("file") or overlay.get("url")):
            source = overlay.get("file") or overlay.get("url")
        elif tag in pretrained_tags(name):
            source = tag
        elif cfg.hf_hub_id:
            source = f"hf-hub:{cfg.hf_hub_id}"
        else:
            raise ValueError(f"{name}: no weights for pretrained tag {tag!r}; published: {pretrained_tags(name)}")
        if cache_dir is not None and source.startswith("hf-hub:"):
            from ._pretrained import hub_snapshot

            source = str(hub_snapshot(source, cache_dir=cache_dir))  # timm's cache_dir, then a local folder
    model = create_model(name, pretrained=source, **kwargs)
    if not pretrained and tag in pretrained_tags(name):
        # timm gives an untrained model the data config of the tag it names
        model.pretrained_cfg = {**model.pretrained_cfg, "img_size": cfg.input_size[-1],
                                "mean": list(cfg.mean), "std": list(cfg.std)}
    model.pretrained_cfg = {**model.pretrained_cfg, **timm_data_config(model), "tag": tag or None}
    model.default_cfg = model.pretrained_cfg  # timm's older name for it
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def register_with_timm() -> list[str]:
    """Register every BagNet of :func:`bagnet.list_models` in timm's model registry.

    A name that timm itself already uses stays timm's (with a warning). Calling this again
    registers nothing new. Returns the names registered by bagnet.
    """
    global _registered
    if _registered is not None:
        return list(_registered)
    from timm.models import is_model, register_model

    from ._registry import list_models

    sys.modules[__name__].default_cfgs = _default_cfgs()  # read by timm's register_model
    names = []
    for name in list_models():
        if is_model(name):
            log.warning("timm already has a model named %s; bagnet's is not registered with timm", name)
            continue
        register_model(_entrypoint(name))
        names.append(name)
    _registered = names
    return list(names)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Registers the BagNets the moment ``timm`` has been imported (a one-shot finder)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register_with_timm()
            except Exception as e:
                log.warning("could not register BagNets with timm: %s: %s", type(e).__name__, e)

        spec.loader.exec_module = exec_then_register
        return spec


def install_timm_hook() -> None:
    """Register with timm now if it is imported, else as soon as it is (if installed)."""
    if "timm" in sys.modules:
        register_with_timm()
    elif importlib.util.find_spec("timm") is not None and not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
