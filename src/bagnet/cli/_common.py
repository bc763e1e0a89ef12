"""Argument groups shared by the sub-commands, and the helpers that resolve them."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import torch
from torch import nn

from .._device import resolve_device, resolve_dtype  # noqa: F401  (the sub-commands take them from here)

logger = logging.getLogger(__name__)


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False, training: bool = False) -> None:
    """``--model`` and ``--weights`` (and ``--weights-file``), resolved by :func:`resolve_model`.

    ``training``: the weights are a run's initial weights (no default model, no file copy).
    """
    g = parser.add_argument_group("model")
    if training:
        g.add_argument("--model", required=required, help="model to train (see `bagnet models`)")
        g.add_argument("--weights", default=None,
                       help="initial weights: a registered tag, a checkpoint path or URL (classes must match)")
        return
    g.add_argument("--model", required=required,
                   help="registered model or torchvision classifier (see `bagnet models`); alone, its published weights")
    g.add_argument(
        "--weights",
        default=None,
        help="a registered tag (imagenet, imagenette; alone it names its model), a model file, last.pt/best.pt or "
             "run folder of `bagnet train`, a model folder (model.safetensors + config.json) or hf-hub:ORG/NAME "
             "(these name their model too), a state dict, or a URL",
    )
    g.add_argument("--weights-file", default=None, metavar="PATH",
                   help="a local copy of the registered weights --weights names (checked against their hash)")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def add_dtype_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dtype`` of the evidence maps, resolved by :func:`map_dtype`."""
    parser.add_argument("--dtype", default="float32", metavar="float32|bfloat16|float16|auto",
                        help="arithmetic of the evidence maps: float32 (exact, default); bfloat16 or float16 are faster "
                             "on hardware with such units but approximate (docs/precision.md); auto picks bfloat16 "
                             "where the device has bfloat16 matrix units, and says so")


def map_dtype(name: str, device: torch.device | str, command: str) -> torch.dtype:
    """The torch dtype ``--dtype name`` means on ``device``; an ``auto`` choice of bfloat16 is
    said on stderr, since its maps are not float32's."""
    import sys

    dtype, line = resolve_dtype(name, device)
    if line:
        print(f"bagnet {command}: {line}", file=sys.stderr)
    return dtype


def resolve_model(args: argparse.Namespace, **kwargs: Any) -> nn.Module:
    """The model ``--model``/``--weights``/``--weights-file`` name.

    No model options: the default model (:func:`bagnet.models.default_model`, said on
    stderr). ``--weights`` alone: a file, run folder or URL that names its model, or a
    registered tag (which names its model). ``--model`` alone: its published weights.
    """
    from ..models import UnnamedWeightsError, create_model, default_model, load_model

    file = getattr(args, "weights_file", None)
    if file is not None and args.weights is None:
        raise ValueError("--weights-file needs --weights TAG, the registered weights it is a copy of")
    if args.model is None and args.weights is None:
        model, line = default_model()
        logger.info("model: %s", line)
        return model
    if args.model is None:
        try:
            return load_model(args.weights, file=file, **kwargs)
        except UnnamedWeightsError as e:
            raise ValueError(f"{e} with --model NAME") from None
    if args.weights is None:
        if not _has_published_weights(args.model):
            raise ValueError(f"{args.model} has no published weights; pass a trained model file with --weights")
        return create_model(args.model, pretrained=True, **kwargs)
    return create_model(args.model, pretrained=args.weights, file=file, **kwargs)


def _has_published_weights(name: str) -> bool:
    from ..models import list_models
    from ..models._weights import pretrained_tags

    return bool(pretrained_tags(name)) or name not in list_models()  # torchvision classifiers have theirs


def add_scale_arg(p: argparse._ActionsContainer) -> None:
    """``--scale image|V``: the colour scale of evidence figures (``explain``, ``demo``)."""
    p.add_argument(
        "--scale",
        default="image",
        metavar="image|V",
        help="colour scale of the heatmaps: 'image' (default) is one scale per image, shared by its classes (the "
             "99th percentile of |evidence| over its maps); a number V fixes it at +-V for every image, so colours "
             "compare across images",
    )


def parse_scale(value: str) -> float | None:
    """``None`` for one scale per image, else the fixed colour range."""
    if value == "image":
        return None
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"--scale takes 'image' or a positive number, got {value!r}")
    return v
