"""Counts in messages read as English: 1 class, 2 classes, never '1 classes'."""

import pytest

from bagnet._text import plural


@pytest.mark.parametrize("n,word,expected", [
    (1, "class", "1 class"), (2, "class", "2 classes"), (0, "image", "0 images"), (1, "image", "1 image"),
    (3, "patch", "3 patches"), (2, "epoch", "2 epochs"), (1, "epoch", "1 epoch"), (4, "box", "4 boxes"),
    (2, "class name", "2 class names"), (5, "thread", "5 threads"),
])
def test_plural_by_hand(n, word, expected):
    assert plural(n, word) == expected
