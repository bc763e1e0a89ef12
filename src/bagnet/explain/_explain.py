"""``explain``: predictions, class-evidence maps and top patches of one image, in one object."""

from __future__ import annotations

import base64
import html
import io
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._text import plural
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..data.transforms import Preprocessing
from ._cost import DEFAULT_MAX_MACS, MapCostError, _check_cost, _upscale_warning
from ._figures import colour_scale, plot_evidence_panels, plot_misclassification
from ._images import ImageLike
from ._maps import EvidenceMapper, MapGeometry, Progress
from ._patches import Patch, top_patches
from ._unknown import UnknownCheck, unknown_check

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..robust import Certificate

__all__ = ["DEFAULT_MAX_MACS", "Explanation", "MapCostError", "Prediction", "explain", "model_config"]

_TOP = re.compile(r"^top(\d+)$")

# How Explanation.to_dict gives positions; also written into every JSON it makes.
COORDINATES = (
    "pixels, x to the right and y down from the top-left corner; points [x, y], sizes [width, height], "
    "boxes [x0, y0, x1, y1] with x1 and y1 excluded; keys without a suffix are in the original image "
    "(upright, after EXIF rotation), keys ending in _resized in the resized frame the model saw"
)


@dataclass(frozen=True)
class Prediction:
    """One class of the model's output for an image."""

    index: int
    name: str
    probability: float
    logit: float

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "probability": self.probability, "logit": self.logit}


