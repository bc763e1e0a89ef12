"""``bagnet certify``: certified accuracy against adversarial patches on an image folder.

For every image and every patch size (pixels, or a share of the image area: 1%, 2%, 3%)
and defence (mask: PatchGuard's robust masking; clip: Clipped BagNet, squashing with the
model's own training squashing, else tanh(1 * x - 2) as docs/ROBUSTNESS.md recommends;
none: the plain model; cleanser: PatchCleanser's double masking, for any classifier,
torchvision models included), the defended prediction and whether it is certified: no
sticker of that size anywhere in the image can change it. Prints clean and certified accuracy
(certified counts images that are certified and right), with --attack also the accuracy
under a PGD sticker attack with a position search. Writes OUT/summary.json,
OUT/per_image.json and OUT/certified_vs_patch.png. Runs under torchrun like the other
commands: ``torchrun --nproc-per-node N -m bagnet certify ...`` shards the images.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .._text import plural
from ._common import add_device_args, add_model_args

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certified accuracy against adversarial patches", description=__doc__)
    g = add_shared_args(p, "out/certify", "certificate", "mask",
                        "defences, comma-separated: mask (PatchGuard), clip (Clipped BagNet), none (BagNets); "
                        "cleanser (PatchCleanser, any classifier) (default: mask)")
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
    add_cleanser_args(g)
    return g


def add_data_args(p: argparse.ArgumentParser, out: str) -> None:
    """The data options of ``certify`` and ``attack``: every command's data group (predictions
    are scored among all the model's outputs: no ``--restrict-to-folder-classes``), and --out."""
    from ._common import add_data_args as add_shared_data_args

    add_shared_data_args(p, restrict=False)
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")


def add_clip_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--clip-range", default=None, metavar="LOW,HIGH",
                   help="clip defence: clamp each patch logit to [LOW, HIGH] instead of tanh squashing "
                        "(write --clip-range=-1,1 when LOW is negative)")
    g.add_argument("--tanh-scale", type=float, default=None,
                   help="clip defence: tanh(SCALE * logit + SHIFT) squashing (default: the model's own training "
                        "squashing, bagnet train --clip-evidence, else tanh(1 * x - 2), the one docs/ROBUSTNESS.md "
                        "recommends for the shipped models; Clipped BagNet's ImageNet setting is 0.05, -1)")
    g.add_argument("--tanh-shift", type=float, default=None,
                   help="clip defence: see --tanh-scale (default: decided with it)")


def add_cleanser_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cleanser-masks", type=int, default=None, metavar="K",
                   help="cleanser defence: at most K x K masks, each large enough to hide the sticker wherever it is "
                        "(default: 6, the paper's; certifying classifies K^2 + K^2 (K^2 - 1) / 2 masked images per "
                        "image, 666 for K = 6)")
    g.add_argument("--cleanser-fill", default=None, metavar="mean|black|V",
                   help="cleanser defence: what masked pixels become: mean (0 in the normalized input, the "
                        "paper's code; default), black (pixel value 0), or V written into the normalized input")


# option, keyword of patch_attack, type, default, lowest value (None: more than 0), help
ATTACK_OPTIONS = (
    ("--attack-steps", "steps", int, 20, 0, "PGD steps at each of the most promising positions"),
    ("--attack-step-size", "step_size", float, 0.1, None, "PGD step in pixel units of the [0, 1] image range"),
    ("--attack-positions", "positions", int, 7, 1, "sticker positions per axis in the position search"),
    ("--attack-search-steps", "search_steps", int, 4, 1, "PGD steps at every position of the search"),
    ("--attack-refine", "refine", int, 2, 0, "positions per image attacked for --attack-steps more steps"),
)


def add_attack_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack")
    for option, key, kind, default, _low, text in ATTACK_OPTIONS:
        g.add_argument(option, dest=f"attack_{key}", type=kind, default=None, help=f"{text} (default: {default})")


def attack_options(args: argparse.Namespace) -> dict:
    """The attack's keyword arguments; a value out of range is refused naming its option."""
    options = {}
    for option, key, _kind, default, low, _text in ATTACK_OPTIONS:
        value = getattr(args, f"attack_{key}")
        value = default if value is None else value
        if low is None and not value > 0:
            raise ValueError(f"{option} must be more than 0, got {value}")
        if low is not None and value < low:
            raise ValueError(f"{option} must be at least {low}, got {value}")
        options[key] = value
    return dict(options, seed=args.seed)


