"""Model outputs, computed once per model and image and cached in memory and on disk."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ._classifier import Classifier
from ._data import EvalData
from ._output import slug

logger = logging.getLogger(__name__)

__all__ = ["LogitCache", "Predictions", "aligned_predictions", "predictions"]

# Largest logits over all outputs kept per image: enough for top-1 and top-5.
TOP_LOGITS = 5


@dataclass
class Predictions:
    """Outputs of one model on a set of images.

    Attributes:
        indices: sample indices into the data set ``[N]``.
        targets: true classes ``[N]``.
        logits: outputs of the data set's classes ``[N, C]``.
        logsumexp: log-sum-exp over all outputs of the model ``[N]`` (so softmax
            probabilities over the full output follow from ``logits`` without rerunning).
        seconds: time spent in the model's forward passes (not in data loading).
        top_logits: the ``TOP_LOGITS`` largest logits over all outputs of the model,
            descending ``[N, TOP_LOGITS]`` (``-inf`` beyond a smaller model's outputs), so
            top-k accuracy over all outputs follows from ``logits`` too.
    """

    indices: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    logsumexp: np.ndarray
    seconds: float
    top_logits: np.ndarray

    @property
    def images_per_s(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else float("nan")

    def probs(self) -> np.ndarray:
        """Softmax over all model outputs, at the data set's classes ``[N, C]``."""
        return np.exp(self.logits - self.logsumexp[:, None])

    def predicted(self, restricted: bool = False) -> np.ndarray:
        """The predicted data-set class of every image ``[N]``; unless ``restricted``, ``-1``
        where the model's highest output is none of the data set's classes (a wrong answer,
        as :func:`bagnet.data.classes.scoring_note` scores it)."""
        pred = self.logits.argmax(1)
        if restricted or len(pred) == 0:
            return pred
        return np.where(self.top_logits[:, 0] > self.logits.max(1), -1, pred)

    def take(self, indices: Sequence[int]) -> Predictions:
        """The rows of these sample indices, in this order (missing ones are dropped)."""
        pos = {int(i): k for k, i in enumerate(self.indices)}
        rows = np.asarray([pos[int(i)] for i in indices if int(i) in pos], dtype=np.int64)
        frac = len(rows) / max(len(self.indices), 1)
        return Predictions(
            self.indices[rows], self.targets[rows], self.logits[rows], self.logsumexp[rows], self.seconds * frac,
            self.top_logits[rows],
        )


class LogitCache:
    """Model outputs per model and image, kept in memory and in ``DIR/logits-*.npz``.

    A request computes only the images not yet cached and adds them, so experiments that
    use nested image subsets never recompute an output.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else Path(directory)
        self._mem: dict[str, Predictions] = {}

    def _path(self, key: str, label: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"logits-{slug(label)}-{key}.npz"

    def get(
        self, clf: Classifier, data: EvalData, indices: Sequence[int], batch_size: int = 32
    ) -> Predictions:
        key = hashlib.sha1(f"{clf.fingerprint}|{data.fingerprint()}".encode()).hexdigest()[:12]
        have = self._mem.get(key) or self._read(key, clf.label)
        wanted = [int(i) for i in indices]
        known = set() if have is None else set(have.indices.tolist())
        todo = [i for i in wanted if i not in known]
        if todo:
            new = _compute(clf, data, todo, batch_size)
            have = new if have is None else _concat(have, new)
            self._write(key, clf.label, have)
        self._mem[key] = have
        return have.take(wanted)

    def _read(self, key: str, label: str) -> Predictions | None:
        path = self._path(key, label)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as z:
                if "top_logits" not in z:
                    return None  # written by an older bagnet: computed again
                return Predictions(
                    z["indices"], z["targets"], z["logits"], z["logsumexp"], float(z["seconds"]), z["top_logits"]
                )
        except (OSError, KeyError, ValueError) as e:
            logger.warning("ignoring unreadable cache %s (%s)", path, e)
            return None

    def _write(self, key: str, label: str, p: Predictions) -> None:
        path = self._path(key, label)
        if path is None:
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, indices=p.indices, targets=p.targets, logits=p.logits, logsumexp=p.logsumexp,
                     seconds=np.float64(p.seconds), top_logits=p.top_logits)


def _compute(clf: Classifier, data: EvalData, indices: list[int], batch_size: int) -> Predictions:
    out_idx, out_y, out_logits, out_lse, out_top = [], [], [], [], []
    seconds = 0.0
    for x, y, idx in data.iter_batches(indices, batch_size, desc=f"outputs of {clf.label}"):
        x = x.to(clf.device)
        _sync(clf.device)
        t0 = time.perf_counter()
        full = clf.full_logits(x)
        _sync(clf.device)
        seconds += time.perf_counter() - t0
        out_idx.append(idx.numpy())
        out_y.append(y.numpy())
        out_logits.append(clf.restrict(full).cpu().numpy())
        out_lse.append(full.logsumexp(1).cpu().numpy())
        top = full.topk(min(TOP_LOGITS, full.shape[1]), dim=1).values
        out_top.append(torch.nn.functional.pad(top, (0, TOP_LOGITS - top.shape[1]), value=-math.inf).cpu().numpy())
    if not out_idx:
        raise ValueError(f"none of the {len(indices)} requested images could be read")
    return Predictions(
        np.concatenate(out_idx), np.concatenate(out_y), np.concatenate(out_logits).astype(np.float32),
        np.concatenate(out_lse).astype(np.float32), seconds, np.concatenate(out_top),
    )


def _concat(a: Predictions, b: Predictions) -> Predictions:
    return Predictions(
        np.concatenate([a.indices, b.indices]), np.concatenate([a.targets, b.targets]),
        np.concatenate([a.logits, b.logits]), np.concatenate([a.logsumexp, b.logsumexp]), a.seconds + b.seconds,
        np.concatenate([a.top_logits, b.top_logits]),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predictions(
    clf: Classifier,
    data: EvalData,
    max_images: int | None = None,
    *,
    batch_size: int = 32,
    cache: LogitCache | None = None,
) -> Predictions:
    """Outputs of ``clf`` on the first ``max_images`` images of ``data`` (cached)."""
    return (cache or LogitCache()).get(clf, data, data.indices(max_images), batch_size)


def aligned_predictions(
    models: Sequence[Classifier], data: EvalData, max_images: int | None, *, batch_size: int, cache: LogitCache | None
) -> dict[str, Predictions]:
    """Outputs of every model on the same images (those all of them could read), in one order."""
    cache = cache or LogitCache()
    preds = {m.label: predictions(m, data, max_images, batch_size=batch_size, cache=cache) for m in models}
    common = set.intersection(*(set(p.indices.tolist()) for p in preds.values()))
    order = [int(i) for i in data.indices(max_images) if int(i) in common]
    return {k: p.take(order) for k, p in preds.items()}