@dataclass
class Explanation:
    """What :func:`explain` found for one image.

    Attributes:
        image: the image as the model saw it (resized, not normalized), ``[3, H, W]`` in [0, 1].
        predictions: the most probable classes, best first.
        classes: the explained class indices, in the order of ``evidence`` and ``patches``.
        evidence: class-evidence maps ``[len(classes), h, w]`` (CPU, float32).
        patches: per explained class, its most predictive patches, best first.
        geometry: where the map entries and patches sit in ``image``.
        probabilities: softmax over all classes ``[num_classes]``.
        logits: the model's logits ``[num_classes]``.
        class_names: a name per class.
        true_class: the image's label when given to :func:`explain`.
        model_name: the model's registered name, if known.
        unknown: whether the image is probably none of the model's classes, when the
            model carries a calibrated threshold (see :func:`unknown_check`); else ``None``.
        source: where ``image`` comes from: ``{"size": [W, H], "box": [x0, y0, x1, y1]}``,
            the original image's size and the part of it that was resized into ``image``, in
            original pixels; ``None``: ``image`` is the original.
        patch_stride: the model's own patch stride (the patches whose mean evidence is the
            logit), if known.
        warnings: sentences about how far to trust the result, e.g. that a tiny image was
            upscaled a lot; shown above the figure and written into :meth:`to_dict`.
        patch_source: where :attr:`patches` come from: ``"model"``, the model's own patches
            (those whose mean is the logit, all wholly inside the image); ``"map"``, any
            entry of :attr:`evidence`, windows that reach past the image edge included;
            ``None``: not said.
    """

    image: torch.Tensor
    predictions: list[Prediction]
    classes: list[int]
    evidence: torch.Tensor
    patches: list[list[Patch]]
    geometry: MapGeometry
    probabilities: torch.Tensor
    logits: torch.Tensor
    class_names: list[str] = field(repr=False)
    true_class: int | None = None
    model_name: str | None = None
    unknown: UnknownCheck | None = None
    source: dict | None = None
    patch_stride: int | None = None
    warnings: list[str] = field(default_factory=list)
    patch_source: str | None = None

    def prediction(self, index: int) -> Prediction:
        """Name, probability and logit of any class."""
        return Prediction(index, self.class_names[index], float(self.probabilities[index]), float(self.logits[index]))

    def evidence_for(self, index: int) -> torch.Tensor:
        """The ``[h, w]`` map of an explained class."""
        return self.evidence[self._position(index)]

    def patches_for(self, index: int) -> list[Patch]:
        return self.patches[self._position(index)]

    def _position(self, index: int) -> int:
        try:
            return self.classes.index(index)
        except ValueError:
            raise ValueError(f"class {index} was not explained; explained: {self.classes}") from None

    def to_dict(self) -> dict:
        """JSON-serializable summary: predictions, and per explained class its evidence
        range and top patches.

        Positions follow :data:`COORDINATES` (x before y everywhere): ``image_size``,
        ``patch_size`` and each patch's ``box`` and ``center`` are in the original image's
        pixels (rounded; ``analysed_box`` is the part of it the model saw), and
        ``resized_size``, ``patch_size_resized``, ``stride_resized``, ``box_resized`` and
        ``center_resized`` in the resized frame the model saw. A patch is ``padded`` when
        its window reaches past the image edge (it saw part zero padding, and its box is
        clipped); ``patches_from`` says which patches were listed (see :attr:`patch_source`).
        """
        g = self.geometry
        h, w = g.image_size
        source = self.source or {"size": [w, h], "box": [0, 0, w, h]}
        bx0, by0, bx1, by1 = source["box"]
        sx, sy = (bx1 - bx0) / w, (by1 - by0) / h

        def box(b):
            return original_box(b, source["box"], (w, h))

        def padded(p):  # a clipped box: the window reaches past the image
            return p.box[2] - p.box[0] < g.patch_size or p.box[3] - p.box[1] < g.patch_size

        def center(c):  # the original pixel under the centre of resized pixel c
            return [min(bx0 + math.floor((c[0] + 0.5) * sx), bx1 - 1), min(by0 + math.floor((c[1] + 0.5) * sy), by1 - 1)]

        explained = []
        for c, ev, patches in zip(self.classes, self.evidence, self.patches):
            explained.append({
                **self.prediction(c).to_dict(),
                "evidence": {"min": float(ev.min()), "max": float(ev.max()), "mean": float(ev.mean())},
                "patches": [{"box": box(p.box), "center": center(p.center), "score": p.score,
                             "box_resized": list(p.box), "center_resized": list(p.center), "padded": padded(p)}
                            for p in patches],
            })
        q = g.patch_size
        d = {
            "model": self.model_name,
            "coordinates": COORDINATES,
            "image_size": list(source["size"]),
            "analysed_box": [bx0, by0, bx1, by1],
            "patch_size": [round(q * sx), round(q * sy)],
            "resized_size": [w, h],
            "patch_size_resized": [q, q],
            "stride_resized": g.stride,
            "padded": g.offset > 0,
            "patches_from": self.patch_source,
            "warnings": list(self.warnings),
            "predictions": [p.to_dict() for p in self.predictions],
            "unknown": None if self.unknown is None else self.unknown.to_dict(),
            "explained": explained,
        }
        if self.true_class is not None:
            d["true_class"] = self.prediction(self.true_class).to_dict()
        return d

    def colour_scale(self, percentile: float = 99.0) -> float:
        """The colour range ``+-v`` :meth:`plot` uses by default: the ``percentile`` of
        ``|evidence|`` over all explained classes together, one scale for all of them."""
        return colour_scale(self.evidence, percentile)

    def plot(
        self, *, percentile: float = 99.0, edges: bool = True, vmax: float | None = None
    ) -> tuple[Figure, list[Axes]]:
        """The figure for this explanation; returns ``(fig, axes)``.

        With a ``true_class`` this is the paper's misclassification figure (image | true
        class's heatmap, patches in black | predicted class's heatmap, patches in red);
        otherwise the image followed by one heatmap per explained class, patches outlined.
        All maps share one colour scale, shown by a colour bar (the figure's last axes) and
        stated in the caption under them. An image the model's calibrated check flags
        (:attr:`unknown`) is marked above the panels: "probably none of the N classes this
        model knows"; so are the :attr:`warnings`.

        Args:
            percentile: the scale is this percentile of ``|evidence|`` over all the maps.
            edges: draw the image's edges over the maps.
            vmax: a fixed scale ``+-vmax`` instead, e.g. the same for several images so
                their colours compare.
        """
        warning = self._warning_lines(len(self.classes))
        if self.true_class is not None:
            top = self.predictions[0].index
            t, p = self.prediction(self.true_class), self.prediction(top)
            fig, axes = plot_misclassification(
                self.image,
                self.evidence_for(t.index),
                self.evidence_for(p.index),
                true_patches=self.patches_for(t.index),
                predicted_patches=self.patches_for(p.index),
                true_name=t.name,
                predicted_name=p.name,
                true_probability=t.probability,
                predicted_probability=p.probability,
                geometry=self.geometry,
                percentile=percentile,
                vmax=vmax,
                model_stride=self.patch_stride,
            )
            if warning:
                fig.suptitle(f"\u26a0 {warning}", fontsize=10, color="#a01010", fontweight="bold")
            return fig, axes
        top = self.predictions[0]
        titles = []
        for c in self.classes:
            pred = self.prediction(c)
            titles.append(f"{pred.name}\np = {pred.probability:.3f}, logit {pred.logit:.2f}")
        return plot_evidence_panels(
            self.image, self.evidence, titles=titles, patches=self.patches, geometry=self.geometry, vmax=vmax,
            percentile=percentile, edges=edges, image_title=f"top-1: {top.name}\np = {top.probability:.3f}",
            model_stride=self.patch_stride,
            warning=warning,
        )

    def _warning_lines(self, panels: int) -> str | None:
        """The "none of these classes" flag and the :attr:`warnings`, one line each (wrapped
        to about the width of a figure of ``panels`` maps), for the line above the figure."""
        lines = [self.unknown.message] if self.unknown is not None and self.unknown.flag else []
        width = max(50, int(10 * (2.6 * (1 + panels) + 1)))  # characters of a bold 10 pt title
        lines += [textwrap.fill(w, width) for w in self.warnings]
        return "\n\u26a0 ".join(lines) or None

    # -- Jupyter ------------------------------------------------------------------------

    def _repr_png_(self) -> bytes:
        """The figure of :meth:`plot` as PNG, shown inline by Jupyter."""
        fig, _ = self.plot()
        return figure_png(fig)

    def _repr_html_(self) -> str:
        """Predictions, the "none of these classes" flag, the top patch of each explained
        class and the figure, shown inline by Jupyter."""
        esc = html.escape
        g = self.geometry
        head = f"{esc(self.model_name or 'model')}: {g.image_size[0]}x{g.image_size[1]} px, " \
               f"{g.patch_size}x{g.patch_size} patches"
        rows = "".join(
            f"<tr><td>{p.index}</td><td>{esc(p.name)}</td><td>{p.probability:.3f}</td><td>{p.logit:.3f}</td></tr>"
            for p in self.predictions
        )
        parts = [f"<div class='bagnet-explanation'><p><b>{head}</b></p>"]
        if self.unknown is not None and self.unknown.flag:
            parts.append(f"<p style='color:#b00000'><b>{esc(self.unknown.message)}</b></p>")
        for warning in self.warnings:
            parts.append(f"<p style='color:#b00000'><b>{esc(warning)}</b></p>")
        if self.true_class is not None:
            t = self.prediction(self.true_class)
            parts.append(f"<p>true class: {esc(t.name)} (p = {t.probability:.3f})</p>")
        parts.append("<table><tr><th>class</th><th>name</th><th>probability</th><th>logit</th></tr>"
                     f"{rows}</table>")
        tops = []
        for c, patches in zip(self.classes, self.patches):
            if patches:
                p = patches[0]
                tops.append(f"<li>{esc(self.class_names[c])}: box {list(p.box)} (x0, y0, x1, y1), "
                            f"evidence {p.score:.3f}</li>")
        if tops:
            parts.append(f"<p>most predictive patch per class:</p><ul>{''.join(tops)}</ul>")
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        parts.append(f"<img src='data:image/png;base64,{png}' alt='class-evidence maps'/></div>")
        return "".join(parts)


