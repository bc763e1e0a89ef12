"""Small statistics of the experiments: Pearson r, and the percentile bootstrap over images.

Every number an experiment reports is a statistic of its images (a mean, a correlation,
a regression slope). Its uncertainty comes from a percentile bootstrap over those images
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13): draw ``resamples``
samples of the same size with replacement, recompute the statistic on each, and take the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles as the interval.

Statistics are written as functions of **resampling weights** ``w [R, n]`` (how often each
of the ``n`` images is drawn in each of ``R`` resamples), so that all resamples are
evaluated at once with matrix products; the plain estimate is the same function at
``w = 1``. Two methods or models measured on the same images are compared with a **paired**
bootstrap: both statistics are evaluated on the *same* resamples and the interval and the
two-sided p-value are those of the difference (:func:`paired_bootstrap`). One seed gives
every statistic of a run the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "Bootstrap",
    "Comparison",
    "Interval",
    "bootstrap_interval",
    "ci_pair",
    "mcnemar_exact",
    "nan_if_none",
    "pair_sums",
    "paired_bootstrap",
    "pearson",
    "percentile_interval",
    "rowwise_pearson",
    "two_sided_p",
    "weighted_mean",
    "weighted_median",
    "weighted_pearson",
]

Statistic = Callable[[np.ndarray], np.ndarray]  # weights [R, n] -> values [R, ...]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long vectors (NaN when either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally long inputs, got {a.size} and {b.size}")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def nan_if_none(v: float | None) -> float:
    """JSON stores NaN as null; plots want NaN back."""
    return float("nan") if v is None else float(v)


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed: ``resamples`` seeded resamples of the images, ``level`` coverage.

    Args:
        resamples: number of bootstrap resamples (1000-2000 give stable 95% intervals;
            p-values below ``2 / (resamples + 1)`` cannot be resolved).
        seed: seed of the resampling; the same seed gives every statistic the same resamples.
        level: coverage of the intervals (0.95: the 2.5% and 97.5% quantiles).
    """

    resamples: int = 2000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or int(self.resamples) != self.resamples or self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be a positive whole number (e.g. 2000), got {self.resamples!r}")
        if not 0.0 < float(self.level) < 1.0:
            raise ValueError(f"the interval level must lie between 0 and 1 (e.g. 0.95), got {self.level!r}")

    def describe(self) -> dict[str, float | int | str]:
        return {"method": "percentile bootstrap over images", "resamples": int(self.resamples), "seed": int(self.seed),
                "level": float(self.level)}

    def weights(self, n: int, strata: np.ndarray | None = None) -> np.ndarray:
        """Resampling weights ``[resamples, n]``: how often each image is drawn in each resample.

        Each row draws ``n`` images with replacement (rows sum to ``n``). With ``strata``
        (a label per image), images are drawn within each stratum, so every stratum keeps
        its size (a stratified bootstrap).
        """
        rng = np.random.default_rng(self.seed)
        r = int(self.resamples)
        if n == 0:
            return np.zeros((r, 0))
        offsets = (np.arange(r) * n)[:, None]

        def counts(drawn: np.ndarray) -> np.ndarray:  # [r, m] drawn image indices -> [r, n] counts
            return np.bincount((offsets + drawn).ravel(), minlength=r * n).reshape(r, n).astype(np.float64)

        if strata is None:
            return counts(rng.integers(0, n, size=(r, n)))
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata need one label per image ({n}), got shape {strata.shape}")
        w = np.zeros((r, n))
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            w += counts(members[rng.integers(0, members.size, size=(r, members.size))])
        return w


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval (arrays for vector statistics)."""

    estimate: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float

    @property
    def ci(self) -> list:
        """``[low, high]``, or ``[[low, high], ...]`` per entry of a vector statistic."""
        return ci_pair(self.low, self.high)


@dataclass(frozen=True)
class Comparison:
    """``a - b`` on the same images, its paired bootstrap interval and two-sided p-value."""

    diff: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float
    p: np.ndarray | float

    @property
    def ci(self) -> list:
        """``[low, high]`` of the difference, or ``[[low, high], ...]`` per entry."""
        return ci_pair(self.low, self.high)


def ci_pair(low: np.ndarray | float, high: np.ndarray | float) -> list:
    """``[low, high]`` for scalars, ``[[low, high], ...]`` elementwise for arrays (JSON-ready)."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if lo.ndim == 0:
        return [float(lo), float(hi)]
    return np.stack([lo, hi], axis=-1).tolist()


