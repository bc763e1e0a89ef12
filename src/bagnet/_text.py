"""Counts in messages: "1 class", "2 classes", never "1 classes"."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1 (``many`` for irregular words).

    >>> plural(1, "class"), plural(3, "image"), plural(0, "patch"), plural(2, "epoch")
    ('1 class', '3 images', '0 patches', '2 epochs')
    """
    if n == 1:
        return f"{n} {word}"
    if many is None:
        many = word + ("es" if word.endswith(("s", "x", "sh", "tch")) else "s")
    return f"{n} {many}"
