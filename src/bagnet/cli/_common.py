"""Argument groups shared by the sub-commands, and the helpers that resolve them."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from .._device import resolve_device  # noqa: F401  (the sub-commands take it from here)


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--model`` and ``--weights``. With a bagnet model file, ``--model`` may be left out."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", required=required, help="registered model name (see `bagnet models`)")
    g.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (published weights), another registered tag, or a checkpoint path or URL",
    )


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def resolve_model(args: argparse.Namespace, **kwargs) -> nn.Module:
    """Build the model that ``--model``/``--weights`` name."""
    from ..models import create_model, load_model

    weights = args.weights
    if args.model is None:
        if weights is None or not Path(weights).is_file():
            raise ValueError("name a model with --model, or pass a bagnet model file with --weights")
        return load_model(weights, **kwargs)
    return create_model(args.model, pretrained=weights or False, **kwargs)
