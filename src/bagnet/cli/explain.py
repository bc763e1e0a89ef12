"""``bagnet explain``: class-evidence heatmaps and top patches of images, as PNG + JSON.

For every IMAGE (or every image in a FOLDER, searched recursively), writes
``OUT/<name>.png`` (the image and one heatmap per explained class, most predictive
patches outlined) and ``OUT/<name>.json`` (top predictions with probabilities, and per
explained class its top patches with boxes and scores). Images from a folder keep their
path relative to it under OUT.

Positions in the JSON are x before y: points [x, y], sizes [width, height], boxes
[x0, y0, x1, y1] (x1, y1 excluded), in the original image's pixels; keys ending in
``_resized`` give the same in the resized frame the model saw (``resized_size``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from pathlib import Path

from .._io import atomic_path, check_writable, write_text
from .._text import plural
from ._common import (
    add_device_args,
    add_dtype_arg,
    add_model_args,
    add_scale_arg,
    check_img_size,
    map_dtype,
    parse_scale,
    resolve_device,
    resolve_model,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="class-evidence heatmaps and top patches of images", description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, WebP, BMP, TIFF, ...) or folders of them")
    add_model_args(p)
    g = p.add_argument_group("explanation")
    g.add_argument(
        "--classes",
        nargs="+",
        default=["top3"],
        metavar="top3|IDX|NAME",
        help="'topN' for the N most probable classes, or classes by index or name, e.g. 0 'golf ball' (default: top3)",
    )
    g.add_argument("--img-size", type=int, default=None,
                   metavar="PX",
                   help="short side images are resized to (default: the size the model names, 192 px for the "
                        "shipped model; 224 if it names none)")
    g.add_argument("--stride", default="1", help="1 (full resolution, default), 'native' (the model's), or N")
    g.add_argument("-k", "--patches", dest="k", type=int, default=5, help="top patches per class (default: 5)")
    g.add_argument("--patch-source", default="model", choices=("model", "map"),
                   help="model (default): list the model's own patches, whose mean evidence is the logit (all wholly "
                        "inside the image); map: any entry of the heatmap, including windows that reach past the "
                        "image edge and see zero padding (marked \"padded\" in the JSON)")
    g.add_argument("--max-gmacs", type=float, default=None, metavar="N",
                   help="refuse images whose logits and maps would cost more than N GMACs (multiply-adds; default: "
                        "4000, about a minute or more on a CPU); 0 for no limit")
    add_scale_arg(g)
    g.add_argument("--out", default="out/explain", help="output folder (default: out/explain)")
    g.add_argument("--certify-patch", default=None, metavar="SIZE",
                   help="also say whether the prediction is certified against any sticker of this size (pixels, or "
                        "a share of the image area such as 2%%), with the window the masking removed (JSON 'certified')")
    g.add_argument("--certify-defense", default=None, choices=("mask", "clip"),
                   help="the defence --certify-patch certifies: mask (PatchGuard) or clip (Clipped BagNet, squashing "
                        "with the model's own training squashing, else tanh(1 * x - 2) as docs/ROBUSTNESS.md "
                        "recommends; the JSON says which) (default: mask)")
    add_dtype_arg(g)
    add_device_args(p)
    p.set_defaults(func=run)


def _parse_classes(values: list[str], model) -> str | list[int]:
    """``topN``, or class indices for indices and names (display or folder names, any case)."""
    from ..explain._explain import class_names

    if len(values) == 1 and re.fullmatch(r"top\d+", values[0]):
        if int(values[0][3:]) < 1:
            raise ValueError("--classes topN needs N >= 1")
        return values[0]
    n = model.num_classes
    names = {}  # lower-case name -> indices
    for i, name in enumerate(class_names(model)):
        names.setdefault(name.lower(), set()).add(i)
    for i, name in enumerate(model.pretrained_cfg.get("classes") or []):
        names.setdefault(str(name).lower(), set()).add(i)
    out = []
    for v in values:
        if re.fullmatch(r"\d+", v):
            if int(v) >= n:
                raise ValueError(f"class index {v} is out of range for a model with {plural(n, 'class')}")
            out.append(int(v))
        elif re.fullmatch(r"top\d+", v):
            raise ValueError(f"--classes {v} cannot be combined with other classes")
        elif len(names.get(v.lower(), ())) == 1:
            out.extend(names[v.lower()])
        elif v.lower() in names:
            found = sorted(names[v.lower()])
            raise ValueError(f"--classes {v!r} names several classes ({', '.join(map(str, found))}); give the index")
        else:
            close = difflib.get_close_matches(v.lower(), list(names), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"--classes: the model has no class {v!r} (give 'topN', indices or class names){hint}")
    return out


def _inputs(paths: list[str]):
    """``(path, output name or None)`` for every image; a folder's images are named by their
    path relative to it, a file given directly by its stem. Folders without images are
    reported as ``(folder, None)`` too, and fail when read."""
    from ..data.images import is_image_file

    for arg in paths:
        root = Path(arg)
        if not root.is_dir():
            yield arg, None
            continue
        found = sorted(
            f for f in root.rglob("*")
            if f.is_file() and is_image_file(f) and not any(part.startswith(".") for part in f.relative_to(root).parts)
        )
        if not found:
            yield arg, None  # explain() reports that it is a folder
        for f in found:
            yield str(f), f.relative_to(root).with_suffix("").as_posix()


def _parse_stride(value: str) -> int | str:
    if value == "native":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"--stride takes 1, 'native' or a positive integer, got {value!r}")


def run(args: argparse.Namespace) -> int:
    from ..explain import EvidenceMapper, MapCostError, explain

    check_writable(args.out, "--out", folder=True)
    if args.certify_defense is not None and args.certify_patch is None:
        raise ValueError("--certify-defense chooses the defence of --certify-patch SIZE; add --certify-patch")
    args.certify_defense = args.certify_defense or "mask"
    stride = _parse_stride(args.stride)
    vmax = parse_scale(args.scale)
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    max_macs = _max_macs(args.max_gmacs)
    device = resolve_device(args.device)
    dtype = map_dtype(args.dtype, device, "explain")
    model = resolve_model(args).to(device)
    classes = _parse_classes(args.classes, model)
    check_img_size(model, args.img_size)
    if args.certify_patch is not None and not callable(getattr(model, "patch_logits", None)):
        raise ValueError("--certify-patch needs a BagNet")
    if args.certify_patch is not None:  # an unreadable size fails once, not once per image
        from ..robust import patch_pixels

        patch_pixels(args.certify_patch, 2**31)
    mapper = EvidenceMapper(model, stride=stride, dtype=dtype)  # fold the weights once for all images
    # Outputs in a narrower type than float32 say so on the figure and the terminal line too.
    narrow = str(mapper.dtype).removeprefix("torch.")
    narrow = "" if narrow in ("float32", "float64") else narrow
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    failed = total = 0
    used: set[str] = set()
    for image, relative in _inputs(args.images):
        total += 1
        try:
            result = explain(model, image, classes=classes, k=args.k, mapper=mapper, img_size=args.img_size,
                             patch_source=args.patch_source, max_macs=max_macs, progress=_Progress(image))
        except (ValueError, FileNotFoundError, IsADirectoryError) as e:  # ImageError is a ValueError
            failed += 1
            reason = f"no such file: {image}" if isinstance(e, FileNotFoundError) else str(e).splitlines()[0]
            if isinstance(e, MapCostError):
                reason = f"{image}: {e.cli_message}"
            if Path(image).is_dir():
                reason = f"{image}: a folder without images (searched recursively for JPEG, PNG, ...)"
            print(f"bagnet explain: error: {reason}", file=sys.stderr)
            continue
        name = _unique(relative or Path(image).stem or "image", used)
        scale = vmax if vmax is not None else result.colour_scale()
        # The dtype goes with the numbers: bfloat16 maps and logits are close to float32's, not equal.
        record = {"file": str(image), "dtype": str(dtype).removeprefix("torch."), **result.to_dict(),
                  "colour_scale": {"vmax": scale, "set_by": "--scale" if vmax is not None else "image"}}
        if args.certify_patch:
            try:
                record["certified"] = _certificate(model, result, record, args.certify_patch, args.certify_defense)
            except ValueError as e:  # e.g. masking a patch that covers the whole evidence map: no prediction
                failed += 1
                print(f"bagnet explain: error: {image}: {str(e).splitlines()[0]}", file=sys.stderr)
                continue
        fig, _ = result.plot(vmax=vmax)  # None: the same per-image scale, and the caption says how it was set
        if narrow:
            fig.text(0.003, 0.005, f"computed in {narrow} (approximate)", ha="left", va="bottom", fontsize=7,
                     color="0.35")
        png, js = out / f"{name}.png", out / f"{name}.json"
        png.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2) + "\n"
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        write_text(js, text)
        top = result.predictions[0]
        flag = f" ({result.unknown.message})" if result.unknown is not None and result.unknown.flag else ""
        flag += "".join(f" [warning: {w}]" for w in result.warnings)
        print(f"{image}: {top.name} ({top.probability:.3f}){flag}{f' [{narrow}]' if narrow else ''} -> {png}, {js}")
        if args.certify_patch:
            print(f"  {_certified_line(record['certified'])}")
    if failed:
        print(f"bagnet explain: {failed} of {plural(total, 'image')} failed", file=sys.stderr)
    return 1 if failed else 0


def _max_macs(gmacs: float | None) -> int | None:
    """``--max-gmacs`` in multiply-adds (``None``: no limit)."""
    from ..explain._cost import DEFAULT_MAX_MACS

    if gmacs is None:
        return DEFAULT_MAX_MACS
    if not gmacs >= 0:  # also NaN
        raise ValueError(f"--max-gmacs must be 0 (no limit) or a positive number, got {gmacs}")
    return None if gmacs == 0 else round(gmacs * 1e9)


# Images whose passes cost more multiply-adds than this (some seconds on a CPU) show progress.
PROGRESS_MACS = 200 * 10**9


class _Progress:
    """Progress of one image's passes on stderr, for those that take a while: one line
    updated in place on a terminal, else a line at the start and at every further tenth."""

    def __init__(self, image: str):
        self.image, self.start, self.shown, self.tty = image, time.monotonic(), -1, sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if total < PROGRESS_MACS:
            return
        tenth = min(10, 10 * done // total)
        if not self.tty and tenth <= self.shown:
            return
        self.shown = tenth
        line = (f"  {self.image}: {100 * done / total:3.0f}% of about {total / 1e9:,.0f} GMACs "
                f"({time.monotonic() - self.start:.0f} s)")
        if self.tty:
            print(f"\r{line}", end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, made unique among this run's outputs (a.jpg and a.png both exist)."""
    n = 2
    name = stem
    while name in used:
        name, n = f"{stem}-{n}", n + 1
    used.add(name)
    return name


