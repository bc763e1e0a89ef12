"""``bagnet calibrate``: teach a model file to say "probably none of the classes I know".

Scores images of the model's own classes (``--data``, e.g. its val/ folder) and images of
other classes (``--unknown``), each prepared exactly as ``bagnet explain``, the demo and the
explorer prepare an image. Both sets are split in halves (seeded): on the first half every
familiarity score (max softmax, max logit, energy) gets the threshold that flags a fraction
``--cost`` of the in-class images, and the score that catches most other-class images is
chosen; the second half, never seen in that choice, measures what the threshold costs and
catches. With ``--test-data`` and ``--test-unknown`` the choice is made on all of ``--data``
and ``--unknown`` (e.g. images held out of training, and some categories of other things)
and measured on the test sets instead (e.g. the val split, and other categories), so
nothing is chosen on the images the numbers are reported on. ``--out`` receives a copy of
the model file that carries the threshold; every ``explain``/``demo``/``serve`` of that
file then flags such predictions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ._common import add_device_args, add_model_args

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate the 'none of the classes this model knows' flag of a model file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="images of the model's classes (e.g. its val/ folder), searched recursively")
    p.add_argument("--unknown", required=True, help="images of other classes, searched recursively")
    p.add_argument("--test-data", default=None, metavar="DIR",
                   help="with --test-unknown: measure the threshold on these in-class images (and choose it on all "
                        "of --data) instead of halving --data")
    p.add_argument("--test-unknown", default=None, metavar="DIR",
                   help="with --test-data: measure the threshold on these other-class images")
    add_model_args(p)
    add_device_args(p)
    p.add_argument("--cost", type=float, default=0.05,
                   help="fraction of in-class images allowed to be flagged (default: 0.05)")
    p.add_argument("--method", default="auto", choices=("auto", "max_softmax", "max_logit", "energy"),
                   help="familiarity score; auto picks the one that catches most other-class images (default: auto)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the --max-images subsets and of the half/half split (default: 0)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="use a seeded subset of N images of each set, stratified over its sub-folders (the same "
                        "images as other commands' --max-images N with the same --seed on a class folder; "
                        "default: all)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes (default: 2)")
    p.add_argument("--out", required=True, help="model file to write, with the threshold in its metadata")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full calibration report here")
    p.set_defaults(func=run)


def _image_paths(root: Path, what: str) -> list[Path]:
    from ..data.images import find_images

    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    paths = find_images(root)
    if len(paths) < 2:
        raise ValueError(f"{what} folder {root} holds {len(paths)} image(s); calibration needs at least 2")
    return paths


class _Prepared:
    """Images prepared as :func:`bagnet.explain.explain` prepares them (a map-style dataset)."""

    def __init__(self, paths: list[Path], cfg: dict):
        self.paths, self.cfg = paths, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from ..data.images import ImageError
        from ..explain import preprocess

        try:
            return preprocess(self.paths[i], self.cfg)[0]
        except ImageError as e:
            logger.warning("skipping unreadable image %s", e)
            return None


def _logits(model, paths: list[Path], device, workers: int, desc: str):
    """Logits ``[N, num_classes]`` of the readable images, and their indices into ``paths``."""
    import torch
    from torch.utils.data import DataLoader

    from ..explain import EvidenceMapper
    from ..explain._explain import model_config

    loader = DataLoader(_Prepared(paths, model_config(model)), batch_size=None, num_workers=workers)
    rows, kept = [], []
    mapper = EvidenceMapper(model)  # the logits explain() and the explorer compute
    with torch.inference_mode():
        step = max(1, len(paths) // 10)
        for i, x in enumerate(loader):
            if i % step == 0:
                logger.info("%s: %d/%d", desc, i, len(paths))
            if x is None:
                continue
            rows.append(mapper.logits(x.to(mapper.device)).float().cpu())
            kept.append(i)
    if len(rows) < 2:
        raise ValueError(f"{desc}: fewer than 2 readable images")
    return torch.stack(rows), kept


def _subset(paths: list[Path], n: int | None, seed: int) -> list[Path]:
    """The ``--max-images`` subset of every command, with each image's folder as its class."""
    from ..data.folder import subset_indices

    folders: dict[Path, int] = {}
    targets = [folders.setdefault(p.parent, len(folders)) for p in paths]
    return [paths[i] for i in subset_indices(targets, n, seed)]


def _halves(n: int, seed: int):
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2 :])


