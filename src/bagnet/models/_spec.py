"""The one model-spec grammar of every command: what ``NAME``, ``NAME@WEIGHTS`` and a path mean.

=====================  ===============================================================
``NAME``               the model's published weights: its first registered tag, or a
                       torchvision classifier's ImageNet weights; a clear error where
                       none exist or they cannot be fetched offline
``NAME@random``        random weights, asked for explicitly (timing, smoke runs)
``NAME@WEIGHTS``       a registered tag (``bagnet33@imagenet``, ``bagnet33_w25@imagenette``),
                       a torchvision weight enum (``resnet50@IMAGENET1K_V2``), a model
                       file, checkpoint, run folder, model folder or URL
``WEIGHTS``            a file, run folder, model folder, ``hf-hub:ORG/NAME`` or a
                       registered tag alone: they name their model
=====================  ===============================================================

``bagnet eval/explain/serve/certify/attack/calibrate/demo`` (``--model SPEC``),
``bagnet bench`` (``--models``) and ``bagnet analyze`` (``--bagnet``/``--reference``) all
read specs through :func:`parse_spec` and build them with :func:`load_spec`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["RANDOM", "Spec", "load_spec", "parse_spec"]

#: The weights of ``NAME@random``: a random initialisation, never implied.
RANDOM = "random"


@dataclass(frozen=True)
class Spec:
    """A parsed model spec.

    Attributes:
        model: the model name, or ``None`` where the weights name it.
        weights: ``None`` (the published weights), :data:`RANDOM`, a tag, enum name,
            path or URL.
    """

    model: str | None
    weights: str | None = None

    @property
    def random(self) -> bool:
        return self.weights == RANDOM

    def __str__(self) -> str:
        if self.model is None:
            return str(self.weights)
        return self.model if self.weights is None else f"{self.model}@{self.weights}"


_WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".safetensors", ".ckpt")


def _names_a_location(text: str) -> bool:
    """A path (existing or not: a missing one should be reported as missing), a URL or a Hub repo."""
    from ._pretrained import HUB_PREFIX

    return (text.startswith(HUB_PREFIX) or "://" in text or Path(text).expanduser().exists()
            or "/" in text or os.sep in text or text.lower().endswith(_WEIGHT_SUFFIXES))


def parse_spec(text: str, weights: str | None = None) -> Spec:
    """Read ``NAME``, ``NAME@WEIGHTS``, ``NAME@random`` or ``WEIGHTS`` (see the module doc).

    Args:
        text: the spec.
        weights: weights given separately (``--weights``); an error if ``text`` names some too.

    Raises:
        ValueError: an empty spec, or weights given twice.
    """
    from ._registry import list_models
    from ._weights import registered_tags

    text = str(text).strip()
    if not text:
        raise ValueError("empty model spec; use NAME, NAME@WEIGHTS, NAME@random or a model file")
    head = text.partition("@")[0].strip()
    named = "@" in text and not Path(text).expanduser().exists() and bool(head) and not (
        Path(head).expanduser().exists() or head.lower().endswith(_WEIGHT_SUFFIXES)
        or ("/" in head and not head.startswith("torchvision/")))
    if not named and (_names_a_location(text) or (text in registered_tags() and text not in list_models())):
        if weights is not None:
            raise ValueError(f"{text} brings its own weights; drop --weights {weights}")
        return Spec(None, text)
    model, at, given = text.partition("@")
    model, given = model.strip(), given.strip()
    if at and not (model and given):
        raise ValueError(f"model spec {text!r}: write NAME@WEIGHTS (e.g. bagnet33@imagenet, resnet18@random)")
    if at and weights is not None:
        raise ValueError(f"model spec {text!r} names its weights; drop --weights {weights}")
    return Spec(model, given or weights)


def has_published_weights(name: str) -> bool:
    """The model ``name`` has registered weights (a BagNet), or is a torchvision classifier."""
    from ._registry import list_models
    from ._weights import pretrained_tags

    return bool(pretrained_tags(name)) or name not in list_models()


def load_spec(spec: Spec | str, *, file: str | os.PathLike | None = None, num_classes: int | None = None,
              **kwargs: Any) -> nn.Module:
    """Build the model a spec names, with the meaning every command gives it.

    Args:
        spec: a :class:`Spec` or its text.
        file: a local copy of the registered weights the spec names (hash-checked).
        num_classes: the head size of a randomly initialised model (ignored otherwise:
            weights bring their own).
        **kwargs: constructor arguments (see :func:`bagnet.create_model`).

    Raises:
        ValueError: a bare name without published weights, an unknown name or tag, weights
            that do not fit.
    """
    from ._factory import UnnamedWeightsError, create_model, load_model

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.model is None:
        try:
            return load_model(spec.weights, file=file, **kwargs)
        except UnnamedWeightsError as e:
            raise ValueError(f"{e} with --model NAME (or write NAME@{spec.weights})") from None
    if spec.random:
        if file is not None:
            raise ValueError(f"{spec} asks for random weights; drop the weights file")
        return create_model(spec.model, **({"num_classes": num_classes} if num_classes else {}), **kwargs)
    if spec.weights is None:
        if not has_published_weights(spec.model):
            raise ValueError(f"{spec.model} has no published weights; name them ({spec.model}@FILE, a model file or "
                             f"run folder of `bagnet train`) or ask for random ones ({spec.model}@random)")
        return create_model(spec.model, pretrained=True, file=file, **kwargs)
    return create_model(spec.model, pretrained=spec.weights, file=file, **kwargs)
