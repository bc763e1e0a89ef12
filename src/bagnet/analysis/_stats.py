"""Small statistics of the experiments."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["nan_if_none", "pearson"]


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
