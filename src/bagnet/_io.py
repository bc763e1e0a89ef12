"""Atomic file writes: every file bagnet writes appears whole or not at all.

Text (:func:`write_text`), ``torch.save`` objects (:func:`atomic_save`) and anything a
writer can put at a path (:func:`atomic_path`, e.g. matplotlib's ``savefig``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces it when the block succeeds.

    The file gets ordinary permissions (0644): results and reports are meant to be shared,
    and ``mkstemp`` would leave them private.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary file and a rename, so it is never half-written."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` through a temporary file in the same folder, synced, then renamed."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work is done, an output path that cannot be written.

    ``path`` is a file to write (``folder=False``) or a folder to write into (``folder=True``,
    made if missing). Refused: a file path that is an existing folder, a folder path that is an
    existing file, a path below a file, and a nearest existing folder that is not writable.

    Args:
        what: how the user gave the path, for the message (an option such as ``--json``).

    Raises:
        ValueError: the path cannot be written, said with ``what``.
    """
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"{what} {path} is a file; it must be a folder (or a path where one can be made)")
    if not folder and p.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the name of a file to write")
    ancestor = p if folder else p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path}: {ancestor} is a file, so no folder can be made below it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {ancestor}")
