"""ImageNet-1k metadata shipped with the package: class names and normalization."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard index order."""
    text = resources.files("bagnet.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names instead of 1000; reinstall bagnet")
    return names
