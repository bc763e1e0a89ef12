"""Which models an analysis compares: ``[LABEL=]NAME[@WEIGHTS]`` specifications."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelSpec", "parse_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """A model to analyse: what to build and what to call it in tables and figures.

    Attributes:
        label: short name used in results (``"BagNet-33"``); unique within a run.
        model: a registered BagNet (``bagnet33_slim``) or a torchvision classifier
            (``resnet18``); ``None`` when ``weights`` is a bagnet model file that names it.
        weights: ``None`` (the model's published weights, as everywhere in bagnet),
            ``"random"`` (random initialisation, asked for), a tag (``imagenet``), or a path/URL.
    """

    label: str
    model: str | None = None
    weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_model_spec(text: str | dict) -> ModelSpec:
    """Read ``[LABEL=]NAME[@WEIGHTS]`` or ``[LABEL=]PATH`` (or a dict with those keys).

    The model part follows bagnet's one spec grammar (:mod:`bagnet.models._spec`): a bare
    NAME means its published weights, ``NAME@random`` random ones. Examples:
    ``bagnet33_slim@runs/b33/model.pt``, ``R18=resnet18@runs/r18/model.pt``,
    ``vgg16@imagenet``, ``resnet18@random``, ``runs/b9/model.pt``, ``runs/b9/last.pt`` or
    ``runs/b9`` (files and run folders of ``bagnet train`` name their model),
    ``imagenette`` (a registered tag names its model too).
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
    from ..models._spec import parse_spec

    text = str(text).strip()
    if not text:
        raise ValueError("empty model specification; use [LABEL=]NAME[@WEIGHTS] or [LABEL=]PATH")
    label = None
    if "=" in text and not Path(text).exists():
        label, text = text.split("=", 1)
        label = label.strip() or None
    spec = parse_spec(text)
    return ModelSpec(label or _default_label(spec.model, spec.weights), spec.model, spec.weights)


def _default_label(model: str | None, weights: str | None) -> str:
    if model:
        return model
    path = Path(str(weights))
    if path.is_dir():  # a run folder
        return path.resolve().name
    if not path.exists():  # a tag or URL
        return path.stem or str(weights)
    return path.parent.name or path.stem