def _certificate(model, result, record: dict, patch: str, defense: str) -> dict:
    """The ``certified`` entry of the JSON: is the defended prediction of the image the model
    saw provably immune to any ``patch`` sticker, and (mask) which window was removed or
    (clip) which squashing was used and why.

    Raises:
        ValueError: a bad patch size, or for mask a patch whose window covers the whole
            evidence map (masking would leave nothing to predict from).
    """
    import torch

    from ..explain._explain import certificate_record
    from ..robust import certify

    cfg = model.pretrained_cfg
    mean, std = (torch.as_tensor(cfg[k], dtype=torch.float32).reshape(3, 1, 1) for k in ("mean", "std"))
    device = next(model.parameters()).device
    x = ((result.image - mean) / std)[None].to(device)
    with torch.no_grad():  # certify() computes the evidence in eval mode and restores the modes
        cert = certify(model, x, patch_size=patch, defense=defense)
    return certificate_record(cert, 0, patch=patch, class_names=result.class_names,
                              receptive_field=model.receptive_field, patch_stride=model.patch_stride,
                              resized_size=record["resized_size"], analysed_box=record["analysed_box"])


def _certified_line(c: dict) -> str:
    verdict = "CERTIFIED" if c["certified"] else "not certified"
    squashing = f"; squashing {c['squashing']}, {c['squashing_source']}" if c.get("squashing") else ""
    return (f"{c['defense']}-defended prediction {c['prediction']['name']}: {verdict} against any "
            f"{c['patch_px_resized']} x {c['patch_px_resized']} px sticker ({c['patch']}; margin {c['margin']:.3g}"
            f"{squashing})")
