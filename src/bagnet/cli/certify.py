"""``bagnet certify``: certified accuracy against adversarial patches on an image folder.

For every image and every patch size (pixels, or a share of the image area: 1%, 2%, 3%)
and defence (mask: PatchGuard's robust masking; clip: Clipped BagNet; none: the plain
model), the defended prediction and whether it is certified: no sticker of that size
anywhere in the image can change it. Prints clean and certified accuracy (certified counts
images that are certified and right), with --attack also the accuracy under a PGD sticker
attack with a position search. Writes OUT/summary.json, OUT/per_image.json and
OUT/certified_vs_patch.png. Runs under torchrun like the other commands:
``torchrun --nproc-per-node N -m bagnet certify ...`` shards the images.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from .._text import plural
from ._common import add_device_args, add_model_args

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certified accuracy against adversarial patches", description=__doc__)
    g = add_shared_args(p, "out/certify", "certificate", "mask",
                        "defences, comma-separated: mask (PatchGuard), clip (Clipped BagNet), none (default: mask)")
    g.add_argument("--attack", action="store_true",
                   help="also attack every image with a PGD sticker and report the accuracy under attack")
    add_attack_args(p)
    p.set_defaults(func=run)


def add_shared_args(p: argparse.ArgumentParser, out: str, title: str, defense: str,
                    defense_help: str) -> argparse._ArgumentGroup:
    """Data, model, device, patch and defence options of ``certify`` and ``attack``."""
    add_data_args(p, out)
    add_model_args(p)
    add_device_args(p)
    g = p.add_argument_group(title)
    g.add_argument("--patch", default="2%", metavar="SIZES",
                   help="patch sizes, comma-separated: area shares (1%%,2%%,3%%) or sides in pixels (32) (default: 2%%)")
    g.add_argument("--defense", default=defense, metavar="NAMES", help=defense_help)
    add_clip_args(g)
    return g


def add_data_args(p: argparse.ArgumentParser, out: str) -> None:
    """The data options of ``certify`` and ``attack`` (those of ``bagnet eval``, plus a subset)."""
    p.add_argument("--data", required=True, help="dataset folder (with --split sub-folder) of <class>/ folders")
    p.add_argument("--split", default="val", help="sub-folder of --data to use; '.' for --data itself")
    p.add_argument("--class-map", default=None, metavar="imagenet|FILE.tsv",
                   help="map folder names to model outputs ('imagenet': the dataset's classes.tsv)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="use N images spread evenly over the folder (every k-th in sorted order, so every class "
                        "is represented); by default all")
    p.add_argument("--img-size", type=int, default=None, help="default: the model's training size, else 224")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")


def add_clip_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--clip-range", default=None, metavar="LOW,HIGH",
                   help="clip defence: clamp each patch logit to [LOW, HIGH] instead of tanh squashing "
                        "(write --clip-range=-1,1 when LOW is negative)")
    g.add_argument("--tanh-scale", type=float, default=0.05,
                   help="clip defence: tanh(SCALE * logit + SHIFT) squashing (default: 0.05, Clipped BagNet's)")
    g.add_argument("--tanh-shift", type=float, default=-1.0, help="clip defence: see --tanh-scale (default: -1)")


def add_attack_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack")
    g.add_argument("--attack-steps", type=int, default=20,
                   help="PGD steps at each of the most promising positions (default: 20)")
    g.add_argument("--attack-step-size", type=float, default=0.1,
                   help="PGD step in pixel units of the [0, 1] image range (default: 0.1)")
    g.add_argument("--attack-positions", type=int, default=7,
                   help="sticker positions per axis in the position search (default: 7)")
    g.add_argument("--attack-search-steps", type=int, default=4,
                   help="PGD steps at every position of the search (default: 4)")
    g.add_argument("--attack-refine", type=int, default=2,
                   help="positions per image attacked for --attack-steps more steps (default: 2)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random sticker initialisation (default: 0)")


def attack_options(args: argparse.Namespace) -> dict:
    """The attack's keyword arguments; a value out of range is refused naming its option."""
    limits = (("--attack-steps", args.attack_steps, 0), ("--attack-search-steps", args.attack_search_steps, 1),
              ("--attack-positions", args.attack_positions, 1), ("--attack-refine", args.attack_refine, 0))
    for option, value, low in limits:
        if value < low:
            raise ValueError(f"{option} must be at least {low}, got {value}")
    if not args.attack_step_size > 0:
        raise ValueError(f"--attack-step-size must be more than 0, got {args.attack_step_size}")
    return dict(steps=args.attack_steps, step_size=args.attack_step_size, positions=args.attack_positions,
                search_steps=args.attack_search_steps, refine=args.attack_refine, seed=args.seed)