def original_box(box: Sequence[float], analysed_box: Sequence[int], resized_size: Sequence[int]) -> list[int]:
    """A box ``[x0, y0, x1, y1]`` of the resized frame the model saw (``resized_size`` is
    ``[width, height]``) in the original image's pixels, rounded; ``analysed_box`` is the
    part of the original the model saw."""
    bx0, by0, bx1, by1 = analysed_box
    sx, sy = (bx1 - bx0) / resized_size[0], (by1 - by0) / resized_size[1]
    return [round(bx0 + box[0] * sx), round(by0 + box[1] * sy), round(bx0 + box[2] * sx), round(by0 + box[3] * sy)]


def certificate_record(cert: Certificate, i: int, *, patch: str, class_names: Sequence[str], receptive_field: int,
                       patch_stride: int, resized_size: Sequence[int], analysed_box: Sequence[int]) -> dict:
    """What ``bagnet explain --certify-patch`` and the explorer report of image ``i`` of a
    :class:`bagnet.robust.Certificate` (JSON-serializable, boxes as in :data:`COORDINATES`):
    the defended prediction, whether it is certified, the margin, a sentence saying so,
    for ``"clip"`` the squashing and why (``squashing``, ``squashing_source``) and for
    ``"mask"`` the window the masking removed (``removed_box``, ``removed_box_resized``)."""
    from ..robust import format_share

    w, h = resized_size
    p, pred, ok = cert.patch_size, int(cert.prediction[i]), bool(cert.certified[i])
    # A size asked as a share of the image is said as such; one asked in pixels gets its share.
    share = patch.strip() if patch.strip().endswith("%") else format_share(p * p / (w * h))
    sticker = f"{p}x{p} px sticker ({share} of the image)"
    article = "an" if p in (11, 18) or str(p).startswith("8") else "a"  # "an 8x8", "an 11x11"
    out = {"patch": patch, "patch_px_resized": p, "defense": cert.defense,
           "prediction": {"index": pred, "name": class_names[pred]}, "certified": ok,
           "margin": float(cert.margin[i]), "window": list(cert.window),
           "message": f"certified against any {sticker}" if ok else f"not certified: {article} {sticker} could change "
                      "this prediction"}
    if cert.squashing is not None:  # clip: which squashing, and why
        out["squashing"], out["squashing_source"] = cert.squashing, cert.squashing_source
    resized = cert.removed_box(i, receptive_field, patch_stride, (h, w))
    if resized is not None:
        out["removed_box_resized"] = resized
        out["removed_box"] = original_box(resized, analysed_box, resized_size)
    return out


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = 100, *, png_level: int | None = None) -> bytes:
    """A matplotlib figure as PNG or SVG bytes; ``png_level``: zlib level of a PNG (1 is
    several times faster than the default, and a photo compresses little more above it)."""
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"compress_level": png_level}} if fmt == "png" and png_level is not None else {}
    fig.savefig(buf, format=fmt, dpi=dpi, **extra)
    return buf.getvalue()


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    return figure_bytes(fig, "png", dpi)


