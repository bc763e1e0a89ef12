"""The explorer's bounded cache of what all classes' maps of an image share.

With many classes (ImageNet's 1000) the full-resolution map of each class would cost a
pass through the model; the features before the classifier are the same for every class,
so keeping them makes a class switch one dot product per pixel. They are large (BagNet-33,
224 x 224: 392 MiB; 336 x 224: 588 MiB), hence an LRU bounded in bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

__all__ = ["DEFAULT_CACHE_BYTES", "FeatureCache"]

# Default bound of the feature cache: BagNet-33's features of a 224 x 224 image take
# 224 * 224 * 2048 * 4 bytes = 392 MiB (two fit), of a 3:2 photo (336 x 224) 588 MiB.
DEFAULT_CACHE_BYTES = 2**30


class FeatureCache:
    """Full-resolution features per image, least recently used dropped first.

    The bound counts the bytes of the stored tensors; a tensor larger than the bound is
    not stored (its image then pays a pass per class switch). Safe across threads.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"the feature cache bound must be at least 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def get(self, key: int) -> torch.Tensor | None:
        with self._lock:
            t = self._items.get(key)
            if t is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return t

    def put(self, key: int, t: torch.Tensor) -> bool:
        """Store ``t`` under ``key``, dropping the least recently used; False if too large."""
        n = self.size(t)
        with self._lock:
            self._drop(key)
            if n > self.max_bytes:
                return False
            while self._items and self._bytes + n > self.max_bytes:
                self._drop(next(iter(self._items)))
            self._items[key] = t
            self._bytes += n
            return True

    def __contains__(self, key: int) -> bool:
        with self._lock:
            return key in self._items

    def discard(self, key: int) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: int) -> None:
        t = self._items.pop(key, None)
        if t is not None:
            self._bytes -= self.size(t)

    def info(self) -> dict:
        """``{"images", "bytes", "max_bytes", "hits", "misses"}``."""
        with self._lock:
            return {"images": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}