# -- the bootstrap ------------------------------------------------------------------------------


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles ``(1 - level) / 2`` and ``(1 + level) / 2`` of ``samples`` along axis 0.

    Non-finite resamples (e.g. a correlation of a resample where one side is constant) are
    left out; an entry without any finite resample gets NaN.
    """
    s = np.asarray(samples, dtype=np.float64)
    s = np.where(np.isfinite(s), s, np.nan)
    alpha = (1.0 - level) / 2.0
    shape = s.shape[1:]
    finite = np.isfinite(s).any(axis=0) if s.size else np.zeros(shape, bool)
    lo = np.full(shape, np.nan)
    hi = np.full(shape, np.nan)
    if np.any(finite):
        q = np.nanquantile(s[:, finite] if shape else s, [alpha, 1.0 - alpha], axis=0)
        if shape:
            lo[finite], hi[finite] = q[0], q[1]
        else:
            lo, hi = q[0], q[1]
    return (lo[()] if not shape else lo), (hi[()] if not shape else hi)


def two_sided_p(diffs: np.ndarray) -> np.ndarray | float:
    """Two-sided bootstrap p-value of ``diff == 0`` along axis 0: twice the smaller fraction
    of resamples on either side of 0 (zeros count on both sides), with the ``+1``
    correction that keeps it above 0 (Davison & Hinkley, 1997, eq. 4.11), capped at 1.
    Identical methods (every difference 0) give 1."""
    d = np.asarray(diffs, dtype=np.float64)
    ok = np.isfinite(d)
    n = ok.sum(axis=0)
    below = (ok & (d <= 0)).sum(axis=0)
    above = (ok & (d >= 0)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1.0) / (n + 1.0))
    p = np.where(n > 0, p, np.nan)
    return p[()] if p.ndim == 0 else p


def bootstrap_interval(stat: Statistic, n: int, boot: Bootstrap, *, strata: np.ndarray | None = None,
              weights: np.ndarray | None = None) -> Interval:
    """Percentile-bootstrap interval of ``stat`` over ``n`` images.

    Args:
        stat: maps weights ``[R, n]`` to values ``[R, ...]`` (see the module docstring).
        n: number of images.
        boot: resamples, seed and level.
        strata: resample within these groups (one label per image).
        weights: precomputed ``boot.weights(n, strata)`` (to share them between statistics).

    Returns:
        the estimate ``stat(1)`` and the interval bounds.
    """
    w = boot.weights(n, strata) if weights is None else weights
    est = np.asarray(stat(np.ones((1, n))), dtype=np.float64)[0]
    lo, hi = percentile_interval(stat(w), boot.level)
    return Interval(_scalar(est), _scalar(lo), _scalar(hi))


def paired_bootstrap(stat_a: Statistic, stat_b: Statistic, n: int, boot: Bootstrap, *,
                     strata: np.ndarray | None = None, weights: np.ndarray | None = None) -> Comparison:
    """``stat_a - stat_b`` on the same images: interval and two-sided p-value from the same resamples."""
    w = boot.weights(n, strata) if weights is None else weights
    one = np.ones((1, n))
    est = np.asarray(stat_a(one), dtype=np.float64)[0] - np.asarray(stat_b(one), dtype=np.float64)[0]
    d = np.asarray(stat_a(w), dtype=np.float64) - np.asarray(stat_b(w), dtype=np.float64)
    lo, hi = percentile_interval(d, boot.level)
    return Comparison(_scalar(est), _scalar(lo), _scalar(hi), _scalar(two_sided_p(d)))


def _scalar(a: np.ndarray):
    return float(a) if np.ndim(a) == 0 else a


# -- weighted statistics (the building blocks of the ``stat`` functions) -------------------------


def weighted_mean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mean of per-image values ``x [n]`` or ``[n, K]`` under weights ``w [R, n]``: ``[R]`` or ``[R, K]``.

    NaN values (e.g. an undefined per-image correlation) are left out of the mean.
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    xs = np.where(ok, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ xs) / (w @ ok.astype(np.float64))


def weighted_pearson(w: np.ndarray, sums: dict[str, np.ndarray]) -> np.ndarray:
    """Pearson r per resample from per-image sums of a paired sample.

    ``sums`` holds, per image, the count ``n`` of (x, y) pairs it contributes and the sums
    ``x``, ``y``, ``xx``, ``yy``, ``xy`` over them (one pair per image: ``n = 1``,
    ``xx = x**2``...). A resample holds image i ``w[:, i]`` times. Centre x and y first
    (e.g. by their overall means) to keep the moments accurate.
    """
    def tot(key: str) -> np.ndarray:
        return w @ np.asarray(sums[key], dtype=np.float64)

    n = tot("n")
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = tot("x") / n, tot("y") / n
        cxy = tot("xy") / n - mx * my
        cxx = tot("xx") / n - mx * mx
        cyy = tot("yy") / n - my * my
        den = np.sqrt(cxx * cyy)
        # A (near-)constant side has no correlation: NaN, as pearson() says.
        tiny = den <= 1e-12 * np.maximum(np.abs(tot("xx") / n) + np.abs(tot("yy") / n), 1e-300)
        return np.where(tiny, np.nan, cxy / den)


def weighted_median(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Median of per-image values ``x [n]`` under integer weights ``w [R, n]`` (``[R]``), as
    ``np.median`` of the resample with image i repeated ``w[:, i]`` times (the mean of the
    two middle values for an even count); NaN values are left out."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(x)
    x, w = x[keep], np.asarray(w, dtype=np.float64)[:, keep]
    out = np.full(len(w), np.nan)
    if x.size == 0:
        return out
    order = np.argsort(x, kind="stable")
    xs, cs = x[order], np.cumsum(w[:, order], axis=1)
    total = np.rint(cs[:, -1]).astype(np.int64)
    ok = total > 0
    lower_rank = (total + 1) // 2  # 1-based ranks of the middle value(s)
    upper_rank = total // 2 + 1
    lower = (cs >= lower_rank[:, None] - 0.5).argmax(axis=1)
    upper = (cs >= upper_rank[:, None] - 0.5).argmax(axis=1)
    out[ok] = 0.5 * (xs[lower[ok]] + xs[upper[ok]])
    return out


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between the rows of two ``[R, C]`` arrays (NaN columns, in either, are left
    out of every row; a constant row gives NaN)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cols = np.isfinite(a).all(0) & np.isfinite(b).all(0)
    a, b = a[:, cols], b[:, cols]
    if a.shape[1] < 2:
        return np.full(len(a), np.nan)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


def pair_sums(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image sums for :func:`weighted_pearson` of one (x, y) pair per image (``x, y [n]``),
    or of the rows of ``[n, C]`` arrays (C pairs per image); centred by the overall means."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean()
    y = y - y.mean()
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    return {"n": np.full(len(x), float(x.shape[1])), "x": x.sum(1), "y": y.sum(1), "xx": (x * x).sum(1),
            "yy": (y * y).sum(1), "xy": (x * y).sum(1)}


# -- exact tests --------------------------------------------------------------------------------


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[float, int, int]:
    """McNemar's exact test of two classifiers on the same images.

    Under the null hypothesis the images only one of them gets right are equally likely
    to be either's, so ``b`` (A right, B wrong) is Binomial(b + c, 1/2).

    Returns:
        (two-sided p-value ``min(1, 2 P[X <= min(b, c)])``, b, c).
    """
    a = np.asarray(a_correct, dtype=bool)
    b_ = np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar's test needs the same images for both models, got {a.size} and {b_.size}")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    n = b + c
    if n == 0:
        return 1.0, b, c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n))), b, c
