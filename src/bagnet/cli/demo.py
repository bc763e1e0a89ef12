"""``bagnet demo``: explain some photos and write one self-contained HTML report.

Without ``--data`` it explains the sample photos that ship with scikit-image, using the
small Imagenette BagNet that ships with bagnet: no network needed. With ``--data`` it
explains the images of a folder; if the folder has one sub-folder per class whose names
match the model's classes, the report adds accuracy and the misclassified images. The model
chooses among all its classes, as ``bagnet eval`` scores it; ``--restrict-to-folder-classes``
chooses among the folder's classes only (the ImageNet-subset evaluation), and the report
says so.
``--weights imagenet`` uses the published ImageNet BagNet-33 (downloaded once).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import plural
from ._common import add_device_args, add_model_args, add_scale_arg, resolve_model

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

_SPLITS = {"train", "val", "test"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="explain sample photos (or --data) in one HTML report",
        description=__doc__,
    )
    p.add_argument("--out", default="bagnet-demo", help="folder for report.html (default: bagnet-demo)")
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="images to explain: a folder of <class>/ folders (labelled) or of images")
    add_model_args(p)
    add_device_args(p)
    p.add_argument("--max-images", type=int, default=100,
                   help="images classified from --data: a seeded, class-stratified subset of N, the same images as "
                        "other commands' --max-images N with the same --seed (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-images subset (default: 0)")
    p.add_argument("--show", type=int, default=6, help="images explained in detail, and misclassified ones shown (default: 6)")
    p.add_argument("--top", type=int, default=3, help="classes per image whose evidence is drawn (default: 3)")
    p.add_argument("--res", choices=("full", "native"), default="full", help="resolution of the drawn maps (default: full)")
    p.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="short side images are resized to (default: the size the model names, 192 px for the "
                        "shipped model; 224 if it names none)")
    add_scale_arg(p)
    p.add_argument("--restrict-to-folder-classes", action="store_true",
                   help="with labelled --data: predict among the folder's classes only, ignoring the model's other "
                        "outputs (the ImageNet-subset evaluation); by default predicting any other class is wrong")
    p.epilog = ("Without --model/--weights: the authors' ImageNet BagNet-33 if its weights are already in the torch hub "
                "cache (nothing is downloaded to find out), else the shipped Imagenette model; --weights imagenet uses "
                "(and downloads once) BagNet-33. The output starts with the classes the model knows; a prediction "
                "the model's calibrated check finds unlike all of them is flagged 'probably none of the N classes "
                "this model knows'.")
    p.set_defaults(func=run)


def resolve_demo_model(args: argparse.Namespace) -> nn.Module:
    """The model of ``--model``/``--weights``, or the default model (see :func:`resolve_model`)."""
    return resolve_model(args)


def run(args: argparse.Namespace) -> int:
    from ..app import Explorer
    from ..app.report import build_report, known_classes, unknown_note, write_report
    from ._common import parse_scale, resolve_device

    for name in ("max_images", "show", "top"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    vmax = parse_scale(args.scale)
    device = resolve_device(args.device)
    model = resolve_demo_model(args)
    names = None
    if args.data is None:
        items, source, outputs, notes = _sample_items(model), "sample photos from scikit-image and a drawn golf ball", None, []
    else:
        items, source, outputs, notes = _folder_items(Path(args.data), model, args.max_images, args.seed)
        names = _readable_names(model, Path(args.data))
        if not args.restrict_to_folder_classes:
            outputs = None  # the labels stay mapped; the prediction is the best of all outputs
    explorer = Explorer(model, class_names=names, device=device, img_size=args.img_size)
    # First what the model can and cannot say, so no answer below is read as more than it is.
    print(known_classes(explorer.classes, who=explorer.model_name), flush=True)
    print(unknown_note(model), flush=True)
    for note in notes:
        logger.warning("%s", note)
    report = build_report(
        explorer, items, title="bagnet demo", source=source, top=args.top, show=args.show,
        res=args.res, label_outputs=outputs, notes=notes, vmax=vmax,
    )
    path = write_report(report, Path(args.out) / "report.html")
    flagged = [p for p in report.predictions if p["unknown"] is not None and p["unknown"].flag]
    if args.data is None or len(report.predictions) <= args.show:
        for p in report.predictions:
            flag = f"  <- {p['unknown'].message}" if p in flagged else ""
            subject = f"  [{p['subject']}]" if p["subject"] else ""
            print(f"{p['name']}: {p['prediction']} {100 * p['probability']:.1f}%{flag}{subject}")
    elif flagged:
        print(f"{len(flagged)} of {plural(len(report.predictions), 'image')}: {flagged[0]['unknown'].message}")
    if report.accuracy:
        acc = ", ".join(f"{k} {v:.1f}%" for k, v in report.accuracy.items())
        print(f"{acc} on {plural(report.num_images, 'image')}; {len(report.misclassified)} misclassified; {report.scoring}")
    print(f"{plural(report.num_images, 'image')}, {report.seconds['total']:.1f} s; report: {path}")
    return 0


def _sample_items(model: nn.Module):
    """The sample photos, each saying what it shows and whether ``model``'s classes hold it:
    the model's own flag catches only some photos of other things."""
    from ..app import SAMPLE_NAMES, sample_image
    from ..app.report import DemoItem
    from ..app.samples import sample_note, sample_subject
    from ..explain._explain import class_names

    names = class_names(model)
    known = {c.casefold() for c in names}
    items = []
    for name in SAMPLE_NAMES:
        outside = not any(label.casefold() in known for label in sample_subject(name).labels)
        items.append(DemoItem(name, sample_image(name), subject=sample_note(name, names), outside=outside))
    return items


