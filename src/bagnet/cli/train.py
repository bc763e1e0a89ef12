"""``bagnet train``: train a BagNet on an image folder, resumably, on one or many processes.

``--weights`` fine-tunes weights that name their model (``--model`` is then optional); on
other classes than theirs the model gets a new head, and every other weight comes from them.
Run it under ``torchrun --nproc-per-node N -m bagnet train ...`` for data-parallel
training; ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from ._common import add_device_args, add_model_args

if TYPE_CHECKING:
    from ..train import TrainConfig

# Namespace attribute: the destinations of the options typed on the command line.
GIVEN = "given_options"


def _tracked(action: type[argparse.Action]) -> type[argparse.Action]:
    """``action`` that also records its destination in ``namespace.given_options`` when
    the option is typed, so a resumed run knows what the user asked for, whatever the value
    (a typed value equal to the default is still a request)."""

    class Tracked(action):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            given = getattr(namespace, GIVEN, None)
            if given is None:
                given = set()
                setattr(namespace, GIVEN, given)
            given.add(self.dest)

    return Tracked


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on an image folder (train/ and val/)",
        description=__doc__,
    )
    for name, action in ((None, argparse._StoreAction), ("store", argparse._StoreAction),
                         ("store_true", argparse._StoreTrueAction), ("store_false", argparse._StoreFalseAction)):
        p.register("action", name, _tracked(action))
    p.add_argument("--data", help="folder with train/<class>/ and val/<class>/ image folders, or (with --val-split) "
                                  "train/<class>/ alone or the <class>/ folders themselves")
    p.add_argument("--out", help="run folder: config.json, log.jsonl, TensorBoard events, checkpoints, model.pt")
    add_model_args(p, training=True)
    _set_help(p, "model", "model to train (see `bagnet models`); may be left out with --weights that name their model")
    _set_help(p, "weights", "initial weights to fine-tune: a registered tag (imagenette, imagenet), a model file or "
                            "folder, a run folder or last.pt of `bagnet train` (these name their model), a state dict "
                            "(with --model) or URL; for other classes than --data's the model gets a new head, and all "
                            "other weights come from these (docs/training.md, 'Fine-tune on your own data')")
    add_device_args(p)
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=90, help="length of the run; on --resume, a new length re-plans the schedule")
    g.add_argument("--batch-size", type=int, default=32, help="images per process and step")
    g.add_argument("--accum-steps", type=int, default=1, help="batches whose gradients add up to one step")
    g.add_argument("--lr", type=float, default=0.1,
                   help="peak SGD learning rate, reached after warmup (see docs/training.md to scale it)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="on conv/linear weights, not norms or biases")
    g.add_argument("--schedule", choices=("cosine", "step"), default="cosine", help="learning-rate decay after warmup")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup (fractions allowed)")
    g.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine schedule")
    g.add_argument("--step-size", type=int, default=30, help="epochs between decays (--schedule step)")
    g.add_argument("--gamma", type=float, default=0.1, help="decay factor (--schedule step)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights; it is evaluated and shipped")
    g.add_argument("--ema-decay", type=float, default=0.9998, help="EMA weight of the old average per update (--ema)")
    g.add_argument("--ema-steps", type=int, default=1, help="optimizer steps between EMA updates")
    g = p.add_argument_group("input")
    g.add_argument("--img-size", type=int, default=224,
                   help="training crop (random crops resized to this); the model file records it as train_img_size "
                        "and as img_size, the size the model is evaluated and served at")
    g.add_argument(
        "--crop-scale", type=float, default=0.08,
        help="smallest random crop, as a fraction of the image's area (larger keeps more of the object)",
    )
    g.add_argument("--val-split", type=float, default=None,
                   help="hold out this fraction of every class for validation, when --data has no val/")
    g.add_argument(
        "--outliers", default=None, metavar="DIR",
        help="images of none of the classes (searched recursively), trained towards a uniform prediction "
             "(outlier exposure) so that 'bagnet calibrate' can flag unknown images",
    )
    g.add_argument("--outlier-weight", type=float, default=0.5, help="weight of the outlier loss term")
    g.add_argument("--outlier-repeat", type=int, default=1, help="times each outlier image appears per epoch")
    g.add_argument(
        "--clip-evidence", default=None, metavar="A,B",
        help="train and validate through the clip defence: logits = mean of tanh(A * patch logit + B) "
             "(Clipped BagNet); certify the model with --defense clip --tanh-scale A --tanh-shift B",
    )
    g.add_argument(
        "--mask-patches", type=int, default=0, metavar="N",
        help="PatchCleanser's masked training (Cutout with its masks): N masks per training image at random "
             "positions, each of the size of the mask set for --mask-sticker with --cleanser-masks per axis at "
             "--img-size, filled with the mean colour; the paper fine-tunes with 2 (default: 0, off)",
    )
    g.add_argument("--mask-sticker", default="2%", metavar="SIZE",
                   help="the sticker --mask-patches sizes its masks for: pixels or a share of the crop's area")
    g.add_argument("--cleanser-masks", type=int, default=6, metavar="K",
                   help="masks per axis of that mask set, as bagnet certify --defense cleanser --cleanser-masks K")
    g.add_argument("--workers", type=int, default=4, help="data-loading processes per training process")
    g = p.add_argument_group("speed")
    g.add_argument("--amp", choices=("none", "bf16", "fp16", "auto"), default="none",
                   help="mixed precision: bf16 (CPU or GPU), fp16 (GPU, with a grad scaler), or auto: bf16 where "
                        "the CPU (AMX, AVX-512 BF16) or GPU has fast bfloat16 units, else float32. A resumed "
                        "run may change it")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster on recent GPUs). A resumed run may change it")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seeds python, numpy, torch, the loader and --val-split")
    g.add_argument("--deterministic", action="store_true", help="reproducible to the bit (slower on GPU)")
    g.add_argument(
        "--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
        help="continue the run in --out (its last.pt) or from CHECKPOINT",
    )
    g.add_argument("--stop-after", type=int, default=None, metavar="EPOCH", help="end this sitting after EPOCH")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars on a terminal, nor progress lines in a log")
    p.set_defaults(func=run)


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Give the shared option ``dest`` training's meaning in ``bagnet train --help``."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text
            return
    raise KeyError(dest)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The :class:`~bagnet.train.TrainConfig` of the parsed arguments, and the names of the
    options typed on the command line (whatever their values)."""
    from ..train import TrainConfig
    from ..train.config import parse_clip_evidence

    values = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if hasattr(args, k)}
    values = {k: ("" if v is None and k in ("data", "out", "model") else v) for k, v in values.items()}
    if values.get("clip_evidence") is not None:
        values["clip_evidence"] = parse_clip_evidence(values["clip_evidence"])
    explicit = set(getattr(args, GIVEN, None) or ()) & set(values)
    values["command"] = shlex.join(["bagnet", *sys.argv[1:]])
    return TrainConfig(**values), explicit


def run(args: argparse.Namespace) -> int:
    from ..train import train

    if not args.out:
        raise ValueError("--out RUN_DIR is required")
    cfg, explicit = config_from_args(args)
    path = train(cfg, explicit)
    if path.exists():
        print(f"model: {path}")
    return 0
