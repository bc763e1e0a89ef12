"""Argument groups shared by the sub-commands, and the helpers that resolve them."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._device import resolve_device, resolve_dtype  # noqa: F401  (the sub-commands take them from here)

logger = logging.getLogger(__name__)


MODEL_HELP = ("NAME (its published weights), NAME@WEIGHTS (a tag such as imagenette, a model file, run folder or URL), "
              "NAME@random (random weights, asked for), or a model file / run folder / model folder alone "
              "(see `bagnet models`)")


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
    g.add_argument("--model", required=required, metavar="SPEC", help=MODEL_HELP)
    g.add_argument(
        "--weights",
        default=None,
        help="a registered tag (imagenet, imagenette; alone it names its model), a model file, last.pt/best.pt or "
             "run folder of `bagnet train`, a model folder (model.safetensors + config.json) or hf-hub:ORG/NAME "
             "(these name their model too), a state dict, a URL, or 'random' (with --model)",
    )
    g.add_argument("--weights-file", default=None, metavar="PATH",
                   help="a local copy of the registered weights --weights names (checked against their hash)")


def add_data_args(parser: argparse.ArgumentParser, *, required: bool = True, labelled: bool = True,
                  split: bool = True, restrict: bool = True) -> argparse._ArgumentGroup:
    """The data options every command that reads an image folder shares, with one meaning.

    ``--data``, ``--split``, ``--class-map`` and ``--restrict-to-folder-classes`` (for
    labelled data), ``--img-size``, ``--max-images`` and ``--seed`` (one seeded,
    class-stratified subset: :func:`bagnet.data.folder.subset_indices`), ``--batch-size``
    and ``--workers``.
    """
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=required,
                   help="dataset folder" + (" (with --split sub-folder) of <class>/ folders" if split else ""))
    if split:
        g.add_argument("--split", default=None,
                       help="sub-folder of --data to use, '.' for --data itself; by default val/ where --data has "
                            "one, else --data itself when it holds class folders")
    if labelled:
        g.add_argument("--class-map", default=None, metavar="imagenet|FILE.tsv",
                       help="map folder names to model outputs ('imagenet': the dataset's classes.tsv); by default "
                            "by class name, or through the dataset's classes.tsv for ImageNet-1k models")
    if labelled and restrict:
        g.add_argument("--restrict-to-folder-classes", action="store_true",
                       help="choose each prediction among the folder's classes only, ignoring the model's other "
                            "outputs (the ImageNet-subset evaluation); by default predicting any other class is wrong")
    g.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="short side images are resized to (default: the size the model names, 192 px for the "
                        "shipped model; 224 if it names none)")
    g.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="use a seeded, class-stratified subset of N images: the same images in every command for "
                        "the same --seed and N (default: all)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the --max-images subset and of any other random choice (default: 0)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    g.add_argument("--workers", type=int, default=2, help="image-decoding processes (default: 2)")
    return g


def check_data_args(args: argparse.Namespace) -> None:
    """Refuse data options out of range, naming the option."""
    if getattr(args, "batch_size", 1) < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if getattr(args, "workers", 0) < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    n = getattr(args, "max_images", None)
    if n is not None and n < 1:
        raise ValueError(f"--max-images must be at least 1, got {n}")
    size = getattr(args, "img_size", None)
    if size is not None and size < 1:
        raise ValueError(f"--img-size must be a positive number of pixels, got {size}")


def data_folder(args: argparse.Namespace) -> Path:
    """``--data``/``--split`` as a folder of class folders, with errors that name the problem."""
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} does not exist" if not root.exists() else f"--data {root} is not a folder")
    split = getattr(args, "split", ".")
    if split is None:  # val/ of a data set, or a folder of class folders itself
        if (root / "val").is_dir():
            return root / "val"
        if (root / "train").is_dir():
            raise FileNotFoundError(f"{root} has train/ but no val/; pass --split train (or another sub-folder) "
                                    "to use it")
        return root
    folder = root if split in (".", "") else root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass --split NAME for another sub-folder of {root} "
                                "('.' for the folder itself)")
    return folder


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
    """The model ``--model``/``--weights``/``--weights-file`` name, in the one spec grammar
    (:mod:`bagnet.models._spec`).

    No model options: the default model (:func:`bagnet.models.default_model`, said on
    stderr). ``--weights`` alone: a file, run folder or URL that names its model, or a
    registered tag (which names its model). ``--model NAME`` alone: its published weights;
    ``NAME@random`` (or ``--weights random``): random weights.
    """
    from ..models import default_model
    from ..models._spec import Spec, load_spec, parse_spec

    file = getattr(args, "weights_file", None)
    if file is not None and args.weights is None and (args.model is None or "@" not in args.model):
        raise ValueError("--weights-file needs --weights TAG, the registered weights it is a copy of")
    if args.model is None and args.weights is None:
        model, line = default_model()
        logger.info("model: %s", line)
        return model
    spec = parse_spec(args.model, args.weights) if args.model is not None else Spec(None, args.weights)
    return load_spec(spec, file=file, **kwargs)


def check_img_size(model: nn.Module, img_size: int | None) -> None:
    """Refuse an ``--img-size`` below a BagNet's patch size: no patch would fit in the image."""
    q = getattr(model, "receptive_field", None)
    if img_size is not None and q and img_size < q:
        raise ValueError(f"--img-size {img_size} is smaller than the model's {q}x{q} px patches")


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