def unused_attack_options(args: argparse.Namespace) -> None:
    """Refuse attack options given without ``--attack``: they would be silently ignored."""
    given = [option for option, key, *_ in ATTACK_OPTIONS if getattr(args, f"attack_{key}", None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the attack, which only runs with "
                         f"--attack")


def parse_list(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{option} needs at least one value")
    return items


def clip_options(args: argparse.Namespace, defenses: list[str]) -> dict:
    """The clip defence's keyword arguments of :class:`~bagnet.robust.RobustBagNet`: only
    what was typed (the library decides the rest, see :func:`~bagnet.robust.clip_squashing`)."""
    tanh = {k: v for k, v in (("tanh_scale", args.tanh_scale), ("tanh_shift", args.tanh_shift)) if v is not None}
    if (args.clip_range is not None or tanh) and "clip" not in defenses:
        raise ValueError("--clip-range, --tanh-scale and --tanh-shift are for --defense clip")
    if args.clip_range is None:
        return tanh
    if tanh:
        raise ValueError("--clip-range replaces the tanh squashing; drop --tanh-scale/--tanh-shift")
    try:
        lo, hi = (float(v) for v in args.clip_range.split(","))
    except ValueError:
        raise ValueError(f"--clip-range {args.clip_range!r} must be LOW,HIGH, e.g. 0,5") from None
    return {"clip_range": (lo, hi)}


def cleanser_options(args: argparse.Namespace, defenses: list[str]) -> dict:
    """The cleanser defence's keyword arguments of :class:`~bagnet.robust.PatchCleanser`."""
    masks, fill = getattr(args, "cleanser_masks", None), getattr(args, "cleanser_fill", None)
    if (masks is not None or fill is not None) and "cleanser" not in defenses:
        raise ValueError("--cleanser-masks and --cleanser-fill are for --defense cleanser")
    if masks is not None and masks < 1:
        raise ValueError(f"--cleanser-masks must be at least 1, got {masks}")
    if fill is not None and fill not in ("mean", "black"):
        try:
            fill = float(fill)
        except ValueError:
            raise ValueError(f"--cleanser-fill {fill!r} must be mean, black or a number") from None
    from ..robust._cleanser import DEFAULT_MASKS

    return {"masks": DEFAULT_MASKS if masks is None else masks, "fill": "mean" if fill is None else fill}


def parse_defenses(text: str) -> list[str]:
    from ..robust import DEFENSES

    defenses = parse_list(text, "--defense")
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown --defense {unknown[0]!r}; use {', '.join(DEFENSES)}")
    return defenses


def run(args: argparse.Namespace) -> int:
    defenses = parse_defenses(args.defense)
    if not args.attack:
        unused_attack_options(args)
    return evaluate(args, defenses, clip_options(args, defenses), certify=True,
                    attack=attack_options(args) if args.attack else None,
                    cleanser=cleanser_options(args, defenses))


def evaluate(args: argparse.Namespace, defenses: list[str], defense_options: dict, *, certify: bool,
             attack: dict | None, cleanser: dict) -> int:
    """The shared body of ``certify`` and ``attack``: load, shard, evaluate, gather, report."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from .._io import check_writable
    from ..data.classes import class_mapping, scoring_note
    from ..data.folder import ImageFolder, subset_indices
    from ..data.transforms import Preprocessing
    from ..models._factory import _torchvision_name
    from ..robust import RobustBagNet, mask_set, patch_pixels, robustness_records
    from ..train.distributed import ShardSampler, cleanup_distributed, init_distributed
    from ._common import check_data_args, check_img_size, data_folder, resolve_device, resolve_model

    patches = parse_list(args.patch, "--patch")
    check_data_args(args)
    check_writable(args.out, "--out", folder=True)
    folder = data_folder(args)
    needs_bagnet = any(d in ("mask", "clip") for d in defenses)
    advice = "--defense cleanser defends and certifies any classifier, --defense none attacks it undefended"
    if needs_bagnet and getattr(args, "model", None) and not args.weights and _torchvision_name(args.model):
        # Refused before its ImageNet weights are downloaded for nothing.
        raise ValueError(f"{args.model} is a torchvision classifier, not a BagNet: the mask/clip defences need "
                         f"patch logits ({advice})")
    device = resolve_device(args.device)
    info = init_distributed(device)
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        model = resolve_model(args).to(device).eval()
        if needs_bagnet and not callable(getattr(model, "patch_logits", None)):
            raise ValueError(f"{type(model).__name__} is not a BagNet: the mask/clip defences need patch logits "
                             f"({advice})")
        check_img_size(model, args.img_size)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        pre = Preprocessing.from_cfg(cfg, args.img_size)
        img_size = pre.img_size
        squashing = None
        for size in patches:  # a bad size fails before any image is read
            patch_pixels(size, img_size)
            if "mask" in defenses:  # masking needs evidence left once the patch's window is removed
                RobustBagNet(model, size, "mask").window((img_size, img_size))
            if "cleanser" in defenses:  # and the cleanser's masks must leave some of the image
                mask_set((img_size, img_size), size, cleanser["masks"])
        if "clip" in defenses:  # and so does a model file whose squashing cannot be read
            clip = RobustBagNet(model, patches[0], "clip", **defense_options)
            squashing = {"squashing": clip.squashing, "source": clip.squashing_source,
                         **({"scale": clip.tanh_scale, "shift": clip.tanh_shift} if clip.clip is not None else {})}
        dataset = ImageFolder(folder, transform=pre)
        classes = list(dataset.classes)
        mapping = class_mapping(cfg.get("classes"), model.num_classes, classes, class_map=args.class_map,
                                data_root=folder)
        index = mapping.as_list()
        chosen = subset_indices(dataset.targets, args.max_images, args.seed)
        subset = Subset(_Indexed(dataset), chosen)
        loader = DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate,
                            sampler=ShardSampler(len(subset), info))
        to_output = torch.as_tensor(index) if index is not None else None

        def batches():
            for groups in loader:
                for x, y, keys in groups:  # one batch per image size (whole images of several shapes)
                    y = to_output[y] if to_output is not None and len(y) else y
                    yield x.to(device), y.to(device), keys

        records = robustness_records(model, batches(), patches, defenses, certify=certify, attack=attack,
                                     defense_options=defense_options, cleanser_options=cleanser)
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = sorted((r for part in gathered for r in part), key=lambda r: r["key"])
        if info.is_main:
            _report(args, model, records, dataset, len(chosen), folder, pre, defense_options, attack, certify,
                    squashing, f"classes matched {mapping.how}; "
                               f"{scoring_note(model.num_classes, len(classes), False)}",
                    cleanser if "cleanser" in defenses else None)
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


def _collate(batch: list) -> list:
    """The readable samples of a batch as ``[(images, labels, keys), ...]``, one group per
    image size: whole images of several aspect ratios cannot share a tensor."""
    import torch

    groups: dict[tuple, list] = {}
    for i, s in batch:
        if s is not None:
            groups.setdefault(tuple(s[0].shape), []).append((i, s))
    return [(torch.stack([s[0] for _, s in g]), torch.as_tensor([s[1] for _, s in g], dtype=torch.long),
             [i for i, _ in g]) for g in groups.values()]


def _report(args, model, records, dataset, chosen: int, folder, pre, defense_options, attack, certify,
            squashing: dict | None, scoring: str, cleanser: dict | None = None) -> None:
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
    head = (f"{model_name} on {folder} ({plural(len(records), 'image')}"
            + (f", a class-stratified subset of {len(dataset)} (--max-images {args.max_images}, --seed {args.seed})"
               if chosen < len(dataset) else "")
            + (f", {skipped} unreadable skipped" if skipped else "") + ")")
    trained = (getattr(model, "pretrained_cfg", None) or {}).get("train_evidence")
    if trained and trained != "mean":  # `bagnet train --clip-evidence`: certify with the same squashing
        head += f"; trained on the mean of {trained}"
    print(head)
    print(f"preprocessing: {pre.describe()}")
    print(scoring)
    if squashing is not None:
        print(f"clip squashing: {squashing['squashing']} ({squashing['source']})")
    cleanser_sets = _cleanser_sets(records, cleanser) if cleanser is not None else None
    for entry in cleanser_sets or []:
        print(f"cleanser {entry['patch']}: {entry['mask_set']}, fill {entry['fill']}")
    print(f"{'defense':<8} {'patch':<14} {'clean':>8} {'certified':>10}" + (f" {'attacked':>9}" if attack else "")
          + f" {'passes':>7}")
    for s in summaries:
        cert = "-" if s.certified is None or s.defense == "none" else f"{s.certified:.2f}%"
        line = f"{s.defense:<9}{s.patch + f' ({s.patch_px} px)':<14} {s.clean:>7.2f}% {cert:>10}"
        if attack:
            line += f" {s.attacked:>8.2f}%"
        print(line + (f" {s.passes:>7.4g}" if s.passes is not None else f" {'-':>7}"))
    print("passes: model passes per image for the " + ("certificate" if certify else "prediction")
          + " (the attack's are on top)")
    flipped = sum(s.certified_but_flipped for s in summaries)
    if attack:
        print(f"certified images the attack flipped: {flipped}" + ("" if not flipped else "  (A BUG: please report)"))
    summary = {
        "model": model_name, "weights": args.weights, "data": str(folder), "img_size": pre.img_size,
        "preprocessing": pre.describe(), "scoring": scoring,
        "images": len(records), "max_images": args.max_images, "seed": args.seed, "class_map": args.class_map,
        "scored_among": getattr(model, "num_classes", None),
        "defense_options": {k: list(v) if isinstance(v, tuple) else v for k, v in defense_options.items()},
        "clip_squashing": squashing,
        "cleanser": None if cleanser is None else {**cleanser, "mask_sets": cleanser_sets},
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


def _cleanser_sets(records: list[dict], cleanser: dict) -> list[dict]:
    """The cleanser's mask set of every patch size and image size of the records, as said
    and recorded: ``patch``, ``patch_px``, ``image_size``, ``mask_size``, ``stride``,
    ``masks``, ``certification_passes``, ``mask_set`` (in words), ``fill``."""
    from ..robust import mask_set

    seen: dict[tuple, dict] = {}
    for r in records:
        for o in r["results"]:
            if o["defense"] != "cleanser":
                continue
            size = tuple(o["image_size"])
            key = (o["patch"], size)
            if key not in seen:
                masks = mask_set(size, o["patch"], cleanser["masks"])
                seen[key] = {"patch": o["patch"], "patch_px": masks.patch_size, "image_size": list(size),
                             "mask_size": list(masks.mask_size), "stride": list(masks.stride), "masks": len(masks),
                             "certification_passes": masks.certification_passes, "mask_set": masks.describe(),
                             "fill": cleanser["fill"]}
    return list(seen.values())
