"""``bagnet eval``: top-1, top-5, per-class accuracy, confusion matrix and speed on a folder.

The model's outputs are matched to the folder's classes by name. A prediction counts as
right only if it is the image's class: predicting one of the model's other classes is
wrong, also when the folder holds only some of them. ``--class-map imagenet`` names the
ImageNet-1k output of each WordNet-id class folder (e.g. Imagenette) from the data set's
``classes.tsv`` (``wnid<TAB>imagenet_index``), or ``--class-map FILE.tsv``; the model still
chooses among all its outputs. ``--restrict-to-folder-classes`` scores it among the
folder's classes only (the ImageNet-subset evaluation of papers); the output says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import plural
from ._common import add_device_args, add_model_args

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a model on an image folder", description=__doc__)
    p.add_argument("--data", required=True, help="dataset folder (with --split sub-folder) of <class>/ folders")
    p.add_argument("--split", default="val", help="sub-folder of --data to evaluate; '.' for --data itself")
    add_model_args(p)
    add_device_args(p)
    p.add_argument("--class-map", default=None, metavar="imagenet|FILE.tsv",
                   help="map folder names to model outputs ('imagenet': the dataset's classes.tsv)")
    p.add_argument("--restrict-to-folder-classes", action="store_true",
                   help="choose the prediction among the folder's classes only, ignoring the model's other "
                        "outputs (the ImageNet-subset evaluation); by default predicting any other class is wrong")
    p.add_argument("--img-size", type=int, default=None, help="default: the model's training size, else 224")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results here as JSON")
    p.add_argument("--fast", default=None, metavar="MODE",
                   help="also run the model in a faster inference mode (fused: exact; bf16: bfloat16) and report "
                        "its speed and how often its top-1 class agrees with float32's")
    p.set_defaults(func=run)


def output_index(model: nn.Module, classes: list[str], class_map: str | None, data_root: Path) -> list[int] | None:
    """For each dataset class, the model output that scores it (``None``: the same order).

    Raises:
        ValueError: the model's classes cannot be matched to the dataset's.
    """
    from ..data.folder import read_class_index

    num_outputs = model.num_classes
    if class_map is not None:
        tsv = data_root / "classes.tsv" if class_map == "imagenet" else Path(class_map)
        if class_map == "imagenet" and not tsv.is_file():
            raise FileNotFoundError(f"{tsv} does not exist; pass --class-map FILE.tsv (wnid<TAB>imagenet_index)")
        mapping = read_class_index(tsv)
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise ValueError(f"{tsv} has no entry for class folder(s) {', '.join(missing[:5])}")
        index = [mapping[c] for c in classes]
        bad = [i for i in index if not 0 <= i < num_outputs]
        if bad:
            raise ValueError(f"{tsv} maps to output {bad[0]}, but the model has {plural(num_outputs, 'output')}")
        twice = sorted({c for c, i in zip(classes, index) if index.count(i) > 1})
        if twice:
            raise ValueError(f"{tsv} maps class folders {', '.join(twice[:5])} to the same output")
        return index
    own = model.pretrained_cfg.get("classes")
    if own is None:
        if num_outputs != len(classes):
            raise ValueError(
                f"the model has {plural(num_outputs, 'output')} and no class names; the folder has {plural(len(classes), 'class')} "
                "(use --class-map for ImageNet models)"
            )
        logger.warning("the model carries no class names; assuming its outputs follow the folder order")
        return None
    own = list(own)
    if own == classes:
        return None
    missing = [c for c in classes if c not in own]
    if missing:
        hint = " (an ImageNet model? add --class-map imagenet)" if len(own) == 1000 else ""
        raise ValueError(
            f"the model's classes do not include the folder's {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}{hint}"
        )
    return [own.index(c) for c in classes]


def collect_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, index: list[int] | None, amp: str = "none"
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """All logits (restricted to the columns ``index`` unless ``None``) and targets of
    ``loader``; one per-batch loop.

    Returns:
        ``(logits [N, K], targets [N], skipped, seconds)``.
    """
    import torch

    from ..train.engine import iter_logits

    chunks, targets, skipped = [], [], 0
    start = time.perf_counter()
    for logits, y, n_skipped in iter_logits(model, loader, device, amp=amp, progress=True):
        skipped += n_skipped
        if y.numel():
            chunks.append(logits[:, index] if index is not None else logits)
            targets.append(y)
    seconds = time.perf_counter() - start
    k = len(index) if index is not None else model.num_classes
    logits = torch.cat(chunks) if chunks else torch.empty(0, k)
    return logits, torch.cat(targets) if targets else torch.empty(0, dtype=torch.long), skipped, seconds


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..data.folder import ImageFolder, collate_skip, eval_transform
    from ..train.metrics import classification_report
    from ._common import resolve_device, resolve_model

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be at least 1 and --workers 0 or more")
    if args.fast is not None:
        from ..models import INFERENCE_MODES

        if args.fast not in INFERENCE_MODES or args.fast == "plain":
            raise ValueError(f"--fast {args.fast!r} is not a fast mode; use one of "
                             f"{', '.join(m for m in INFERENCE_MODES if m != 'plain')}")
    data_root = Path(args.data)
    folder = data_root / args.split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass --split NAME for another sub-folder of {data_root}")
    device = resolve_device(args.device)
    model = resolve_model(args).to(device)
    cfg = model.pretrained_cfg
    img_size = args.img_size or cfg.get("img_size") or 224
    dataset = ImageFolder(folder, transform=eval_transform(img_size, cfg["mean"], cfg["std"]))
    classes = list(dataset.classes)
    index = output_index(model, classes, args.class_map, data_root)
    # Restricted: only the folder's columns are kept, and column k is class k. Otherwise the
    # model chooses among all its outputs, and `index` says which one is each class's.
    restrict = index if args.restrict_to_folder_classes else None
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip,
                        pin_memory=device.type == "cuda")
    logits, targets, skipped, seconds = collect_logits(model, loader, device, restrict)
    report = classification_report(logits, targets, classes, None if restrict is not None else index)
    report.update(
        model=getattr(model, "model_name", args.model),
        weights=args.weights,
        data=str(folder),
        img_size=img_size,
        class_map=args.class_map,
        model_outputs=model.num_classes,
        restricted_to_folder_classes=bool(args.restrict_to_folder_classes),
        scored_among=logits.shape[1],
        skipped=skipped,
        seconds=seconds,
        images_per_s=report["images"] / seconds if seconds > 0 else 0.0,
    )
    if args.fast:
        report["fast"] = evaluate_fast(model, args.fast, loader, device, restrict, index, logits, targets)
    print_report(report, classes)
    if args.json:
        from .._io import write_text

        out = write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"json: {out}")
    return 0


def evaluate_fast(model: nn.Module, mode: str, loader: DataLoader, device: torch.device, restrict: list[int] | None,
                  index: list[int] | None, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Top-1 accuracy, speed and top-1 agreement with the float32 ``logits`` of ``model`` run
    in the inference mode ``mode`` (see ``bagnet bench``), scored as ``bagnet eval`` scores:
    among the columns ``restrict`` only if given, else among all outputs, class k's being
    ``index[k]`` (``None``: output k)."""
    import torch

    from ..models import INFERENCE_MODES, prepare_for_inference, top1_agreement

    fast = prepare_for_inference(model, **INFERENCE_MODES[mode])
    fast_logits, fast_targets, _, seconds = collect_logits(fast, loader, device, restrict)
    n = len(fast_targets)
    if n == 0:
        raise ValueError(f"--fast {mode}: no readable images to compare on")
    right = fast_targets if restrict is not None or index is None else torch.as_tensor(index)[fast_targets]
    return {
        "mode": mode,
        "top1": 100.0 * (fast_logits.argmax(1) == right).sum().item() / n,
        "top1_agreement": 100.0 * top1_agreement(logits, fast_logits),
        "max_abs_logit_diff": (fast_logits - logits).abs().max().item(),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }


def print_report(report: dict, classes: list[str]) -> None:
    print(f"{report['model']} on {report['data']} ({plural(report['images'], 'image')} at {report['img_size']} px"
          + (f", {report['skipped']} unreadable skipped" if report["skipped"] else "") + ")")
    print(f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  {report['images_per_s']:.1f} images/s")
    print(scoring_note(report["scored_among"], len(classes), report["model_outputs"],
                       report["restricted_to_folder_classes"]))
    fast = report.get("fast")
    if fast:
        print(f"--fast {fast['mode']}: top-1 {fast['top1']:.2f}%  {fast['images_per_s']:.1f} images/s  "
              f"top-1 agrees with float32 on {fast['top1_agreement']:.2f}% of images "
              f"(largest logit difference {fast['max_abs_logit_diff']:.3g})")
    width = max(len("class"), *(len(c) for c in classes))
    print(f"\n{'class'.ljust(width)}  images  top-1")
    for name in classes:
        row = report["per_class"][name]
        acc = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        print(f"{name.ljust(width)}  {row['images']:>6}  {acc:>6}")
    if len(classes) <= 20:
        cm = report["confusion"]
        cell = max(6, len(str(max(max(r) for r in cm))) + 1)
        other = len(report["confusion_columns"]) > len(classes)
        print("\nconfusion (rows: true class, columns: predicted, in the order above"
              + (", then 'other': any of the model's other outputs" if other else "") + ")")
        if other:
            print(" " * width + " " * (cell * len(classes)) + "other".rjust(cell))
        for name, row in zip(classes, cm):
            print(name.ljust(width) + "".join(str(v).rjust(cell) for v in row))


def scoring_note(scored_among: int, num_classes: int, outputs: int, restricted: bool) -> str:
    """One line that says among which outputs predictions were chosen."""
    if outputs == num_classes:
        return f"scored among the model's {plural(outputs, 'output')}, one per folder class"
    if restricted:
        return (f"RESTRICTED: predictions chosen among the folder's {plural(scored_among, 'class')} only, "
                f"ignoring the model's {outputs - scored_among} other outputs (--restrict-to-folder-classes)")
    return (f"scored among all {plural(outputs, 'output')}: predicting any of the {outputs - num_classes} "
            "classes not in the folder counts as wrong (--restrict-to-folder-classes to ignore them)")
