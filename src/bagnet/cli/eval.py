"""``bagnet eval``: top-1, top-5, per-class accuracy, confusion matrix and speed on a folder.

Images are preprocessed as every other command does (the model's own preprocessing,
:class:`bagnet.data.transforms.Preprocessing`: for bagnet's models the whole image, its
short side resized to the model's size), and the folder's classes are matched to the
model's outputs by the one rule of :func:`bagnet.data.classes.class_mapping` (by name; an
ImageNet-1k model on WordNet-id folders through the data set's ``classes.tsv``;
``--class-map FILE.tsv`` otherwise). A prediction counts as right only if it is the
image's class: predicting one of the model's other classes is wrong, also when the folder
holds only some of them. ``--restrict-to-folder-classes`` scores it among the folder's
classes only (the ImageNet-subset evaluation of papers); the output says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import plural
from ..data.classes import scoring_note
from ._common import add_data_args, add_device_args, add_model_args

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a model on an image folder", description=__doc__)
    add_data_args(p)
    p.add_argument("--subset", choices=("auto", "held-out", "all"), default="auto",
                   help="on the folder a model was trained on with --val-split: 'held-out' scores only the images "
                        "it held out, 'all' every image (with a warning counting those it was trained on); 'auto' "
                        "(default) is 'held-out' there and 'all' elsewhere")
    add_model_args(p)
    add_device_args(p)
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results here as JSON")
    p.add_argument("--predictions", default=None, metavar="OUT.csv",
                   help="also write every image's prediction here (path, label, prediction, probability, correct)")
    p.add_argument("--fast", default=None, metavar="MODE",
                   help="also run the model in a faster inference mode (fused: exact; bf16: bfloat16) and report "
                        "its speed and how often its top-1 class agrees with float32's")
    p.set_defaults(func=run)


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
    import torch
    from torch.utils.data import DataLoader

    from .._io import check_writable
    from ..data.classes import class_mapping
    from ..data.folder import ImageFolder, collate_skip, subset_indices
    from ..data.transforms import Preprocessing
    from ..train.metrics import classification_report
    from ..train.split import eval_selection
    from ._common import check_data_args, check_img_size, data_folder, resolve_device, resolve_model

    check_data_args(args)
    for option, path in (("--json", args.json), ("--predictions", args.predictions)):
        if path:
            check_writable(path, option)
    if args.fast is not None:
        from ..models import INFERENCE_MODES

        if args.fast not in INFERENCE_MODES or args.fast == "plain":
            raise ValueError(f"--fast {args.fast!r} is not a fast mode; use one of "
                             f"{', '.join(m for m in INFERENCE_MODES if m != 'plain')}")
    folder = data_folder(args)
    device = resolve_device(args.device)
    model = resolve_model(args).to(device)
    check_img_size(model, args.img_size)
    cfg = model.pretrained_cfg
    pre = Preprocessing.from_cfg(cfg, args.img_size)
    dataset = ImageFolder(folder, transform=pre)
    classes = list(dataset.classes)
    mapping = class_mapping(cfg.get("classes"), model.num_classes, classes, class_map=args.class_map,
                            data_root=folder)
    index = mapping.as_list()
    # Restricted: only the folder's columns are kept, and column k is class k. Otherwise the
    # model chooses among all its outputs, and `index` says which one is each class's.
    restrict = list(mapping.index) if args.restrict_to_folder_classes else None
    # A folder the model was trained on with --val-split: the images it held out (or all, with a warning).
    selection = eval_selection(cfg, folder, dataset.samples, args.subset)
    pool = selection.indices if selection.indices is not None else list(range(len(dataset)))
    chosen = [pool[i] for i in subset_indices([dataset.targets[j] for j in pool], args.max_images, args.seed)]
    # Each item carries its position in `chosen` instead of its label, so every prediction
    # stays tied to its file, also when unreadable images drop out of a batch.
    loader = DataLoader(_Positions(dataset, chosen), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate_skip, pin_memory=device.type == "cuda")
    labels = torch.as_tensor([dataset.targets[j] for j in chosen], dtype=torch.long)
    logits, positions, skipped, seconds = collect_logits(model, loader, device, restrict)
    targets = labels[positions]
    report = classification_report(logits, targets, classes, None if restrict is not None else index)
    report.update(
        command=shlex.join(["bagnet", "eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else None,
        model=getattr(model, "model_name", args.model),
        weights=args.weights,
        data=str(folder),
        img_size=pre.img_size,
        preprocessing=pre.describe(),
        class_map=args.class_map,
        class_mapping=mapping.how,
        model_outputs=model.num_classes,
        restricted_to_folder_classes=bool(args.restrict_to_folder_classes),
        scored_among=logits.shape[1],
        scoring=scoring_note(model.num_classes, len(classes), bool(args.restrict_to_folder_classes)),
        max_images=args.max_images,
        seed=args.seed,
        folder_images=len(dataset),
        val_split=selection.info,
        skipped=skipped,
        seconds=seconds,
        images_per_s=report["images"] / seconds if seconds > 0 else 0.0,
    )
    if args.fast:
        report["fast"] = evaluate_fast(model, args.fast, loader, device, restrict, index, logits, labels)
    if args.predictions:
        _write_predictions(args.predictions, folder, dataset, [chosen[int(k)] for k in positions], logits, targets,
                           index if restrict is None else None, model, classes)
    for line in selection.lines:
        print(line)
    print_report(report, classes)
    if args.json:
        from .._io import write_text

        out = write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"json: {out}")
    return 0


def evaluate_fast(model: nn.Module, mode: str, loader: DataLoader, device: torch.device, restrict: list[int] | None,
                  index: list[int] | None, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 accuracy, speed and top-1 agreement with the float32 ``logits`` of ``model`` run
    in the inference mode ``mode`` (see ``bagnet bench``), scored as ``bagnet eval`` scores:
    among the columns ``restrict`` only if given, else among all outputs, class k's being
    ``index[k]`` (``None``: output k). ``loader`` yields positions into ``labels``."""
    import torch

    from ..models import INFERENCE_MODES, prepare_for_inference, top1_agreement

    fast = prepare_for_inference(model, **INFERENCE_MODES[mode])
    fast_logits, positions, _, seconds = collect_logits(fast, loader, device, restrict)
    fast_targets = labels[positions]
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


