"""The one mapping from a data folder's classes to a model's outputs, and how it is scored.

Every command that reads a labelled folder (``eval``, ``certify``, ``attack``, ``demo``,
``analyze``, ``calibrate``) calls :func:`class_mapping`, so a folder class means the same
model output on every path. The rules, in order:

1. ``class_map`` given: ``"imagenet"`` reads the data set's ``classes.tsv``
   (``wnid<TAB>imagenet_index[<TAB>name]``, next to the folder or one level up), a path
   reads that file.
2. The model knows its class names and every folder class is one of them: matched by name.
3. The model has the 1000 ImageNet-1k outputs and a ``classes.tsv`` lies with the data
   (the Imagenette layout): matched through it, and the mapping says so.
4. The model has no class names and one output per folder class: folder order, flagged.

Anything else is an error that says what to pass. Scoring follows one convention,
:func:`scoring_note`: a prediction is chosen among **all** the model's outputs (predicting
one of its other classes is wrong), unless the caller restricts it to the folder's classes
on purpose (``--restrict-to-folder-classes``, the ImageNet-subset evaluation of papers),
and every report prints which.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._text import plural

__all__ = ["ClassMapping", "class_mapping", "find_class_tsv", "scoring_note"]


@dataclass(frozen=True)
class ClassMapping:
    """Which model output scores each folder class.

    Attributes:
        index: ``index[k]`` is the model output of folder class ``k``.
        num_outputs: how many outputs the model has.
        how: one line saying how the classes were matched (for reports).
        source: the ``classes.tsv`` used, if any.
    """

    index: tuple[int, ...]
    num_outputs: int
    how: str
    source: str | None = None

    @property
    def identity(self) -> bool:
        """Folder class k is output k, and the model has no other outputs."""
        return self.num_outputs == len(self.index) and self.index == tuple(range(len(self.index)))

    def as_list(self) -> list[int] | None:
        """``None`` for the identity (output k is class k), else the list of outputs."""
        return None if self.identity else list(self.index)


def find_class_tsv(root: str | os.PathLike) -> Path | None:
    """The ``classes.tsv`` of a data folder: in it or one level up (the Imagenette layout)."""
    root = Path(root)
    for d in (root, root.parent):
        if (d / "classes.tsv").is_file():
            return d / "classes.tsv"
    return None


def _from_tsv(tsv: Path, classes: list[str], num_outputs: int) -> tuple[int, ...]:
    from .folder import read_class_index

    mapping = read_class_index(tsv)
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise ValueError(f"{tsv} has no entry for class folder(s) {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    index = [mapping[c] for c in classes]
    bad = [i for i in index if not 0 <= i < num_outputs]
    if bad:
        raise ValueError(f"{tsv} maps to output {bad[0]}, but the model has {plural(num_outputs, 'output')}")
    twice = sorted({c for c, i in zip(classes, index) if index.count(i) > 1})
    if twice:
        raise ValueError(f"{tsv} maps class folders {', '.join(twice[:5])} to the same output")
    return tuple(index)


def class_mapping(
    model_classes: Sequence[str] | None,
    num_outputs: int,
    folder_classes: Sequence[str],
    *,
    class_map: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    label: str = "the model",
) -> ClassMapping:
    """The model output of every folder class, by the rules of this module.

    Args:
        model_classes: the model's class names in output order (``pretrained_cfg["classes"]``),
            or ``None`` when it has none.
        num_outputs: the model's number of outputs.
        folder_classes: the folder's class names (sub-folder names), in its order.
        class_map: ``"imagenet"`` (the data set's ``classes.tsv``) or a ``.tsv`` path.
        data_root: the folder the classes come from (where ``classes.tsv`` is looked for).
        label: how to name the model in errors.

    Raises:
        ValueError: the classes cannot be matched; the message says what to pass.
        FileNotFoundError: ``class_map="imagenet"`` without a ``classes.tsv`` by the data.
    """
    classes = list(folder_classes)
    if class_map is not None:
        if str(class_map) == "imagenet":
            tsv = find_class_tsv(data_root) if data_root is not None else None
            if tsv is None:
                where = f" next to {data_root} or one level up" if data_root is not None else ""
                raise FileNotFoundError(f"--class-map imagenet needs a classes.tsv{where} "
                                        "(wnid<TAB>imagenet_index); pass --class-map FILE.tsv")
        else:
            tsv = Path(class_map)
            if not tsv.is_file():
                raise FileNotFoundError(f"class map {tsv} does not exist")
        return ClassMapping(_from_tsv(tsv, classes, num_outputs), num_outputs, f"through {tsv}", str(tsv))
    if model_classes is not None:
        own = list(model_classes)
        if set(classes) <= set(own):
            return ClassMapping(tuple(own.index(c) for c in classes), num_outputs, "by class name")
        tsv = find_class_tsv(data_root) if data_root is not None else None
        if tsv is not None and num_outputs == 1000:
            return ClassMapping(_from_tsv(tsv, classes, num_outputs), num_outputs,
                                f"through {tsv} (folder wnid -> ImageNet-1k output)", str(tsv))
        missing = [c for c in classes if c not in own]
        hint = " (an ImageNet model? pass --class-map imagenet or FILE.tsv)" if num_outputs == 1000 else ""
        raise ValueError(f"{label}'s classes ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''}) do not "
                         f"include the folder's {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}{hint}")
    if num_outputs == len(classes):
        return ClassMapping(tuple(range(num_outputs)), num_outputs,
                            "in folder order (the model carries no class names: check that they match)")
    raise ValueError(f"{label} has {plural(num_outputs, 'output')} and no class names, the folder has "
                     f"{plural(len(classes), 'class')}; pass --class-map FILE.tsv (folder<TAB>output index)")


def scoring_note(num_outputs: int, num_classes: int, restricted: bool) -> str:
    """One line that says among which outputs predictions are chosen."""
    if num_outputs == num_classes:
        return f"scored among the model's {plural(num_outputs, 'output')}, one per folder class"
    if restricted:
        return (f"RESTRICTED: predictions chosen among the folder's {plural(num_classes, 'class')} only, "
                f"ignoring the model's {num_outputs - num_classes} other outputs (--restrict-to-folder-classes)")
    return (f"scored among all {plural(num_outputs, 'output')}: predicting any of the {num_outputs - num_classes} "
            "classes not in the folder counts as wrong (--restrict-to-folder-classes to ignore them)")