def _folder_items(root: Path, model, max_images: int, seed: int = 0):
    """``(items, source, label_outputs, notes)`` for ``--data``; labelled when possible."""
    from ..app.report import DemoItem
    from ..data.classes import class_mapping
    from ..data.folder import ImageFolder, stratified_order, subset_indices
    from ..data.images import is_image_file

    if not root.is_dir():
        raise FileNotFoundError(f"--data folder {root} does not exist")
    subdirs = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    if "val" in subdirs and subdirs <= _SPLITS:
        root = root / "val"  # a dataset root with train/val splits: explain the held-out one
    notes: list[str] = []
    try:
        folder = ImageFolder(root)
    except ValueError:  # no class folders: a flat folder of images
        folder = None
    if folder is None:
        paths = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        if not paths:
            raise ValueError(f"{root} holds no images (nor class folders of images)")
        picked = [(p, None) for p in paths]
        if len(picked) > max_images:
            notes.append(f"{plural(len(picked), 'image')} found; a seeded subset of {max_images} is used "
                         "(--max-images, --seed)")
            picked = [picked[i] for i in subset_indices([0] * len(picked), max_images, seed)]
        outputs = None
    else:
        try:
            mapping = class_mapping(model.pretrained_cfg.get("classes"), model.num_classes, folder.classes,
                                    data_root=root)
            outputs = list(mapping.index)
        except ValueError as e:
            notes.append(f"labels ignored: {e}")
            outputs = None
        # The --max-images subset of every command, in its interleaved order: the first
        # images shown come from different classes.
        chosen = stratified_order(folder.targets, seed)[:max_images]
        if len(chosen) < len(folder.samples):
            notes.append(f"{plural(len(folder.samples), 'image')} found; a class-stratified subset of {max_images} "
                         "is used (--max-images, --seed)")
        picked = [(Path(folder.samples[i][0]), outputs[folder.samples[i][1]] if outputs is not None else None)
                  for i in chosen]
    items = [DemoItem(str(path.relative_to(root)), path, label) for path, label in picked]
    return items, f"images from {root}", outputs, notes


def _readable_names(model, data: Path) -> list[str] | None:
    """Display names from the data set's ``classes.tsv`` (next to or above ``data``) for a
    model whose classes are that file's WordNet ids and whose file names none itself."""
    from ..data.folder import read_class_names

    cfg = model.pretrained_cfg
    if cfg.get("class_names") or not cfg.get("classes"):
        return None
    for root in (data, data.parent):
        names = read_class_names(root, list(cfg["classes"]))
        if names:
            return names
    return None
