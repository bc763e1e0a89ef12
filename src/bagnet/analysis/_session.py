"""The session that all experiments of a run share: the data, the models and the cache of
their outputs, and the key that tells whether a saved step is up to date."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._device import resolve_device
from .._io import check_writable
from ..data.transforms import DEFAULT_IMG_SIZE, Preprocessing
from ._classifier import Classifier, build_model, make_classifier
from ._data import EvalData, load_data
from ._predictions import LogitCache
from ._specs import ModelSpec
from ._stats import Bootstrap

logger = logging.getLogger(__name__)

__all__ = ["RESULT_VERSION", "Session"]

# Part of every step key: raised when the experiments' results change meaning or gain
# fields, so that results written by an older bagnet are computed again (2: intervals,
# paired comparisons, Grad-CAM and both directions of spatial sensitivity).
RESULT_VERSION = 2


class Session:
    """The data, the models and the output cache that all experiments of a run share.

    Args:
        data: image folder root; ``split`` names its sub-folder (``"."`` for the root).
        bagnets, references: model specifications.
        out_dir: where results go; model outputs are cached in ``out_dir/cache``.
        img_size: evaluation resolution; default the first model's training size, else 224.
        max_images: default number of images per experiment (the first of a seeded order).
        batch_size: model inputs per forward pass.
        workers: data-loading processes.
        device: ``auto``, ``cpu``, ``cuda``...
        threads: CPU threads per operation (``torch.set_num_threads``); ``None`` keeps
            PyTorch's choice. On a CPU shared with other jobs, 1 is often much faster.
        seed: image order, patch placement and random rankings.
        class_map: ``"imagenet"`` or a ``folder<TAB>output index`` file; by default classes
            are matched as every command matches them (:func:`bagnet.data.classes.class_mapping`).
        restrict_to_folder_classes: score predictions among the data set's classes only
            (the ImageNet-subset evaluation); by default among all of a model's outputs.
        bootstrap_resamples: resamples of the bootstrap intervals and paired comparisons.
        bootstrap_seed: seed of those resamples.
    """

    def __init__(
        self,
        data: str | os.PathLike,
        bagnets: Sequence[ModelSpec],
        references: Sequence[ModelSpec] = (),
        *,
        out_dir: str | os.PathLike = "analysis",
        split: str = "val",
        img_size: int | None = None,
        max_images: int | None = None,
        batch_size: int = 32,
        workers: int = 2,
        device: str = "auto",
        threads: int | None = None,
        seed: int = 0,
        class_map: str | None = None,
        restrict_to_folder_classes: bool = False,
        bootstrap_resamples: int = 2000,
        bootstrap_seed: int = 0,
    ):
        self.bootstrap = Bootstrap(bootstrap_resamples, bootstrap_seed)
        if batch_size < 1 or workers < 0 or (max_images is not None and max_images < 1):
            raise ValueError("batch size and max images must be at least 1, workers 0 or more")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        labels = [s.label for s in [*bagnets, *references]]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"model labels must be unique, {dupes} appear twice; name them LABEL=MODEL")
        root = Path(data)
        folder = root if split in (".", "") else root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        check_writable(out_dir, "output folder", folder=True)
        self.out_dir = Path(out_dir)
        self.max_images = max_images
        self.batch_size = batch_size
        self.seed = seed
        self.restrict_to_folder_classes = bool(restrict_to_folder_classes)
        self.device = resolve_device(device)
        self.data: EvalData = load_data(folder, img_size, seed=seed, workers=workers)
        n_cls = len(self.data.classes)
        models = {s.label: build_model(s, num_classes=n_cls) for s in [*bagnets, *references]}
        # One input for every model (the analyses compare them on the same pixels): the first
        # model's preprocessing, at img_size if given; each model normalizes by itself.
        first = next(iter(models.values())).pretrained_cfg if models else {}
        if img_size is None:
            sizes = [m.pretrained_cfg.get("img_size") for m in models.values()]
            img_size = next((int(s) for s in sizes if s), DEFAULT_IMG_SIZE)
        self.data.set_img_size(img_size, Preprocessing.from_cfg(first).crop_pct)
        logger.info("preprocessing: %s", self.data.preprocessing.describe())

        def clf(spec: ModelSpec) -> Classifier:
            return make_classifier(spec, models[spec.label].to(self.device), self.data.classes, class_map, str(folder))

        self.bagnets = [clf(s) for s in bagnets]
        self.references = [clf(s) for s in references]
        for c in self.bagnets:
            if not c.is_bagnet:
                raise ValueError(f"{c.label} ({c.name}) was given as a BagNet but is not one; pass it as a reference")
        self.cache = LogitCache(self.out_dir / "cache")

    @property
    def models(self) -> list[Classifier]:
        return [*self.bagnets, *self.references]

    def describe(self) -> dict[str, Any]:
        return {
            "data": str(self.data.root),
            "classes": self.data.classes,
            "img_size": self.data.img_size,
            "preprocessing": self.data.preprocessing.describe(),
            "restrict_to_folder_classes": self.restrict_to_folder_classes,
            "seed": self.seed,
            "bootstrap": self.bootstrap.describe(),
            "device": str(self.device),
            "models": [m.describe() for m in self.models],
        }

    def step_key(self, experiment: str, options: dict[str, Any]) -> str:
        """Changes whenever the models, weights, data or options of a step change."""
        parts = {
            "version": RESULT_VERSION,
            "experiment": experiment,
            "options": options,
            "data": self.data.fingerprint(),
            "seed": self.seed,
            "max_images": self.max_images,
            "restrict": self.restrict_to_folder_classes,
            "models": [m.fingerprint for m in self.models],
        }
        return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