class _Positions:
    """``dataset[chosen[k]]`` as ``(image, k)``: the label is looked up afterwards, by position."""

    def __init__(self, dataset, chosen: list[int]):
        self.dataset, self.chosen = dataset, chosen

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, k: int):
        item = self.dataset[self.chosen[k]]
        return None if item is None else (item[0], k)


def _write_predictions(path, folder, dataset, samples: list[int], logits, targets, index, model, classes) -> None:
    """One CSV row per scored image: its path, label, the predicted class, its softmax
    probability (over the outputs scored among) and whether it is right."""
    import csv
    import io

    import torch

    from .._io import write_text

    names = list(model.pretrained_cfg.get("classes") or [])
    probs = logits.softmax(1)
    top = probs.argmax(1)
    right = targets if index is None else torch.as_tensor(index)[targets]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "prediction", "probability", "correct"])
    for j, t, p, pr, r in zip(samples, targets.tolist(), top.tolist(), probs.max(1).values.tolist(),
                              right.tolist()):
        predicted = (names[p] if index is not None and p < len(names) else classes[p] if index is None
                     else str(p))
        rel = Path(dataset.samples[j][0]).relative_to(folder).as_posix()
        w.writerow([rel, classes[t], predicted, f"{pr:.6f}", int(p == r)])
    print(f"predictions: {write_text(path, buf.getvalue())}")


def read_report(path: str | Path, *, model: str, img_size: int | None = None, weights: str | None = None) -> dict:
    """A ``bagnet eval --json`` report that can stand for ``model``'s accuracy: all of a split,
    with its preprocessing, at ``img_size`` and of ``weights`` where given.

    The tools that record a number (``tools/record_metrics.py``, ``tools/record_results_model.py``)
    read reports through this one check.

    Raises:
        ValueError: naming what the report is not.
    """
    try:
        report = json.loads(Path(path).read_text())
        images = int(report["images"])
        float(report["top1"]), float(report["top5"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a bagnet eval --json report ({e})") from None
    if report.get("model") != model:
        raise ValueError(f"{path} evaluated {report.get('model')!r}, not {model}")
    if weights is not None and str(report.get("weights")) != str(weights):
        raise ValueError(f"{path} evaluated --weights {report.get('weights')}, not {weights}")
    if "preprocessing" not in report:
        raise ValueError(f"{path} predates the one preprocessing (no 'preprocessing' field); evaluate again")
    if img_size is not None and report.get("img_size") != img_size:
        raise ValueError(f"{path} was measured at {report.get('img_size')} px; the model is served at {img_size} px")
    if report.get("max_images") is not None or report.get("folder_images", images) != images + report.get("skipped", 0):
        raise ValueError(f"{path} scored a subset ({images} of {report.get('folder_images')} images); "
                         "a model's recorded accuracy is measured on the whole split")
    return report


def print_report(report: dict, classes: list[str]) -> None:
    subset = (f", a class-stratified subset of {report['folder_images']} (--max-images {report['max_images']}, "
              f"--seed {report['seed']})" if report.get("max_images") and report["images"] + report["skipped"]
              < report["folder_images"] else "")
    print(f"{report['model']} on {report['data']} ({plural(report['images'], 'image')}{subset}"
          + (f", {report['skipped']} unreadable skipped" if report["skipped"] else "") + ")")
    print(f"preprocessing: {report['preprocessing']}")
    print(f"classes matched {report['class_mapping']}; {report['scoring']}")
    print(f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  {report['images_per_s']:.1f} images/s")
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


