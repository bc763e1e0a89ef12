"""Is this image one of the classes the model knows? A calibrated "none of these" flag.

A classifier always answers with one of its classes, also for a photo of something it was
never taught. A model file can carry a threshold on a familiarity score of its logits,
calibrated on images of its own classes and images of other classes
(:func:`calibrate_unknown`, ``bagnet calibrate``); :func:`unknown_check` then flags a
prediction as "probably none of the N classes this model knows" when the score falls below
it. Scores (higher means more like the known classes):

* ``max_softmax``: the largest class probability (Hendrycks & Gimpel, ICLR 2017);
* ``max_logit``: the largest logit (Hendrycks et al., ICML 2022);
* ``energy``: ``logsumexp`` of the logits (Liu et al., NeurIPS 2020).

.. note::
    The flag is a statistical filter, not a guarantee: it is set so that a stated fraction
    of in-class validation images (the *cost*) is flagged, and it catches the fraction of
    other-class images measured at calibration, on those images. Photos unlike both sets
    can behave differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .._text import plural

__all__ = ["UNKNOWN_METHODS", "UnknownCalibration", "UnknownCheck", "calibrate_unknown", "familiarity", "unknown_check"]

UNKNOWN_METHODS = ("max_softmax", "max_logit", "energy")
"""The familiarity scores :func:`familiarity` computes from the logits, and :func:`calibrate_unknown` chooses among."""


def familiarity(logits: torch.Tensor, method: str) -> torch.Tensor:
    """Familiarity score of each row of ``logits`` ``[..., num_classes]`` (higher: more like
    the known classes)."""
    logits = torch.as_tensor(logits).float()
    if method == "max_softmax":
        return torch.softmax(logits, -1).amax(-1)
    if method == "max_logit":
        return logits.amax(-1)
    if method == "energy":
        return torch.logsumexp(logits, -1)
    raise ValueError(f"unknown familiarity score {method!r}; use one of {', '.join(UNKNOWN_METHODS)}")


@dataclass(frozen=True)
class UnknownCheck:
    """The verdict for one image.

    Attributes:
        flag: True when the image is probably none of the model's classes.
        score: the image's familiarity score.
        threshold: scores below it are flagged.
        method: the score (see :data:`UNKNOWN_METHODS`).
        num_classes: how many classes the model knows.
        message: one sentence for people ("" when not flagged).
    """

    flag: bool
    score: float
    threshold: float
    method: str
    num_classes: int
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _settings(model: nn.Module) -> tuple[str, float] | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    unknown = cfg.get("unknown")
    if not unknown:
        return None
    try:
        method, threshold = str(unknown["method"]), float(unknown["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"the model's pretrained_cfg['unknown'] must be {{'method': ..., 'threshold': ...}}, got {unknown!r}"
        ) from None
    if method not in UNKNOWN_METHODS:
        raise ValueError(f"the model's unknown-class score {method!r} is not one of {', '.join(UNKNOWN_METHODS)}")
    return method, threshold


def unknown_check(model: nn.Module, logits: torch.Tensor) -> UnknownCheck | list[UnknownCheck] | None:
    """Flag predictions that are probably none of the model's classes.

    Args:
        model: a model whose ``pretrained_cfg["unknown"]`` holds a calibrated
            ``{"method", "threshold"}`` (see :func:`calibrate_unknown`).
        logits: ``[num_classes]`` for one image or ``[B, num_classes]``.

    Returns:
        ``None`` when the model carries no calibrated threshold (nothing can be said);
        else an :class:`UnknownCheck`, or a list of them for a batch.
    """
    settings = _settings(model)
    if settings is None:
        return None
    method, threshold = settings
    logits = torch.as_tensor(logits).detach().float().cpu()
    n = logits.shape[-1]
    scores = familiarity(logits.reshape(-1, n), method).tolist()
    checks = []
    for s in scores:
        flag = s < threshold
        message = f"probably none of the {plural(n, 'class')} this model knows" if flag else ""
        checks.append(UnknownCheck(flag, float(s), threshold, method, n, message))
    return checks[0] if logits.dim() == 1 else checks


@dataclass(frozen=True)
class UnknownCalibration:
    """A threshold and what it was measured to do.

    Attributes:
        method: the familiarity score.
        threshold: images scoring below it are flagged.
        cost: fraction of in-class images flagged (on the images it was set on).
        caught: fraction of other-class images flagged (same).
        known_images, unknown_images: how many images of each kind it was set on.
        auroc: how well the score separates the two sets regardless of threshold
            (0.5 = chance, 1 = perfect).
    """

    method: str
    threshold: float
    cost: float
    caught: float
    known_images: int
    unknown_images: int
    auroc: float

    def to_dict(self) -> dict:
        return asdict(self)

    def evaluate(self, known: Sequence[float], unknown: Sequence[float]) -> dict:
        """Cost and catch rate of this threshold on other (held-out) scores."""
        known, unknown = np.asarray(known, float), np.asarray(unknown, float)
        return {
            "cost": float(np.mean(known < self.threshold)) if known.size else float("nan"),
            "caught": float(np.mean(unknown < self.threshold)) if unknown.size else float("nan"),
            "known_images": int(known.size),
            "unknown_images": int(unknown.size),
        }


def _auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    # Probability that a random known image scores higher than a random unknown one (ties 1/2).
    both = np.concatenate([known, unknown])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_ = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_[j + 1] == sorted_[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_known = ranks[: len(known)].sum()
    return float((r_known - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def calibrate_unknown(
    known: Sequence[float], unknown: Sequence[float], *, method: str, cost: float = 0.05
) -> UnknownCalibration:
    """Set the threshold so that a fraction ``cost`` of in-class images is flagged.

    Args:
        known: familiarity scores of images of the model's classes (e.g. its val set).
        unknown: scores of images of other classes (used to report what the threshold
            catches; the threshold itself depends on ``known`` only).
        method: the score these were computed with.
        cost: fraction of in-class images one accepts to see flagged, in (0, 1).
    """
    if not 0 < cost < 1:
        raise ValueError(f"cost must lie strictly between 0 and 1, got {cost}")
    known_a, unknown_a = np.asarray(known, float), np.asarray(unknown, float)
    if known_a.size < 2 or unknown_a.size < 1:
        raise ValueError(
            f"calibration needs images of the model's classes and of other classes; got {known_a.size} and "
            f"{unknown_a.size}"
        )
    if method not in UNKNOWN_METHODS:
        raise ValueError(f"unknown familiarity score {method!r}; use one of {', '.join(UNKNOWN_METHODS)}")
    # Flag the k = ceil(cost * n) lowest known scores. The threshold sits halfway between the
    # k-th and the next score, so float rounding of a recomputed score cannot flip the count;
    # with a tie there it sits just above the tied value.
    s = np.sort(known_a)
    k = min(int(np.ceil(cost * s.size)), s.size - 1)
    lo, hi = s[k - 1], s[k]
    threshold = float((lo + hi) / 2) if hi > lo else float(np.nextafter(lo, np.inf))
    return UnknownCalibration(
        method=method,
        threshold=threshold,
        cost=float(np.mean(known_a < threshold)),
        caught=float(np.mean(unknown_a < threshold)),
        known_images=int(known_a.size),
        unknown_images=int(unknown_a.size),
        auroc=_auroc(known_a, unknown_a),
    )