def run(args: argparse.Namespace) -> int:

    from .._io import check_writable
    from ..data.transforms import Preprocessing
    from ..explain import UNKNOWN_METHODS, calibrate_unknown, familiarity
    from ..models import save_model_file
    from ._common import resolve_device, resolve_model

    if not 0 < args.cost < 1:
        raise ValueError(f"--cost must lie strictly between 0 and 1, got {args.cost}")
    if args.max_images is not None and args.max_images < 4:
        raise ValueError(f"--max-images must be at least 4, got {args.max_images}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    out = Path(args.out)
    if out.suffix != ".pt":
        raise ValueError(f"--out {out} should be a .pt model file")
    check_writable(out, "--out")
    if args.json:
        check_writable(args.json, "--json")
    if (args.test_data is None) != (args.test_unknown is None):
        raise ValueError("--test-data and --test-unknown go together: both test sets, or neither (halves)")
    known_paths = _subset(_image_paths(Path(args.data), "--data"), args.max_images, args.seed)
    unknown_paths = _subset(_image_paths(Path(args.unknown), "--unknown"), args.max_images, args.seed)
    separate = args.test_data is not None
    if separate:
        test_known = _subset(_image_paths(Path(args.test_data), "--test-data"), args.max_images, args.seed)
        test_unknown = _subset(_image_paths(Path(args.test_unknown), "--test-unknown"), args.max_images, args.seed)
        overlap = {p.resolve() for p in known_paths + unknown_paths} & {p.resolve() for p in test_known + test_unknown}
        if overlap:
            raise ValueError(f"{len(overlap)} image(s) are both in the sets the threshold is chosen on and in the "
                             f"test sets, e.g. {sorted(overlap)[0]}; the test sets must be other images")

    device = resolve_device(args.device)
    model = resolve_model(args).to(device)
    known_logits, _ = _logits(model, known_paths, device, args.workers, "in-class images")
    unknown_logits, _ = _logits(model, unknown_paths, device, args.workers, "other-class images")
    if separate:
        tk_logits, _ = _logits(model, test_known, device, args.workers, "test in-class images")
        tu_logits, _ = _logits(model, test_unknown, device, args.workers, "test other-class images")
    else:
        k_fit, k_test = _halves(len(known_logits), args.seed)
        u_fit, u_test = _halves(len(unknown_logits), args.seed + 1)
    methods = UNKNOWN_METHODS if args.method == "auto" else (args.method,)
    candidates = {}
    for m in methods:
        ks, us = familiarity(known_logits, m).numpy(), familiarity(unknown_logits, m).numpy()
        if separate:
            cal = calibrate_unknown(ks, us, method=m, cost=args.cost)
            held = cal.evaluate(familiarity(tk_logits, m).numpy(), familiarity(tu_logits, m).numpy())
        else:
            cal = calibrate_unknown(ks[k_fit], us[u_fit], method=m, cost=args.cost)
            held = cal.evaluate(ks[k_test], us[u_test])
        candidates[m] = (cal, held)
    chosen = max(candidates, key=lambda m: (candidates[m][0].caught, candidates[m][0].auroc))
    cal, held_out = candidates[chosen]

    n = model.num_classes
    setting = {
        "method": cal.method,
        "threshold": cal.threshold,
        "cost": args.cost,
        "held_out": held_out,
        "fit": {"cost": cal.cost, "caught": cal.caught, "auroc": cal.auroc,
                "known_images": cal.known_images, "unknown_images": cal.unknown_images},
        "known_data": os.path.relpath(args.data),
        "unknown_data": os.path.relpath(args.unknown),
        "test_known_data": os.path.relpath(args.test_data) if separate else None,
        "test_unknown_data": os.path.relpath(args.test_unknown) if separate else None,
        "preprocessing": Preprocessing.from_cfg(model.pretrained_cfg).describe(),
        "seed": args.seed,
    }
    save_model_file(out, model.cpu(), {"unknown": setting})
    report = {
        "model": getattr(model, "model_name", args.model),
        "weights": args.weights,
        "num_classes": n,
        "chosen": chosen,
        "setting": setting,
        "candidates": {m: {"fit": c.to_dict(), "held_out": h} for m, (c, h) in candidates.items()},
    }
    print(f"familiarity score: {chosen} (threshold {cal.threshold:.4g}); fit on {cal.known_images} in-class and "
          f"{cal.unknown_images} other-class images")
    for m, (c, h) in candidates.items():
        mark = "*" if m == chosen else " "
        print(f" {mark} {m:<12} fit: flags {100 * c.cost:5.1f}% in-class, catches {100 * c.caught:5.1f}% other "
              f"(AUROC {c.auroc:.3f}); held out: {100 * h['cost']:5.1f}% / {100 * h['caught']:5.1f}%")
    where = "test sets" if separate else "held out"
    print(f"{where} ({held_out['known_images']} in-class, {held_out['unknown_images']} other-class images): "
          f"{100 * held_out['cost']:.1f}% of in-class images flagged, {100 * held_out['caught']:.1f}% of "
          f"other-class images caught")
    print(f"model: {out}")
    if args.json:
        from .._io import write_text

        print(f"json: {write_text(args.json, json.dumps(report, indent=2) + chr(10))}")
    return 0
