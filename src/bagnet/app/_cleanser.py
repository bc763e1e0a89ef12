"""PatchCleanser's verdict in the explorer: any classifier defended by double masking.

Xiang, Mahloujifar, Mittal, *PatchCleanser: Certifiably Robust Defense against Adversarial
Patches for Any Image Classifier*, USENIX Security 2022, https://arxiv.org/abs/2108.09135.

The explorer's certificate (mask, clip) is the BagNet's own and costs no pass; PatchCleanser
works for any classifier, e.g. a torchvision ResNet-18 next to the BagNet, and costs
``n + n(n - 1) / 2`` passes for ``n`` masks (666 for the paper's 6 x 6). A
:class:`CleanserModel` is such a classifier prepared for the explorer's images: its
outputs in the explorer's class order, its own normalization of the explorer's pixels.
:func:`cleanser_verdict` classifies one image under every mask and every pair of masks
(:meth:`bagnet.robust.PatchCleanser.prediction_maps`) and says what the page shows: the
double-masking prediction and its case, the one-mask predictions (the first round), how
many of the two-mask predictions agree, and whether that certifies the prediction.

.. note::
   The reference sees the BagNet's pixels (the explorer's resize and crop, at its
   ``img_size``), normalized with its own mean and std: where both share mean and std its
   input *is* the BagNet's input. A reference trained at another size is said to be (its
   accuracy at the explorer's size may be lower), not resized differently, so that the
   sticker, the masks and the page's rectangles are the same pixels for both models.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._text import plural
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..data.transforms import Preprocessing
from ..explain._explain import original_box
from ..robust import PatchCleanser, format_share, mask_set
from ..robust._cleanser import DEFAULT_MASKS, decide

__all__ = ["CASES", "CleanserModel", "cleanser_verdict", "reference_model"]

CASES = {1: "all masks agree", 2: "a disagreeing mask recovered", 3: "majority"}
"""The three outcomes of double masking (the paper's Algorithm 1), as the page names them."""

ROLES = ("reference", "bagnet")
"""Whose verdict: the ``--cleanser-model`` reference classifier, or the explored BagNet itself."""

# Masked images per pass: the explorer's one model slot is held for one pass at a time, so a
# verdict (hundreds of passes) lets every other request in between its chunks.
_CHUNK = 16


class _Outputs(nn.Module):
    """A classifier's outputs picked and ordered as the explorer's classes (``index[k]``:
    the output of class ``k``)."""

    def __init__(self, model: nn.Module, index: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(list(index), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.index]


class _Counted(nn.Module):
    """A model whose every pass takes the explorer's model slot and is counted (progress)."""

    def __init__(self, model: nn.Module, slots: threading.Semaphore, done: Callable[[int], None]):
        super().__init__()
        self.model = model
        self._slots, self._done = slots, done

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._slots:
            out = self.model(x)
        self._done(len(x))
        return out


class CleanserModel:
    """A classifier prepared for PatchCleanser verdicts on the explorer's images.

    Attributes:
        model: the classifier, in eval mode, its outputs in the explorer's class order.
        name: its name (``model_name``, else the class name).
        role: ``"reference"`` (a second classifier) or ``"bagnet"`` (the explored model).
        preprocessing: the explorer's resize and crop with this model's mean and std.
        same_input: its input is the BagNet's input itself (same mean and std).
        classes_matched: how its classes were matched to the explorer's.
        note: what differs from the model's own setting (e.g. its training size), or ``None``.
        masks: k, masks per axis (``k x k`` masks).
        fill: what masked pixels become (:class:`~bagnet.robust.PatchCleanser`'s ``fill``).
    """

    def __init__(self, model: nn.Module, name: str, role: str, preprocessing: Preprocessing, *, same_input: bool,
                 classes_matched: str, note: str | None = None, masks: int = DEFAULT_MASKS, fill: str = "mean"):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
            raise ValueError(f"masks per axis must be a whole number of at least 1, got {masks!r}")
        self.model, self.name, self.role = model, name, role
        self.preprocessing, self.same_input = preprocessing, same_input
        self.classes_matched, self.note = classes_matched, note
        self.masks, self.fill = masks, fill

    def input(self, x: torch.Tensor, display: torch.Tensor) -> torch.Tensor:
        """This model's input for an image the explorer prepared: ``x`` (the BagNet's input)
        itself where the normalization is the same, else ``display`` normalized its way."""
        return x if self.same_input else self.preprocessing.normalize(display)

    def passes(self) -> int:
        """Masked images a verdict classifies at most (``k x k`` masks, every pair), plus the
        undefended pass."""
        n = self.masks * self.masks
        return n + n * (n - 1) // 2 + 1

    def to_dict(self) -> dict:
        """What the page's configuration says of it."""
        return {"model": self.name, "role": self.role, "masks_per_axis": self.masks, "fill": self.fill,
                "passes": self.passes(), "same_input": self.same_input, "classes_matched": self.classes_matched,
                "preprocessing": self.preprocessing.describe()
                + ("" if self.same_input else f", normalized with mean {list(self.preprocessing.mean)} "
                                                f"and std {list(self.preprocessing.std)}"),
                "note": self.note}


def _num_outputs(model: nn.Module, img_size: int, device: torch.device, name: str) -> int:
    """Outputs of a classifier, from one pass on a blank image (any head, any module)."""
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, img_size, img_size, device=device))
    except Exception as e:  # a model that cannot classify the explorer's images at all
        raise ValueError(f"the cleanser model {name} cannot classify a 3 x {img_size} x {img_size} image: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != 1:
        raise ValueError(f"the cleanser model {name} must return logits [N, classes], got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return int(out.shape[1])


def _listed(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def reference_model(model: nn.Module, *, classes: Sequence[str], explorer_name: str, img_size: int,
                    crop_pct: float | None, mean: Sequence[float], std: Sequence[float],
                    device: torch.device, masks: int = DEFAULT_MASKS) -> CleanserModel:
    """A second classifier prepared for the explorer: the same classes, matched by name
    (:func:`bagnet.data.classes.class_mapping`), or refused.

    Args:
        model: any classifier of normalized images (``pretrained_cfg`` gives its classes,
            mean, std and training size, as for every bagnet model).
        classes: the explored model's class names (its ``classes``, the ones matched).
        explorer_name: the explored model's name, for messages.
        img_size, crop_pct: the explorer's preprocessing.
        mean, std: the explored model's normalization (``same_input`` where equal).
        device: where the explorer computes.
        masks: k, masks per axis.

    Raises:
        ValueError: other classes (more, fewer or other names), or a model that cannot
            classify the explorer's images; the message is one line.
    """
    from ..data.classes import class_mapping

    name = getattr(model, "model_name", None) or type(model).__name__
    model = model.eval().to(device)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    outputs = _num_outputs(model, img_size, device, name)
    own = cfg.get("classes")
    own = [str(c) for c in own] if own is not None and len(own) == outputs else None
    k = len(classes)
    want = f"the {plural(k, 'class')} of {explorer_name} ({_listed(list(classes))})"
    if own is not None and set(classes) - set(own):
        missing = [c for c in classes if c not in own]
        raise ValueError(f"the cleanser model {name} must have {want}, matched by name: its classes "
                         f"({_listed(own)}) lack {_listed(missing)}")
    if outputs != k:
        extra = f"{outputs - k} more" if outputs > k else f"{k - outputs} fewer"
        raise ValueError(f"the cleanser model {name} must have {want}: it has {plural(outputs, 'output')}, {extra}"
                         + ("" if own is not None else " and no class names"))
    mapping = class_mapping(own, outputs, list(classes), label=f"the cleanser model {name}")
    how = mapping.how if own is not None else (
        f"in output order ({name} carries no class names: check that its outputs are {explorer_name}'s classes)")
    if not mapping.identity:
        model = _Outputs(model, mapping.index).eval()
    pre = Preprocessing.from_cfg({"mean": cfg.get("mean", IMAGENET_MEAN), "std": cfg.get("std", IMAGENET_STD),
                                  "crop_pct": crop_pct}, img_size)
    same = pre.mean == tuple(float(v) for v in mean) and pre.std == tuple(float(v) for v in std)
    trained = cfg.get("train_img_size") or cfg.get("img_size")
    note = (f"{name} was trained at {trained} px; here it sees the explorer's {img_size} px input"
            if trained and int(trained) != img_size else None)
    return CleanserModel(model, name, "reference", pre, same_input=same, classes_matched=how, note=note,
                         masks=masks)


def cleanser_verdict(cm: CleanserModel, x: torch.Tensor, *, patch: str, class_names: Sequence[str],
                     analysed_box: Sequence[int], slots: threading.Semaphore, device: torch.device,
                     progress: Callable[[int], None] = lambda n: None) -> dict:
    """PatchCleanser's verdict on one image ``x`` ``[3, H, W]`` (already this model's input).

    Classifies the image under every mask and every pair of masks (the certificate's
    ``n + n(n - 1) / 2`` passes; the double-masking prediction is among them), plus once
    whole (the undefended prediction). Every pass takes ``slots`` for itself only.

    Returns:
        A JSON-serializable record (boxes as in :data:`bagnet.explain._explain.COORDINATES`;
        masks in mask order, row by row): ``prediction`` and ``case`` (Algorithm 1),
        ``certified`` (every one-mask and two-mask prediction is ``prediction``: the
        certificate of :meth:`~bagnet.robust.PatchCleanser.certify`), ``one_mask`` (the first
        round, class indices), ``disagreeing_masks`` (one-mask predictions other than the
        prediction), ``recovered_by`` (case II: the disagreeing mask whose two-mask
        predictions all agree), ``two_mask`` (how many pairs of masks agree, and the
        ``[masks, masks]`` predictions), the mask set, ``undefended`` and a ``message``.
    """
    start = time.perf_counter()
    h, w = x.shape[-2:]
    ms = mask_set((h, w), patch, cm.masks)  # a bad size raises here, before any pass
    counted = _Counted(cm.model, slots, progress)
    defence = PatchCleanser(counted, patch, cm.masks, fill=cm.fill, chunk=_CHUNK)
    batch = x[None].to(device)
    with torch.inference_mode():
        plain = int(counted(batch)[0].argmax())
    pairs = defence.prediction_maps(batch)[0].cpu()
    label, case, recovered = decide(pairs)
    first = pairs.diagonal()
    n = len(ms)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    agree = pairs == label
    two_agree = int((agree & upper).sum())
    two_total = n * (n - 1) // 2
    one_agree = int((first == label).sum())
    certified = bool(agree.all())
    (mh, mw), (sh, sw) = ms.mask_size, ms.stride
    boxes = [[left, top, left + mw, top + mh] for top, left in ms.corners]
    p = ms.patch_size
    share = patch.strip() if patch.strip().endswith("%") else format_share(p * p / (w * h))
    sticker = f"{p}x{p} px sticker ({share} of the image)"
    name = class_names[label]
    if certified:
        message = (f"certified against any {sticker}: all {n} one-mask and {two_total} two-mask predictions are "
                   f"{name}")
    else:
        article = "an" if p in (11, 18) or str(p).startswith("8") else "a"  # "an 8x8", "an 11x11"
        message = (f"not certified against {article} {sticker}: {one_agree} of {n} one-mask and {two_agree} of {two_total} "
                   f"two-mask predictions are {name}")
    return {
        "model": cm.name,
        "role": cm.role,
        "patch": patch,
        "patch_px_resized": p,
        "resized_size": [int(w), int(h)],
        "defense": "cleanser",
        "prediction": {"index": label, "name": name},
        "undefended": {"index": plain, "name": class_names[plain]},
        "certified": certified,
        "case": case,
        "case_name": CASES[case],
        "recovered_by": recovered,
        "one_mask": first.tolist(),
        "disagreeing_masks": [i for i in range(n) if int(first[i]) != label],
        "two_mask": {"pairs": two_total, "agree": two_agree, "predictions": pairs.tolist()},
        "masks": {"per_axis": cm.masks, "rows": len(ms.rows), "cols": len(ms.cols), "count": n,
                  "size_resized": [mw, mh], "stride_resized": [sw, sh], "fill": cm.fill,
                  "boxes_resized": boxes,
                  "boxes": [original_box(b, analysed_box, [int(w), int(h)]) for b in boxes]},
        "passes": ms.certification_passes + 1,
        "message": message,
        "ms": round(1000 * (time.perf_counter() - start), 1),
    }