def parse_list(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{option} needs at least one value")
    return items


def clip_options(args: argparse.Namespace, defenses: list[str]) -> dict:
    changed = args.clip_range is not None or args.tanh_scale != 0.05 or args.tanh_shift != -1.0
    if changed and "clip" not in defenses:
        raise ValueError("--clip-range, --tanh-scale and --tanh-shift are for --defense clip")
    if args.clip_range is None:
        return {"tanh_scale": args.tanh_scale, "tanh_shift": args.tanh_shift}
    if args.tanh_scale != 0.05 or args.tanh_shift != -1.0:
        raise ValueError("--clip-range replaces the tanh squashing; drop --tanh-scale/--tanh-shift")
    try:
        lo, hi = (float(v) for v in args.clip_range.split(","))
    except ValueError:
        raise ValueError(f"--clip-range {args.clip_range!r} must be LOW,HIGH, e.g. 0,5") from None
    return {"clip_range": (lo, hi)}


def parse_defenses(text: str) -> list[str]:
    from ..robust import DEFENSES

    defenses = parse_list(text, "--defense")
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown --defense {unknown[0]!r}; use {', '.join(DEFENSES)}")
    return defenses


def run(args: argparse.Namespace) -> int:
    defenses = parse_defenses(args.defense)
    return evaluate(args, defenses, clip_options(args, defenses), certify=True,
                    attack=attack_options(args) if args.attack else None)


def evaluate(args: argparse.Namespace, defenses: list[str], defense_options: dict, *, certify: bool,
             attack: dict | None) -> int:
    """The shared body of ``certify`` and ``attack``: load, shard, evaluate, gather, report."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data.folder import ImageFolder, eval_transform
    from ..models._factory import _torchvision_name
    from ..robust import patch_pixels, robustness_records
    from ..train.distributed import ShardSampler, cleanup_distributed, init_distributed
    from ._common import resolve_device, resolve_model
    from .eval import output_index

    patches = parse_list(args.patch, "--patch")
    if args.batch_size < 1 or args.workers < 0 or (args.max_images is not None and args.max_images < 1):
        raise ValueError("--batch-size and --max-images must be at least 1 and --workers 0 or more")
    data_root = Path(args.data)
    folder = data_root / args.split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass --split NAME for another sub-folder of {data_root}")
    needs_bagnet = certify or any(d != "none" for d in defenses)
    if needs_bagnet and getattr(args, "model", None) and not args.weights and _torchvision_name(args.model):
        # Refused before its ImageNet weights are downloaded for nothing.
        raise ValueError(f"{args.model} is a torchvision classifier, not a BagNet: certificates and the mask/clip "
                         "defences need patch logits (bagnet attack --defense none attacks any classifier)")
    device = resolve_device(args.device)
    info = init_distributed(device)
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        model = resolve_model(args).to(device).eval()
        if needs_bagnet and not callable(getattr(model, "patch_logits", None)):
            raise ValueError(f"{type(model).__name__} is not a BagNet: certificates and defences need patch logits "
                             "(bagnet attack --defense none attacks any classifier)")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        img_size = args.img_size or cfg.get("img_size") or 224
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        for size in patches:
            patch_pixels(size, img_size)  # a bad size fails before any image is read
        dataset = ImageFolder(folder, transform=eval_transform(img_size, mean, std))
        classes = list(dataset.classes)
        index = output_index(model, classes, args.class_map, data_root)
        chosen = list(range(len(dataset)))
        if args.max_images is not None and args.max_images < len(dataset):
            chosen = sorted({math.floor(k * len(dataset) / args.max_images) for k in range(args.max_images)})
        subset = Subset(_Indexed(dataset), chosen)
        loader = DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate,
                            sampler=ShardSampler(len(subset), info))
        to_output = torch.as_tensor(index) if index is not None else None

        def batches():
            for x, y, keys in loader:
                y = to_output[y] if to_output is not None and len(y) else y
                yield x.to(device), y.to(device), keys

        records = robustness_records(model, batches(), patches, defenses, certify=certify, attack=attack,
                                     defense_options=defense_options)
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = sorted((r for part in gathered for r in part), key=lambda r: r["key"])
        if info.is_main:
            _report(args, model, records, dataset, len(chosen), folder, img_size, defense_options, attack, certify)
    finally:
        cleanup_distributed(info)
    return 0


class _Indexed:
    """An image folder whose samples carry their index, so unreadable images can be skipped
    without losing track of which file each result belongs to."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def _collate(batch: list):
    import torch

    good = [(i, s) for i, s in batch if s is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), []
    return (torch.stack([s[0] for _, s in good]), torch.as_tensor([s[1] for _, s in good], dtype=torch.long),
            [i for i, _ in good])


def _report(args, model, records, dataset, chosen: int, folder, img_size, defense_options, attack, certify) -> None:
    from .._io import atomic_path, write_text
    from ..robust import plot_certified_accuracy, summarize

    classes = list(dataset.classes)
    names = list((getattr(model, "pretrained_cfg", None) or {}).get("classes") or [])
    if not names and getattr(model, "num_classes", None) == len(classes):
        names = classes  # output_index assumed the folder order for a model without class names
    out = Path(args.out)
    for i, r in enumerate(records):  # file paths and class names, for people and scripts
        path, label = dataset.samples[r.pop("key")]
        for o in r["results"]:
            for key in ("prediction", "attacked_prediction"):
                if key in o:
                    o[key + "_name"] = names[o[key]] if o[key] < len(names) else str(o[key])
        records[i] = {"path": str(Path(path).relative_to(folder)), "label": classes[label], **r}
    summaries = summarize(records)
    skipped = chosen - len(records)
    model_name = getattr(model, "model_name", None) or args.model or type(model).__name__
    head = (f"{model_name} on {folder} ({plural(len(records), 'image')} at {img_size} px"
            + (f", an even subset of {len(dataset)} (--max-images)" if chosen < len(dataset) else "") + (f", {skipped} unreadable skipped" if skipped else "") + ")")
    trained = (getattr(model, "pretrained_cfg", None) or {}).get("train_evidence")
    if trained and trained != "mean":  # `bagnet train --clip-evidence`: certify with the same squashing
        head += f"; trained on the mean of {trained}"
    print(head)
    print(f"{'defense':<8} {'patch':<14} {'clean':>8} {'certified':>10}" + (f" {'attacked':>9}" if attack else ""))
    for s in summaries:
        cert = "-" if s.certified is None or s.defense == "none" else f"{s.certified:.2f}%"
        line = f"{s.defense:<8} {s.patch + f' ({s.patch_px} px)':<14} {s.clean:>7.2f}% {cert:>10}"
        if attack:
            line += f" {s.attacked:>8.2f}%"
        print(line)
    flipped = sum(s.certified_but_flipped for s in summaries)
    if attack:
        print(f"certified images the attack flipped: {flipped}" + ("" if not flipped else "  (A BUG: please report)"))
    summary = {
        "model": model_name, "weights": args.weights, "data": str(folder), "img_size": img_size,
        "images": len(records), "max_images": args.max_images, "class_map": args.class_map,
        "scored_among": getattr(model, "num_classes", None),
        "defense_options": {k: list(v) if isinstance(v, tuple) else v for k, v in defense_options.items()},
        "attack": attack, "certify": certify,
        "results": [s.__dict__ for s in summaries],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text(out / "per_image.json", json.dumps({"images": records}, indent=1) + "\n")
    written = [out / "summary.json", out / "per_image.json"]
    if certify:
        fig, _ = plot_certified_accuracy(summaries, title=head)
        with atomic_path(out / "certified_vs_patch.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        written.append(out / "certified_vs_patch.png")
    print("wrote " + ", ".join(str(p) for p in written))
