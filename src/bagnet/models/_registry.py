"""Name -> constructor registry behind ``create_model`` and ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

_MODELS: dict[str, Callable] = {}


def register_model() -> Callable[[Callable], Callable]:
    """Register a model constructor under its function name.

    Its weights are registered separately, in ``_weights._PRETRAINED``.
    """

    def wrap(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_fn(name: str) -> Callable:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; BagNets: {', '.join(list_models())}; or any torchvision classifier (resnet50, vgg16, ...)"
        ) from None
