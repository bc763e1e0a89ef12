"""What experiments write: JSON (NaN as null), PNG figures, and progress bars."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .._extras import require
from .._io import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["new_figure", "panel_grid", "progress", "read_json", "save_figure", "slug", "write_json", "write_result"]


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (dataclasses, numpy values allowed; NaN becomes null) atomically."""
    return write_text(path, json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def new_figure(
    ncols: int = 1, nrows: int = 1, *, size: tuple[float, float] = (4.5, 3.4), squeeze: bool = True
) -> tuple[Figure, Any]:
    """A pyplot-free figure (no GUI backend, nothing to close) and its axes."""
    Figure = require("matplotlib.figure", "the analyses' figures").Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def panel_grid(n: int, size: tuple[float, float], max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels in rows of up to ``max_cols``; returns ``(fig, axes[:n])``."""
    cols = max(1, min(max_cols, n))
    fig, axes = new_figure(cols, max(1, math.ceil(n / cols)), size=size, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def write_result(out_dir: str | os.PathLike, stem: str, experiment: str, payload: dict, fig: Figure,
                 meta: dict | None = None) -> dict[str, Path]:
    """``STEM.png`` then ``STEM.json`` (``experiment``, ``meta`` and the payload) in ``out_dir``.

    The JSON is written last: its presence marks the step as finished.
    """
    out = Path(out_dir)
    return {
        "png": save_figure(fig, out / f"{stem}.png"),
        "json": write_json({"experiment": experiment, "meta": meta or {}, **payload}, out / f"{stem}.json"),
    }


def progress(iterable: Iterable[T], desc: str | None, total: int | None = None) -> Iterable[T]:
    """Progress of a loop when a description is given (``BAGNET_PROGRESS=0`` turns it off).

    On a terminal, a tqdm bar; otherwise (a log file, a batch job) a plain log line every
    tenth of the loop, as ``bagnet train`` writes: carriage-return frames would fill a
    redirected log with one unreadable line per update.
    """
    if desc is None or os.environ.get("BAGNET_PROGRESS", "1") == "0":
        return iterable
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # an optional extra; log lines then
            return _progress_lines(iterable, desc, total)
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return _progress_lines(iterable, desc, total)


def _progress_lines(iterable, desc: str, total: int | None):
    start = time.perf_counter()
    every = max(1, total // 10) if total else None
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        if every is not None and i % every == 0:
            logger.info("%s: %d/%d, %.0f s", desc, i, total, time.perf_counter() - start)
    if every is None or i % every:
        logger.info("%s: %d/%s, %.0f s", desc, i, total or i, time.perf_counter() - start)