def model_config(model: nn.Module) -> dict:
    """The model's ``pretrained_cfg`` with defaults: ImageNet mean/std, no class names."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.setdefault("mean", list(IMAGENET_MEAN))
    cfg.setdefault("std", list(IMAGENET_STD))
    return cfg


def class_names(model: nn.Module) -> list[str]:
    """A display name per class: ``class_names`` of the model file (e.g. 'tench' where the
    data set's folders, ``classes``, are WordNet ids), else ``classes``, else 'class i'."""
    cfg, n = model_config(model), model.num_classes
    for key in ("class_names", "classes"):
        names = cfg.get(key)
        if names is not None and len(names) == n:
            return [str(c) for c in names]
    return [f"class {i}" for i in range(n)]


def explain(
    model: nn.Module,
    image: ImageLike,
    *,
    classes: str | int | Sequence[int] = "top3",
    stride: int | str = 1,
    k: int = 5,
    non_overlapping: bool = True,
    true_class: int | None = None,
    top: int = 5,
    pad_value: float = 0.0,
    img_size: int | None = None,
    mapper: EvidenceMapper | None = None,
    patch_source: str = "model",
    max_macs: int | None = DEFAULT_MAX_MACS,
    progress: Progress | None = None,
) -> Explanation:
    """Predict, compute class-evidence maps and find the most predictive patches of one image.

    The image is resized so that its short side is the model's ``pretrained_cfg["img_size"]``
    (if it has one; ``img_size`` overrides; otherwise it keeps its size), not cropped, and
    normalized with the model's mean and std. An image whose short side is less than a
    quarter of that size, or smaller than one patch, gets a warning in
    :attr:`Explanation.warnings`: the model then sees mostly interpolated pixels.

    What it costs is known before anything is computed (:meth:`EvidenceMapper.macs`): the
    model's pass for the logits plus the maps, whose full-resolution form (``stride=1``)
    runs every layer at every pixel, so it grows with the pixels after resizing times the
    model's work per patch (plus the classifier per class). Above ``max_macs`` the image is
    refused with a :class:`MapCostError` that says which options make it cheaper.

    Args:
        model: a :class:`~bagnet.models.BagNet` (from :func:`bagnet.create_model`, whose
            ``pretrained_cfg`` gives class names and normalization). Not modified; inference
            uses the BatchNorm running statistics even if it is in training mode.
        image: file path, PIL image, numpy ``[H, W, C]`` array or torch ``[C, H, W]`` tensor
            (uint8, or floats in [0, 1]).
        classes: ``"topN"`` for the N most probable classes, or class indices.
        stride: evidence map stride, 1 (full resolution) or ``"native"`` (see :func:`evidence_map`).
        k: top patches per explained class.
        non_overlapping: choose patches that do not overlap.
        true_class: the image's label; it is explained too, as is the top prediction, and
            :meth:`Explanation.plot` then draws the misclassification figure.
        top: how many predictions to list.
        pad_value: padding of the normalized image.
        img_size: short side to resize to, instead of the model's.
        mapper: a prepared :class:`EvidenceMapper` of this model (saves folding the
            weights again when explaining many images); its stride and padding are used
            instead of ``stride`` and ``pad_value``.
        patch_source: which patches can be top patches: ``"model"`` (default), the model's
            own patches, whose mean evidence is the logit (every ``patch_stride`` pixels,
            wholly inside the image), whatever the map's stride; ``"map"``, every entry of
            the evidence map, including the windows near the border that reach past the
            image and see part zero padding (``"padded"`` in :meth:`Explanation.to_dict`).
        max_macs: refuse images that would cost more multiply-adds than this (default
            :data:`DEFAULT_MAX_MACS`, 4e12); ``None`` for no limit.
        progress: called as ``progress(done, total)`` in multiply-adds before the first
            pass through the model and after every pass (tile), e.g. for a progress bar.

    Returns:
        An :class:`Explanation`.

    Raises:
        MapCostError: the image would cost more than ``max_macs``.
        ValueError: bad classes, image or options.
    """
    num_classes = model.num_classes
    if patch_source not in ("model", "map"):
        raise ValueError(f"patch_source must be 'model' or 'map', got {patch_source!r}")
    requested = _requested_classes(classes, num_classes)
    mapper = mapper or EvidenceMapper(model, stride=stride, pad_value=pad_value)
    cfg = model_config(model)
    prepared = Preprocessing.from_cfg(cfg, img_size).prepare(image)
    x, shown = prepared.input, prepared.display
    bx0, by0, bx1, by1 = prepared.box  # the part of the original the model sees
    height, width = by1 - by0, bx1 - bx0
    h, w = x.shape[-2:]
    q = model.receptive_field
    if min(h, w) < q:
        raise ValueError(f"image is {h}x{w} pixels after resizing, smaller than the receptive field {q}x{q}")
    # Before any work: what the logits and the maps of (at most) this many classes cost.
    most = min(num_classes, (requested if isinstance(requested, int) else len(requested))
               + (2 if true_class is not None else 0))
    logits_cost = mapper.logits_macs((h, w))
    if max_macs is not None:
        full_w, full_h = prepared.size

        def shape_at(short: int) -> tuple[int, int]:  # the input's (H, W) at another img_size
            return Preprocessing.from_cfg(cfg, short).output_shape(full_h, full_w)

        what = f"this image, {full_w}x{full_h} px (width x height)"
        if (width, height) != (full_w, full_h):
            what += f", its central {width}x{height} px"
        _check_cost(mapper, what, (h, w), most, int(max_macs), logits_cost, shape_at)
    warnings = [w for w in [_upscale_warning((height, width), (h, w), q)] if w]

    # The model's own patch logits (unpadded, at its patch stride): their mean is the logits,
    # and they are the patches listed by default. The folded copy gives inference-mode
    # values without switching the user's model to eval().
    map_estimate = 0 if progress is None else mapper.macs((h, w), most)
    stage = None if progress is None else (lambda d, t: progress(d, t + map_estimate))
    own = mapper.patch_logits(x.to(mapper.device), progress=stage)
    logits = own.mean(dim=(-2, -1)).float().cpu()
    probs = torch.softmax(logits, 0)
    order = torch.argsort(probs, descending=True).tolist()
    names = class_names(model)

    chosen = order[:requested] if isinstance(requested, int) else list(requested)
    if true_class is not None:
        chosen = [int(true_class), order[0], *chosen]
    chosen = list(dict.fromkeys(chosen))  # unique, first occurrence wins
    for c in chosen:
        if not 0 <= c < num_classes:
            raise ValueError(f"class index {c} is out of range for a model with {plural(num_classes, 'class')}")

    stage = None if progress is None else (lambda d, t: progress(logits_cost + d, logits_cost + t))
    evidence = mapper(x.to(mapper.device), chosen, progress=stage).float().cpu()
    geometry = mapper.geometry((h, w))
    if patch_source == "model":
        own_chosen = own.index_select(0, torch.as_tensor(chosen, device=own.device)).float().cpu()
        own_geometry = MapGeometry(q, int(model.patch_stride), 0, (h, w))
        patches = top_patches(own_chosen, own_geometry, k=k, classes=chosen, non_overlapping=non_overlapping)
    else:
        patches = top_patches(evidence, geometry, k=k, classes=chosen, non_overlapping=non_overlapping)
    return Explanation(
        image=shown,
        predictions=[Prediction(i, names[i], float(probs[i]), float(logits[i])) for i in order[: max(1, top)]],
        classes=chosen,
        evidence=evidence,
        patches=patches,
        geometry=geometry,
        probabilities=probs,
        logits=logits,
        class_names=names,
        true_class=None if true_class is None else int(true_class),
        model_name=getattr(model, "model_name", None),
        unknown=unknown_check(model, logits),
        source={"size": list(prepared.size), "box": list(prepared.box)},
        patch_stride=getattr(model, "patch_stride", None),
        warnings=warnings,
        patch_source=patch_source,
    )


def _requested_classes(classes: str | int | Sequence[int], num_classes: int) -> int | list[int]:
    """``N`` for ``"topN"`` (at most ``num_classes``), else the class indices as ints."""
    if isinstance(classes, str):
        m = _TOP.match(classes)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"classes must be 'topN' (e.g. 'top3') or class indices, got {classes!r}")
        return min(int(m.group(1)), num_classes)
    out = [classes] if isinstance(classes, int) else [int(c) for c in classes]
    for c in out:
        if not 0 <= c < num_classes:
            raise ValueError(f"class index {c} is out of range for a model with {plural(num_classes, 'class')}")
    return out
