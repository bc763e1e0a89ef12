"""Models as the experiments see them: a network, its normalization and the output column
of each class of the data (:class:`Classifier`), built from a :class:`ModelSpec`.

Images reach a classifier in pixel space (``[0, 1]`` RGB); it applies its own
normalization. ``Classifier.columns`` are the outputs of the data set's classes, matched by
bagnet's one rule (:func:`bagnet.data.classes.class_mapping`), so a model trained on the
folder and an ImageNet-1k model are compared on the same labels; predictions are scored
among all of a model's outputs unless the session restricts them to the data set's
classes on purpose (:func:`bagnet.data.classes.scoring_note`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..models import BagNet
from ._specs import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["Classifier", "build_model", "class_columns", "load_classifier", "make_classifier"]

class Classifier:
    """A model with its normalization and the output columns of the data set's classes.

    Args:
        label: name in results.
        model: the network (put in eval mode here).
        mean: per-channel mean of the normalization the network expects.
        std: per-channel standard deviation of that normalization.
        columns: output index of each data-set class; ``None`` means output k is class k.
        fingerprint: identifies model and weights, for caches.
    """

    def __init__(
        self,
        label: str,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        columns: Sequence[int] | None = None,
        fingerprint: str = "",
    ):
        self.label = label
        self.model = model.eval()
        device = _device_of(model)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.columns = None if columns is None else torch.as_tensor(list(columns), dtype=torch.long, device=device)
        self.fingerprint = fingerprint or label

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def is_bagnet(self) -> bool:
        return isinstance(self.model, BagNet)

    @property
    def receptive_field(self) -> int | None:
        return self.model.receptive_field if self.is_bagnet else None

    @property
    def name(self) -> str:
        return getattr(self.model, "model_name", type(self.model).__name__)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(self.device) - self.mean) / self.std

    def column(self, classes: torch.Tensor) -> torch.Tensor:
        """Model output index of data-set classes."""
        classes = classes.to(self.device)
        return classes if self.columns is None else self.columns[classes]

    def full_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """All outputs of the model for pixel-space images."""
        with torch.inference_mode():
            return self.model(self.normalize(pixels)).float()

    def restrict(self, full: torch.Tensor) -> torch.Tensor:
        """Columns of the data set's classes from full outputs."""
        return full if self.columns is None else full[:, self.columns]

    def target_scores(self, pixels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit, probability) of one data-set class per image; the probability is the
        softmax over all of the model's outputs."""
        full = self.full_logits(pixels)
        col = self.column(targets)[:, None]
        logit = full.gather(1, col)[:, 0]
        return logit, (logit - full.logsumexp(1)).exp()

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.name,
            "kind": "bagnet" if self.is_bagnet else "reference",
            "receptive_field": self.receptive_field,
            "outputs": self.num_outputs,
            "source": getattr(self.model, "pretrained_cfg", {}).get("source"),
        }

    @property
    def num_outputs(self) -> int:
        """How many classes the model itself has (the data set may have fewer)."""
        return _num_outputs(self.model)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def build_model(spec: ModelSpec, num_classes: int | None = None) -> nn.Module:
    """The network of ``spec``, through bagnet's one spec grammar and loader
    (:func:`bagnet.models._spec.load_spec`), with ``pretrained_cfg`` (mean, std, classes,
    img_size, source).

    A bare model name means its published weights, as in every other command;
    ``NAME@random`` a random initialisation, whose head gets ``num_classes`` outputs.
    """
    from ..models._spec import Spec, load_spec

    if spec.model is None and spec.weights is None:
        raise ValueError(f"{spec.label}: give a model name or a weight file")
    return load_spec(Spec(spec.model, spec.weights), num_classes=num_classes)


def _num_outputs(model: nn.Module) -> int:
    return model.num_classes if hasattr(model, "num_classes") else _last_linear(model).out_features


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier head")
    return linears[-1]


def class_columns(
    model_classes: Sequence[str] | None,
    num_outputs: int,
    data_classes: Sequence[str],
    class_map: str | None = None,
    data_root: str | None = None,
    label: str = "model",
) -> list[int] | None:
    """Output column of every data-set class, or ``None`` when output k is class k: the
    mapping of :func:`bagnet.data.classes.class_mapping`, which every command uses."""
    from ..data.classes import class_mapping

    return class_mapping(model_classes, num_outputs, data_classes, class_map=class_map, data_root=data_root,
                         label=label).as_list()


def load_classifier(
    spec: ModelSpec,
    data_classes: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    class_map: str | None = None,
    data_root: str | None = None,
) -> Classifier:
    """Build ``spec``'s model on ``device`` and map its outputs to ``data_classes``."""
    model = build_model(spec, num_classes=len(data_classes)).to(device)
    return make_classifier(spec, model, data_classes, class_map, data_root)


def make_classifier(
    spec: ModelSpec, model: nn.Module, data_classes: Sequence[str], class_map: str | None = None,
    data_root: str | None = None,
) -> Classifier:
    """Wrap a model built by :func:`build_model` with its normalization and class columns."""
    cfg = getattr(model, "pretrained_cfg", {})
    n_out = _num_outputs(model)
    cols = class_columns(cfg.get("classes"), n_out, data_classes, class_map, data_root, label=spec.label)
    return Classifier(
        spec.label, model.eval(), cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), cols,
        fingerprint=_fingerprint(spec, model),
    )


def _fingerprint(spec: ModelSpec, model: nn.Module) -> str:
    """Changes when the weights change (file size and time), so caches never serve stale outputs."""
    parts = [spec.label, getattr(model, "model_name", ""), json.dumps(getattr(model, "model_args", {}), sort_keys=True)]
    if spec.weights and spec.weights != "random":
        p = Path(spec.weights).expanduser()
        parts.append(str(spec.weights))
        if p.is_file():
            st = p.stat()
            parts += [str(st.st_size), str(st.st_mtime_ns)]
    else:
        # Random weights differ per process unless seeded; hash them so a cache never lies.
        h = hashlib.sha1()
        for t in model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes()[:4096])
        parts.append(h.hexdigest())
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
