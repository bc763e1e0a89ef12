"""The images a run held out with ``--val-split``, recorded so that evaluation can find them.

A run trained with ``--val-split`` learns from most images of its folder and validates on
the rest. Its model file records which (``meta["val_split"]``): the fraction, the seed, the
folder (resolved), a digest of every image path in it and the held-out images' paths
relative to it. ``bagnet eval`` on that folder then scores the held-out images only, or,
asked for all of them, says how many it trained on (:func:`eval_selection`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._text import plural

__all__ = ["SUBSETS", "EvalSelection", "eval_selection", "record_val_split"]

# ``bagnet eval --subset``: auto scores the held-out images when the model records a split of
# the folder, else all of them.
SUBSETS = ("auto", "held-out", "all")


def _relative(samples: Sequence[tuple[str, int]], root: str | os.PathLike) -> list[str]:
    return [Path(os.path.relpath(path, root)).as_posix() for path, _ in samples]


def _digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()


def record_val_split(root: str | os.PathLike, samples: Sequence[tuple[str, int]], held_out: Sequence[int],
                     fraction: float, seed: int) -> dict[str, Any]:
    """What a model file records of a ``--val-split``: plain JSON data.

    Args:
        root: the folder that was split (its class folders hold ``samples``).
        samples: ``(path, target)`` of every image, as :class:`~bagnet.data.folder.ImageFolder` lists them.
        held_out: indices into ``samples`` of the images held out for validation.
        fraction: ``--val-split``.
        seed: ``--seed``, which seeded the split.
    """
    files = _relative(samples, root)
    held = sorted(files[i] for i in held_out)
    return {
        "fraction": fraction,
        "seed": seed,
        "folder": str(Path(root).resolve()),
        "images": len(files),
        "images_sha256": _digest(files),
        "held_out": held,
    }


def _record(meta: dict | None) -> dict | None:
    record = (meta or {}).get("val_split")
    return record if isinstance(record, dict) and isinstance(record.get("held_out"), list) else None


def _same_folder(record: dict, folder: Path, files: list[str]) -> bool:
    """The folder the run split: the same path, or (moved or copied) the very same image paths."""
    return Path(folder).resolve() == Path(str(record.get("folder"))) or _digest(files) == record.get("images_sha256")


@dataclass
class EvalSelection:
    """The images ``bagnet eval`` scores of a folder, and what to tell the user about them.

    Attributes:
        indices: indices into the dataset's samples to score; ``None``: all of them.
        lines: what to print before the results (empty when the model records no split of
            the folder).
        warning: the lines warn that trained-on images are scored.
        info: the same in JSON (``None`` when the model records no split of the folder).
    """

    indices: list[int] | None = None
    lines: list[str] = field(default_factory=list)
    warning: bool = False
    info: dict | None = None


def eval_selection(meta: dict | None, folder: str | os.PathLike, samples: Sequence[tuple[str, int]],
                   subset: str = "auto") -> EvalSelection:
    """Which images of ``folder`` to score, given the model's ``--val-split`` record.

    Args:
        meta: the model's metadata (``model.pretrained_cfg``).
        folder: the folder being evaluated.
        samples: its ``(path, target)`` pairs, in dataset order.
        subset: ``"auto"``: the held-out images when the model was trained on a split of
            ``folder``, else all; ``"held-out"``: those, and an error when the model records
            no split of ``folder``; ``"all"``: every image, with a warning naming how many
            were trained on.

    Raises:
        ValueError: an unknown ``subset``; ``"held-out"`` without a record of ``folder``;
            no held-out image left in ``folder``.
    """
    if subset not in SUBSETS:
        raise ValueError(f"--subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    record = _record(meta)
    files = _relative(samples, folder)
    if record is None or not _same_folder(record, Path(folder), files):
        if subset == "held-out":
            where = (f"a --val-split of {record['folder']}" if record is not None
                     else "no --val-split (it was not trained with one, or was saved by an older bagnet)")
            raise ValueError(f"--subset held-out: the model records {where}, not of {folder}; "
                             "drop --subset to score every image of the folder")
        return EvalSelection()
    held = set(record["held_out"])
    indices = [i for i, f in enumerate(files) if f in held]
    changed = _digest(files) != record.get("images_sha256")
    how = f"--val-split {record['fraction']:g}, --seed {record['seed']}"
    info = {"subset": "all" if subset == "all" else "held-out", "images_in_folder": len(files),
            "held_out": len(indices), "trained_on": len(files) - len(indices), "fraction": record["fraction"],
            "seed": record["seed"], "folder_changed_since_training": changed}
    lines = []
    if changed:
        lines.append(f"note: {folder} holds {plural(len(files), 'image')}, {record['images']} when the model was "
                     f"trained on it; images added since count as trained on below, "
                     f"{len(held) - len(indices)} of the held-out ones are gone")
    if subset == "all":
        lines.insert(0, f"WARNING: {len(files) - len(indices)} of these {plural(len(files), 'image')} were trained "
                        f"on (the model was trained on {folder} with {how}); their accuracy is not a test accuracy. "
                        f"--subset held-out scores only the {len(indices)} held out")
        return EvalSelection(None, lines, True, info)
    if not indices:
        raise ValueError(f"none of the {len(held)} images the model held out of {folder} ({how}) is there any more; "
                         "pass --subset all to score the folder anyway")
    lines.insert(0, f"scoring the {plural(len(indices), 'image')} held out of {folder} when the model was trained "
                    f"({how}), not the other {len(files) - len(indices)} it was trained on; --subset all scores all "
                    f"{len(files)}")
    return EvalSelection(indices, lines, False, info)
