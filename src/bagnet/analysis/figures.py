"""Experiment 7: the explanation figures of :mod:`bagnet.explain`, over a data set.

``class-patches``: for each BagNet and class, the patches with the most evidence for the
class among images of the class and among other images (the paper's "book jacket"
figure), from :func:`bagnet.explain.class_patches`.

``misclassified``: for each BagNet, the misclassified images it was most confident
about, each as the paper's figure (image | heatmap of the true class | heatmap of the
predicted class, most predictive patches outlined), from :func:`bagnet.explain.explain`.

The figures are PNG files in a sub-folder of the output folder; the JSON lists them
(paths relative to the output folder) with what they show.

.. note::
    :func:`bagnet.explain.class_patches` reads every image of the folder once per class
    (it takes no image list), so ``max_images`` does not apply to ``class-patches``;
    limit the work with ``classes`` instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._text import plural
from ._classifier import Classifier
from ._data import EvalData
from ._output import progress, save_figure, slug, write_json
from ._predictions import LogitCache, predictions

__all__ = ["class_patches", "misclassified", "write_class_patches", "write_misclassified"]


def _require_bagnets(bagnets: Sequence[Classifier], what: str) -> None:
    if not bagnets:
        raise ValueError(f"{what} needs at least one BagNet")
    for b in bagnets:
        if not b.is_bagnet:
            raise ValueError(f"{b.label} is not a BagNet, so it has no heatmaps")


def class_patches(
    bagnets: Sequence[Classifier],
    data: EvalData,
    *,
    out_dir: str | os.PathLike,
    classes: Sequence[str] | None = None,
    top: int = 8,
    stride: int | str = "native",
    batch_size: int = 32,
    subdir: str = "class_patches",
    dtype: torch.dtype | str | None = None,
) -> dict:
    """Class-typical patches of every BagNet for ``classes`` (default: all of the data's).

    Returns:
        ``{"figures": [{label, class, caption, png}], "results": {label: [ClassPatches.to_dict()]}}``
        with PNG paths relative to ``out_dir``.
    """
    from ..explain import EvidenceMapper, plot_class_patches
    from ..explain import class_patches as find_class_patches

    _require_bagnets(bagnets, "class-patches")
    names = data.classes if classes is None else list(classes)
    unknown = [c for c in names if c not in data.classes]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown[:5]}; the data has {', '.join(data.classes[:10])}, ...")
    out = Path(out_dir)
    figures, results = [], {}
    for b in bagnets:
        cols = list(range(len(data.classes))) if b.columns is None else b.columns.tolist()
        labels = dict(zip(data.classes, cols))
        mapper = EvidenceMapper(b.model, stride=stride, dtype=dtype)
        results[b.label] = []
        for name in progress(names, f"class patches of {b.label}", total=len(names)):
            cp = find_class_patches(b.model, data.root, labels[name], k=top, stride=stride, labels=labels,
                                    img_size=data.img_size, batch_size=batch_size, mapper=mapper)
            fig, _ = plot_class_patches(cp)
            rel = Path(subdir) / f"{slug(b.label)}-{slug(name)}.png"
            save_figure(fig, out / rel)
            results[b.label].append({**cp.to_dict(), "class": name})
            figures.append({"label": b.label, "class": name, "png": rel.as_posix(),
                            "caption": f"{b.label}: patches with the most evidence for '{name}' "
                                       f"({plural(cp.num_images, 'image')})"})
    return {"figures": figures, "results": results, "stride": stride, "top": top, "dtype": _name(dtype)}


def misclassified(
    bagnets: Sequence[Classifier],
    data: EvalData,
    *,
    out_dir: str | os.PathLike,
    count: int = 8,
    stride: int | str = 1,
    patches: int = 5,
    max_images: int | None = None,
    batch_size: int = 32,
    cache: LogitCache | None = None,
    subdir: str = "misclassified",
    dtype: torch.dtype | str | None = None,
) -> dict:
    """The ``count`` most confidently misclassified images of every BagNet, as figures.

    Mistakes are judged on the data set's classes (as in ``accuracy``), confidence is the
    predicted class's probability. Each figure shows the image the model saw (resized and
    centre-cropped) with the evidence maps of the true and the predicted class.

    Returns:
        ``{"figures": [{label, index, file, true, predicted, probability, caption, png}]}``
        with PNG paths relative to ``out_dir``.
    """
    from ..explain import EvidenceMapper, explain

    _require_bagnets(bagnets, "misclassified")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    out = Path(out_dir)
    figures = []
    for b in bagnets:
        p = predictions(b, data, max_images, batch_size=batch_size, cache=cache)
        pred = p.logits.argmax(1)
        wrong = np.flatnonzero(pred != p.targets)
        conf = p.probs()[wrong, pred[wrong]]
        chosen = wrong[np.argsort(-conf, kind="stable")[:count]]
        mapper = EvidenceMapper(b.model, stride=stride, dtype=dtype)
        for row in progress(chosen, f"misclassified by {b.label}", total=len(chosen)):
            index = int(p.indices[row])
            pixels, target = data.dataset[index]
            true_col = int(b.column(torch.tensor([target]))[0])
            ex = explain(b.model, pixels, classes=[], true_class=true_col, k=patches, img_size=data.img_size,
                         mapper=mapper)
            fig, _ = ex.plot()
            rel = Path(subdir) / f"{slug(b.label)}-{index}.png"
            save_figure(fig, out / rel)
            file = os.path.relpath(data.dataset.samples[index][0], data.root)
            t, pr = data.classes[int(p.targets[row])], data.classes[int(pred[row])]
            prob = float(p.probs()[row, pred[row]])
            figures.append({"label": b.label, "index": index, "file": file, "true": t, "predicted": pr,
                            "probability": prob, "png": rel.as_posix(),
                            "caption": f"{b.label}: {file}, a '{t}' taken for '{pr}' (p = {prob:.2f})"})
    return {"figures": figures, "stride": stride, "dtype": _name(dtype)}


def _name(dtype: torch.dtype | str | None) -> str:
    """The heatmaps' arithmetic as the JSON records it: bfloat16 maps are not float32 ones."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def write_class_patches(result: dict, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``class_patches.json`` (the PNGs were written while the experiment ran)."""
    return {"json": write_json({"experiment": "class-patches", "meta": meta or {}, **result},
                               Path(out_dir) / "class_patches.json")}


def write_misclassified(result: dict, out_dir: str | os.PathLike, meta: dict | None = None) -> dict[str, Path]:
    """``misclassified.json`` (the PNGs were written while the experiment ran)."""
    return {"json": write_json({"experiment": "misclassified", "meta": meta or {}, **result},
                               Path(out_dir) / "misclassified.json")}
