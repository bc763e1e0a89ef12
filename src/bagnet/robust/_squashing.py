"""The clip defence's squashing: which ``tanh(scale * x + shift)`` a model is defended with.

Clipped BagNet (Zhang, Yuan, Mueller, Wagner, *Clipped BagNet: Defending Against Sticker
Attacks with Clipped Bag-of-features*, IEEE S&P Workshops 2020,
https://arxiv.org/abs/2003.07937) squashes every patch logit into a bounded range before
averaging. :func:`clip_squashing` decides the squashing for a model: its own training
squashing where it was trained through the clip defence, else
:data:`RECOMMENDED_SQUASHING`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["RECOMMENDED_SQUASHING", "ClipSquashing", "check_clip_evidence", "clip_squashing", "describe_clip_evidence",
           "parse_train_evidence"]

# ``(scale, shift)`` of tanh(scale * x + shift) for models not trained through the clip
# defence: chosen on training images for the shipped models (docs/ROBUSTNESS.md), where
# Clipped BagNet's tanh(0.05 * x - 1), chosen for ImageNet BagNet-33 logits, certifies ~0%.
RECOMMENDED_SQUASHING = (1.0, -2.0)
"""``(tanh_scale, tanh_shift)`` of the clip defence for a model not trained through it."""


# -- the squashing a model was trained through (`bagnet train --clip-evidence A,B`) ------------


def check_clip_evidence(values: Sequence[float] | None) -> str | None:
    """The problem with ``values`` as ``--clip-evidence`` (``None``: fine or not set)."""
    if values is None:
        return None
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return f"--clip-evidence must be two finite numbers A,B for tanh(A * x + B), got {values!r}"
    if values[0] <= 0:
        # A scale of 0 makes every patch the same constant; a negative one reverses the evidence.
        return f"--clip-evidence scale A must be positive, got {values[0]:g}"
    return None


def describe_clip_evidence(values: Sequence[float]) -> str:
    """``"clip tanh(1 * x - 2)"``: what a model trained with ``--clip-evidence`` averaged."""
    a, b = values
    return f"clip tanh({a:g} * x {'-' if b < 0 else '+'} {abs(b):g})"


_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TRAIN_EVIDENCE = re.compile(rf"\s*clip\s+tanh\(\s*({_NUMBER})\s*\*\s*x\s*([+-])\s*({_NUMBER})\s*\)\s*")


def parse_train_evidence(text: str) -> list[float] | None:
    """A model file's ``train_evidence`` -> ``[A, B]``, the inverse of
    :func:`describe_clip_evidence`; ``None`` for ``"mean"`` (trained on the plain logits).

    Raises:
        ValueError: neither ``"mean"`` nor ``"clip tanh(A * x + B)"`` with valid A and B.
    """
    if str(text).strip() == "mean":
        return None
    match = _TRAIN_EVIDENCE.fullmatch(str(text))
    values = None
    if match:
        values = [float(match[1]), float(match[3]) * (-1 if match[2] == "-" else 1)]
    if values is None or check_clip_evidence(values):
        raise ValueError(f"the model file's train_evidence {text!r} is neither 'mean' nor 'clip tanh(A * x + B)' with "
                         "A > 0; give the squashing (--tanh-scale and --tanh-shift)")
    return values


@dataclass(frozen=True)
class ClipSquashing:
    """The clip defence's squashing ``tanh(scale * x + shift)``, and why it was chosen.

    Attributes:
        scale, shift: the squashing.
        source: where it comes from, in words (printed and recorded by the commands).
    """

    scale: float
    shift: float
    source: str

    def __str__(self) -> str:
        return f"tanh({self.scale:g} * x {'-' if self.shift < 0 else '+'} {abs(self.shift):g})"


def _trained_squashing(model: nn.Module) -> list[float] | None:
    """``[A, B]`` of a model trained with ``bagnet train --clip-evidence A,B``, from its
    ``pretrained_cfg`` (the numbers of ``config.clip_evidence``, checked against the
    ``train_evidence`` text); ``None`` for a model trained on the plain mean."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    text = cfg.get("train_evidence")
    parsed = parse_train_evidence(text) if text is not None else None
    config = cfg.get("config")
    numbers = config.get("clip_evidence") if isinstance(config, dict) else None
    if numbers is None:
        return parsed
    problem = check_clip_evidence(numbers)
    if problem:
        raise ValueError(f"the model file's config.clip_evidence cannot be read ({problem}); give the squashing "
                         "(tanh_scale and tanh_shift, or --tanh-scale and --tanh-shift)")
    numbers = [float(v) for v in numbers]
    # The text was written with 6 significant digits.
    if text is not None and (parsed is None or not all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)
                                                       for a, b in zip(parsed, numbers))):
        raise ValueError(f"the model file contradicts itself: train_evidence {text!r} but config.clip_evidence "
                         f"{numbers}; give the squashing (tanh_scale and tanh_shift, or --tanh-scale and --tanh-shift)")
    return numbers


def clip_squashing(model: nn.Module, tanh_scale: float | None = None, tanh_shift: float | None = None) -> ClipSquashing:
    """The squashing the clip defence uses for ``model``, and why.

    The model's own training squashing if it was trained through the clip defence
    (``bagnet train --clip-evidence A,B`` records ``A, B`` in the model file), else
    :data:`RECOMMENDED_SQUASHING`, ``tanh(1 * x - 2)``: the squashing docs/ROBUSTNESS.md
    chose for the shipped models on training images (20-30% certified where Clipped
    BagNet's ``tanh(0.05 * x - 1)``, chosen for ImageNet BagNet-33 logits, certifies about
    0%). ``tanh_scale`` and ``tanh_shift`` win where given.

    Args:
        model: the BagNet (its ``pretrained_cfg`` says how it was trained).
        tanh_scale: an explicit value, or ``None`` to decide.
        tanh_shift: an explicit value, or ``None`` to decide.

    Raises:
        ValueError: a given value is not finite, or the model file's record of its training
            squashing cannot be read.
    """
    for name, value in (("tanh_scale", tanh_scale), ("tanh_shift", tanh_shift)):
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if tanh_scale is not None and tanh_shift is not None:
        return ClipSquashing(float(tanh_scale), float(tanh_shift), "given")
    trained = _trained_squashing(model)
    if trained is not None:
        (scale, shift), source = trained, "the model's own training squashing (bagnet train --clip-evidence)"
    else:
        (scale, shift), source = RECOMMENDED_SQUASHING, ("the squashing docs/ROBUSTNESS.md recommends for the shipped "
                                                         "models (the model was not trained through the clip defence)")
    if tanh_scale is not None:
        scale, source = float(tanh_scale), f"scale given; shift from {source}"
    if tanh_shift is not None:
        shift, source = float(tanh_shift), f"shift given; scale from {source}"
    return ClipSquashing(float(scale), float(shift), source)
