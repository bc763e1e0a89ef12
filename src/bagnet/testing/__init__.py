"""Helpers that tests (and users writing their own) reuse: tiny data sets and models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_image_folder"]


def make_image_folder(
    root: str | Path,
    classes: tuple[str, ...] = ("circle", "square", "stripes"),
    per_class: int = 4,
    size: int = 40,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write a small learnable ImageFolder: ``root/<split>/<class>/<i>.png``.

    Class k draws a bright local texture (distinct colour and pattern per class) at a
    random place on a noisy background, so class evidence is local, as BagNets assume.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        for k, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
                s = max(6, size // 3)
                y, x = rng.integers(0, size - s + 1, size=2)
                patch = np.zeros((s, s, 3), np.uint8)
                yy, xx = np.mgrid[:s, :s]
                pattern = ((yy + xx * (k + 1)) // max(1, s // (k + 2))) % 2
                patch[..., k % 3] = 200 + 55 * pattern
                img[y : y + s, x : x + s] = patch
                Image.fromarray(img).save(d / f"{i}.png")
    return root
