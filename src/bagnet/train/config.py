"""The resolved configuration of a training run, written to ``RUN_DIR/config.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The text of the clip squashing is the robust package's (which reads it back from model
# files); it is importable from here too, where the training option is defined.
from ..robust._squashing import check_clip_evidence
from ..robust._squashing import describe_clip_evidence as describe_clip_evidence
from ..robust._squashing import parse_train_evidence as parse_train_evidence

AMP_MODES = ("none", "bf16", "fp16", "auto")
SCHEDULES = ("cosine", "step")

# Options of one sitting: a resumed run takes them from its own command line. ``out`` is
# the folder being resumed (it may be spelled another way than when the run started).
SITTING = frozenset({"stop_after", "resume", "progress", "command", "out"})
# Options a resumed run may change when given explicitly. ``epochs`` alters the schedule
# (it is re-planned over the new length, see ``loop._resume_schedule``), but extending a
# run is a reason to resume; a moved ``data`` folder is checked against the stored
# classes; ``workers`` and ``device`` change the random stream (each loader worker draws
# its own augmentations), so a resumed run keeps the stored ones unless told. Every other
# option changes what the run computes: typed with another value than the run's, it is
# refused. That includes ``clip_evidence``: switching the aggregation mid-run would leave a
# model trained for neither, and its best.pt chosen by another val measure; fine-tune a
# finished run with it instead (a new --out with --weights RUN/model.pt). ``amp`` and
# ``channels_last`` are the machine's: a run resumed on another CPU or GPU may pick the
# precision and memory format that are fast there (they change rounding, not the recipe;
# log.jsonl records the precision of every epoch).
RESUME_MAY_CHANGE = SITTING | {"data", "epochs", "workers", "device", "amp", "channels_last"}


def parse_clip_evidence(text: str) -> list[float]:
    """``"A,B"`` -> ``[A, B]``, the squashing ``tanh(A * x + B)`` of ``--clip-evidence``.

    Raises:
        ValueError: not two comma-separated numbers.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(f"--clip-evidence {text!r} must be two numbers A,B for tanh(A * x + B), e.g. 1,-2")
    return values


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Defaults follow torchvision's classification reference scaled to one machine; the
    CPU recipe for the slim BagNets is in ``docs/training.md``.
    """

    data: str = ""
    out: str = ""
    model: str = ""
    # initial weights: tag, path, run folder or URL; other classes than the data's get a new head
    weights: str | None = None
    img_size: int = 224  # the training crop; also the size the model is evaluated at
    crop_scale: float = 0.08  # smallest RandomResizedCrop area, as a fraction of the image
    epochs: int = 90
    batch_size: int = 32  # per process
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30  # epochs between decays (step schedule)
    gamma: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    accum_steps: int = 1
    ema: bool = False
    ema_decay: float = 0.9998
    ema_steps: int = 1  # optimizer steps between EMA updates
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    val_split: float | None = None
    outliers: str | None = None  # images of none of the classes (outlier exposure)
    outlier_weight: float = 0.5
    outlier_repeat: int = 1  # times each outlier image appears per epoch
    # [A, B]: train (and validate) through the clip defence, logits = mean of tanh(A * x + B)
    # over the patch logits x; None: the plain mean.
    clip_evidence: list[float] | None = None
    # PatchCleanser's masked training: this many masks per training image (0: none), each of
    # the size of the mask set for a mask_sticker sticker with cleanser_masks masks per axis
    # at img_size (see bagnet.robust.mask_set); the paper fine-tunes with 2.
    mask_patches: int = 0
    mask_sticker: str = "2%"
    cleanser_masks: int = 6
    resume: str | None = None
    stop_after: int | None = None  # end this sitting after this epoch (resume later)
    device: str = "auto"
    progress: bool = True
    command: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first option that cannot work."""
        checks = [
            (bool(self.data), "--data is required"),
            (bool(self.out), "--out is required"),
            (bool(self.model or self.weights),
             "--model is required (or --weights with weights that name their model, to fine-tune them)"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 < self.crop_scale <= 1, f"--crop-scale must lie in (0, 1], got {self.crop_scale}"),
            (self.img_size >= 1, f"--img-size must be positive, got {self.img_size}"),
            (self.accum_steps >= 1, f"--accum-steps must be at least 1, got {self.accum_steps}"),
            (self.workers >= 0, f"--workers must be 0 or more, got {self.workers}"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (0 < self.ema_decay < 1, f"--ema-decay must lie in (0, 1), got {self.ema_decay}"),
            (self.outlier_weight >= 0, f"--outlier-weight must be 0 or more, got {self.outlier_weight}"),
            (self.outlier_repeat >= 1, f"--outlier-repeat must be at least 1, got {self.outlier_repeat}"),
            (self.ema_steps >= 1, f"--ema-steps must be at least 1, got {self.ema_steps}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}"),
            (self.step_size >= 1, f"--step-size must be at least 1, got {self.step_size}"),
            (self.stop_after is None or self.stop_after >= 1, "--stop-after must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        problem = check_clip_evidence(self.clip_evidence)
        if problem:
            raise ValueError(problem)
        if isinstance(self.mask_patches, bool) or not isinstance(self.mask_patches, int) or self.mask_patches < 0:
            raise ValueError(f"--mask-patches must be 0 or more, got {self.mask_patches!r}")
        if self.mask_patches:
            train_masks(self)  # a sticker or mask count that cannot make a mask set is refused here
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Options that only act under another setting: option -> (does it act?, what makes it act).
# Given while it does not act, such an option would be silently ignored, so it is refused.
DEPENDENT_OPTIONS: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    "ema_decay": (lambda c: c.ema, "--ema"),
    "ema_steps": (lambda c: c.ema, "--ema"),
    "min_lr": (lambda c: c.schedule == "cosine", "--schedule cosine"),
    "step_size": (lambda c: c.schedule == "step", "--schedule step"),
    "gamma": (lambda c: c.schedule == "step", "--schedule step"),
    "mask_sticker": (lambda c: bool(c.mask_patches), "--mask-patches N"),
    "cleanser_masks": (lambda c: bool(c.mask_patches), "--mask-patches N"),
}


def set_options(cfg: TrainConfig, explicit: set[str] | frozenset[str]) -> set[str]:
    """The options the user set: those typed (``explicit``, from the command line), or for
    a configuration built in Python (nothing typed), the fields that differ from their default."""
    if explicit:
        return set(explicit)
    fields = TrainConfig.__dataclass_fields__
    return {k for k in DEPENDENT_OPTIONS if getattr(cfg, k) != fields[k].default}


def check_dependent_options(cfg: TrainConfig, given: set[str]) -> None:
    """Refuse an option in ``given`` that ``cfg`` would ignore (see :data:`DEPENDENT_OPTIONS`)."""
    for key in sorted(given & DEPENDENT_OPTIONS.keys()):
        acts, switch = DEPENDENT_OPTIONS[key]
        if not acts(cfg):
            option = "--" + key.replace("_", "-")
            raise ValueError(f"{option} {getattr(cfg, key)} only acts with {switch}; add {switch} or drop {option}")


def train_masks(cfg: TrainConfig) -> dict[str, Any] | None:
    """The masked training of ``cfg`` (``--mask-patches``): ``None`` when off, else what the
    model file records as ``train_masking``: ``masks`` (per image), ``mask_size``
    ``[rows, cols]``, ``sticker`` (as given), ``sticker_px``, ``cleanser_masks`` (k per axis)
    and ``fill``.

    Raises:
        ValueError: the mask set cannot be built at ``img_size`` (see
            :func:`bagnet.robust.mask_set`), said with the options' names.
    """
    if not cfg.mask_patches:
        return None
    from ..robust import mask_set

    if isinstance(cfg.cleanser_masks, bool) or not isinstance(cfg.cleanser_masks, int) or cfg.cleanser_masks < 1:
        raise ValueError(f"--cleanser-masks must be at least 1, got {cfg.cleanser_masks!r}")
    try:
        masks = mask_set(cfg.img_size, cfg.mask_sticker, cfg.cleanser_masks)
    except ValueError as e:
        raise ValueError(f"--mask-sticker {cfg.mask_sticker} with --cleanser-masks {cfg.cleanser_masks} at --img-size "
                         f"{cfg.img_size}: {e}") from None
    return {"masks": cfg.mask_patches, "mask_size": list(masks.mask_size), "sticker": str(cfg.mask_sticker),
            "sticker_px": masks.patch_size, "cleanser_masks": cfg.cleanser_masks,
            "fill": "mean (0 in the normalized input)"}


def merge_for_resume(stored: dict[str, Any], given: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The stored run's configuration, updated with the options given on resume.

    Args:
        stored: the configuration saved in the checkpoint.
        given: the configuration of this invocation.
        explicit: names of the options the user typed in this invocation, whatever their
            values: a typed default is a request like any other. Options not typed keep
            the run's values (sitting options excepted).

    Raises:
        ValueError: a typed option differs from the run being resumed and would change
            what it computes.
    """
    merged = TrainConfig.from_dict(stored)  # a key an older run lacks gets today's default
    given_d, run_d = given.to_dict(), merged.to_dict()
    changed = [k for k in explicit if k in given_d and k not in RESUME_MAY_CHANGE and given_d[k] != run_d[k]]
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {given_d[k]!r} (run has {run_d[k]!r})" for k in sorted(changed))
        raise ValueError(f"cannot change {shown} when resuming; start a new run with another --out instead")
    for k in RESUME_MAY_CHANGE:
        if k in SITTING or k in explicit:
            setattr(merged, k, given_d[k])
    return merged.validate()
