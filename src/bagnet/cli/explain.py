"""``bagnet explain``: class-evidence heatmaps and top patches of images, as PNG + JSON.

For every IMAGE, writes ``OUT/<name>.png`` (the image and one heatmap per explained class,
most predictive patches outlined) and ``OUT/<name>.json`` (top predictions with
probabilities, and per explained class its top patches with boxes and scores).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .._io import atomic_path, write_text
from .._text import plural
from ._common import add_device_args, add_model_args, resolve_device, resolve_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="class-evidence heatmaps and top patches of images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, TIFF, ...)")
    add_model_args(p)
    g = p.add_argument_group("explanation")
    g.add_argument(
        "--classes",
        nargs="+",
        default=["top3"],
        metavar="top3|IDX",
        help="'topN' for the N most probable classes, or class indices (default: top3)",
    )
    g.add_argument("--stride", default="1", help="1 (full resolution, default), 'native' (the model's), or N")
    g.add_argument("-k", "--patches", dest="k", type=int, default=5, help="top patches per class (default 5)")
    g.add_argument("--out", default="out/explain", help="output folder (default: out/explain)")
    add_device_args(p)
    p.set_defaults(func=run)


def _parse_classes(values: list[str]) -> str | list[int]:
    if len(values) == 1 and re.fullmatch(r"top\d+", values[0]):
        if int(values[0][3:]) < 1:
            raise ValueError("--classes topN needs N >= 1")
        return values[0]
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--classes takes 'topN' or class indices, got {' '.join(values)}") from None


def _parse_stride(value: str) -> int | str:
    if value == "native":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"--stride takes 1, 'native' or a positive integer, got {value!r}")


def run(args: argparse.Namespace) -> int:
    from ..explain import EvidenceMapper, explain

    classes = _parse_classes(args.classes)
    stride = _parse_stride(args.stride)
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    device = resolve_device(args.device)
    model = resolve_model(args).to(device)
    if isinstance(classes, list):
        bad = [c for c in classes if not 0 <= c < model.num_classes]
        if bad:
            raise ValueError(f"class index {bad[0]} is out of range for a model with {plural(model.num_classes, 'class')}")
    mapper = EvidenceMapper(model, stride=stride)  # fold the weights once for all images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    failed, used = 0, set()
    for image in args.images:
        try:
            result = explain(model, image, classes=classes, k=args.k, mapper=mapper)
        except (ValueError, FileNotFoundError, IsADirectoryError) as e:  # ImageError is a ValueError
            failed += 1
            reason = f"no such file: {image}" if isinstance(e, FileNotFoundError) else str(e).splitlines()[0]
            print(f"bagnet explain: error: {reason}", file=sys.stderr)
            continue
        name = _unique_stem(Path(image), used)
        record = {"file": str(image), **result.to_dict()}
        fig, _ = result.plot()
        png, js = out / f"{name}.png", out / f"{name}.json"
        text = json.dumps(record, indent=2) + "\n"
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        write_text(js, text)
        top = result.predictions[0]
        print(f"{image}: {top.name} ({top.probability:.3f}) -> {png}, {js}")
    if failed:
        print(f"bagnet explain: {failed} of {plural(len(args.images), 'image')} failed", file=sys.stderr)
    return 1 if failed else 0


def _unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, made unique among this run's outputs (a.jpg and a.png both exist)."""
    stem, n = path.stem or "image", 2
    name = stem
    while name in used:
        name, n = f"{stem}-{n}", n + 1
    used.add(name)
    return name
