"""``bagnet demo``'s report: one self-contained HTML file (every image inlined).

For each image it shows the predictions, the evidence maps of the top classes with the
most predictive patches outlined, and those patches cut out. With labels it adds the
accuracy, per-class accuracy and every misclassified image beside the evidence for the
class it should have been.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import __version__
from .._io import write_text
from .._text import plural
from ..data.images import ImageError, load_image
from ..explain import plot_misclassification, plot_patches
from ..explain._explain import figure_png
from ..explain._unknown import UnknownCheck, unknown_check
from .explorer import ExploredImage, Explorer

__all__ = ["DemoItem", "Report", "build_report", "known_classes", "unknown_note", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class DemoItem:
    """One image for the report.

    Args:
        name: shown as its title (e.g. a file name relative to the data folder).
        image: an RGB image (any size; the explorer resizes it), or the path of one, read
            when needed so that a long list of files does not sit in memory.
        label: the model output of its true class, if known.
        subject: a sentence on what the image shows and whether the model's classes can
            name it (the sample photos: :func:`~bagnet.app.samples.sample_note`).
        outside: the image shows none of the model's classes (known independently of the
            model, as for the sample photos); its card then warns that any answer is wrong.
    """

    name: str
    image: Image.Image | str | os.PathLike
    label: int | None = None
    subject: str | None = None
    outside: bool = False

    def load(self) -> Image.Image:
        """The image; raises :class:`~bagnet.data.images.ImageError` for an unreadable file."""
        return self.image if isinstance(self.image, Image.Image) else load_image(self.image)


@dataclass
class Report:
    """The HTML text and the numbers it shows."""

    html: str
    num_images: int
    accuracy: dict[str, float] = field(default_factory=dict)  # top1/top5 in %, labelled images only
    scoring: str = ""  # among which outputs the labelled images' predictions were chosen
    misclassified: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    # Per image: name, top-1 class name and probability, the unknown check (None when the
    # model carries no calibrated threshold) and what the image shows, if known.
    predictions: list[dict] = field(default_factory=list)


def known_classes(names: Sequence[str], who: str = "This model", listed: int = 12) -> str:
    """One line saying what a model knows: its class count and names (the first ``listed``
    of a long list, then how many more)."""
    shown = list(names) if len(names) <= listed + 2 else [*names[:listed], f"... and {len(names) - listed} more"]
    return f"{who} knows {plural(len(names), 'class')}: {', '.join(shown)}"


def unknown_note(model: torch.nn.Module) -> str:
    """How the model's predictions on photos of other things are treated: the calibrated
    "probably none of these classes" flag and how it was set, or that there is none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    setting = cfg.get("unknown")
    n = int(model.num_classes)
    if not setting:
        return (f"This model carries no calibrated threshold for 'none of these classes': a photo of anything else "
                f"is still named as one of its {plural(n, 'class')}, unflagged (bagnet calibrate adds one).")
    how = [f"its {setting.get('method', 'familiarity')} score is below {float(setting['threshold']):.4g}"]
    held = setting.get("held_out") or {}
    if "cost" in held and "caught" in held:
        how.append(f"on held-out images this flags {100 * held['cost']:.1f}% of in-class images and catches "
                   f"{100 * held['caught']:.1f}% of images of other classes")
    return (f"A prediction is flagged 'probably none of the {plural(n, 'class')} this model knows' when "
            + "; ".join(how) + ".")


def build_report(
    explorer: Explorer,
    items: Sequence[DemoItem],
    *,
    title: str = "bagnet demo",
    source: str = "",
    top: int = 3,
    show: int = 6,
    res: str = "full",
    label_outputs: Sequence[int] | None = None,
    notes: Sequence[str] = (),
    vmax: float | None = None,
) -> Report:
    """Classify ``items``, explain the first ``show`` of them, and lay it all out as HTML.

    Files that cannot be read are left out, with a note in the report.

    Args:
        explorer: the model.
        items: images, with or without labels.
        title: page title.
        source: where the images come from (shown under the title).
        top: classes per image whose evidence maps are drawn.
        show: images explained in detail (and at most this many misclassified ones).
        res: ``"full"`` or ``"native"`` resolution of the drawn maps.
        label_outputs: restrict the predictions of labelled images to these model outputs
            (e.g. the 10 Imagenette classes of an ImageNet model, as
            ``bagnet eval --restrict-to-folder-classes`` scores them); the report says so.
            ``None``: the prediction is the best of all outputs.
        notes: extra lines for the header (e.g. why labels were ignored).
        vmax: one fixed colour scale ``+-vmax`` for the maps of every image, so colours
            compare across images; default: one scale per image, shared by its classes.

    Raises:
        ValueError: no (readable) images, or ``top``/``show`` below 1.
    """
    if top < 1 or show < 1:
        raise ValueError("top and show must be at least 1")
    if vmax is not None and not (math.isfinite(vmax) and vmax > 0):
        raise ValueError(f"the colour scale must be a positive number, got {vmax}")
    timing: dict[str, float] = {}
    notes = list(notes)

    start = time.perf_counter()
    kept, logits = [], []
    for item in items:
        try:
            image = item.load()
        except ImageError as e:
            logger.warning("skipped: %s", e)
            notes.append(f"skipped: {e}")
            continue
        kept.append(item)
        logits.append(explorer.logits(image))
    items = kept
    if not items:
        raise ValueError("no readable images to report on")
    timing["classify"] = time.perf_counter() - start

    checks = [_check(explorer, lg) for lg in logits]
    allowed = torch.as_tensor(list(label_outputs)) if label_outputs is not None else None
    labelled = [(i, item) for i, item in enumerate(items) if item.label is not None]
    accuracy, wrong, preds = {}, [], {}
    per_class: dict[int, list[int]] = {}
    if labelled:
        hits1 = hits5 = 0
        for i, item in labelled:
            scores = logits[i] if allowed is None else logits[i][allowed]
            ranked = torch.argsort(scores, descending=True)
            ranked = ranked if allowed is None else allowed[ranked]
            preds[i] = pred = int(ranked[0])
            hits1 += pred == item.label
            hits5 += item.label in ranked[:5].tolist()
            per_class.setdefault(item.label, []).append(int(pred == item.label))
            if pred != item.label:
                wrong.append((i, pred))
        accuracy["top1"] = 100.0 * hits1 / len(labelled)
        if (len(allowed) if allowed is not None else explorer.num_classes) > 5:
            accuracy["top5"] = 100.0 * hits5 / len(labelled)
    scoring = _scoring(explorer.num_classes, None if allowed is None else len(set(allowed.tolist())))

    start = time.perf_counter()
    analyses: dict[int, ExploredImage] = {}

    def analysis(i: int) -> ExploredImage:
        if i not in analyses:
            analyses[i] = explorer.explore(items[i].load(), items[i].name)
        return analyses[i]

    cards = [_image_card(explorer, items[i], analysis(i), preds.get(i), top, res, checks[i], vmax)
             for i in range(min(show, len(items)))]
    mistakes = [_mistake_figure(explorer, items[i], analysis(i), pred, res, vmax) for i, pred in wrong[:show]]
    timing["explain"] = time.perf_counter() - start

    flagged = sum(bool(c and c.flag) for c in checks)
    body = [_header(explorer, title, source, len(items), res, notes, flagged)]
    if labelled:
        body.append(_accuracy_section(explorer, accuracy, per_class, len(labelled), len(wrong), scoring))
    body.append(f"<h2>Explanations</h2><p class=note>{_EXPLAIN_NOTE}</p>" + "".join(cards))
    if labelled:
        shown = f" (the first {len(mistakes)})" if len(wrong) > len(mistakes) else ""
        body.append(
            f"<h2>Misclassified images{shown}</h2>"
            "<p class=note>The image; the evidence for its true class, most predictive patches outlined in "
            "black; the evidence for the class the model chose, patches outlined in red. Both maps share "
            "one colour scale.</p>"
            + ("".join(mistakes) or "<p>None: every image was classified correctly.</p>")
        )
    timing["total"] = timing["classify"] + timing["explain"]
    body.append(
        f"<footer>bagnet {__version__}: classified {plural(len(items), 'image')} in {timing['classify']:.1f} s, "
        f"explained {len(cards) + len(mistakes)} in {timing['explain']:.1f} s "
        f"({res} resolution, device {html.escape(str(explorer.device))}).</footer>"
    )
    page = _PAGE.format(title=html.escape(title), style=_STYLE, body="\n".join(body))
    listed = []
    for item, lg, check in zip(items, logits, checks):
        best = int(lg.argmax())
        listed.append({"name": item.name, "prediction": explorer.classes[best],
                       "probability": float(torch.softmax(lg.double(), 0)[best]), "unknown": check,
                       "subject": item.subject})
    return Report(page, len(items), accuracy, scoring=scoring if labelled else "",
                  misclassified=[items[i].name for i, _ in wrong], seconds=timing, predictions=listed)


def _check(explorer: Explorer, logits: torch.Tensor) -> UnknownCheck | None:
    check = unknown_check(explorer.model, logits)
    return check if isinstance(check, UnknownCheck) or check is None else check[0]


def write_report(report: Report | str, path: str | os.PathLike) -> Path:
    """Write the HTML atomically (a reader never sees half a report)."""
    text = report.html if isinstance(report, Report) else report
    return write_text(path, text)


# -- HTML pieces -----------------------------------------------------------------------

_EXPLAIN_NOTE = (
    "Each map shows the class evidence (patch logit) of the patch centred on every pixel, with the "
    "image's edges drawn over it: red speaks for the class, blue against it. The maps of one image share "
    "one colour scale, symmetric about zero, shown by the colour bar and stated under the figure. The "
    "image logit is the mean of the patch logits. Black boxes outline each class's most predictive "
    "patches; those of the top class are cut out below."
)


def _fig(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img class=fig src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _header(explorer: Explorer, title: str, source: str, n: int, res: str, notes: Sequence[str], flagged: int) -> str:
    ex = explorer
    names = ", ".join(html.escape(c) for c in ex.classes)
    knows = html.escape(known_classes(ex.classes))
    if len(ex.classes) > 14:  # the full list folds away
        knows += f" <details><summary>all {len(ex.classes)}</summary>{names}</details>"
    has_threshold = bool((getattr(ex.model, "pretrained_cfg", None) or {}).get("unknown"))
    tally = (f" {plural(flagged, 'image')} of {n} flagged." if has_threshold else "")
    lines = [
        f"<h1>{html.escape(title)}</h1>",
        (
            f"<p class=meta>{html.escape(source)}<br>model <b>{html.escape(ex.model_name)}</b>: "
            f"{plural(ex.num_classes, 'class')}, {ex.receptive_field}&times;{ex.receptive_field} px patches every "
            f"{ex.patch_stride} px; images resized so their short side is {ex.img_size} px; {plural(n, 'image')}; "
            f"maps at {res} resolution.</p>"
        ),
        f"<p class=knows><b>{knows}</b></p>",
        f"<p class={'note' if has_threshold else 'warn'}>{html.escape(unknown_note(ex.model))}{tally}</p>",
    ]
    lines += [f"<p class=warn>{html.escape(note)}</p>" for note in notes]
    return "\n".join(lines)


def _scoring(num_outputs: int, allowed: int | None) -> str:
    if allowed is None or allowed >= num_outputs:
        return f"predicted among all {plural(num_outputs, 'class', 'classes')} of the model"
    return (f"RESTRICTED: predicted among the folder's {plural(allowed, 'class')} only, ignoring the model's "
            f"{num_outputs - allowed} other outputs (--restrict-to-folder-classes)")


def _accuracy_section(explorer: Explorer, accuracy: dict, per_class: dict, n: int, n_wrong: int, scoring: str) -> str:
    parts = [f"top-1 accuracy <b>{accuracy['top1']:.1f}%</b>"]
    if "top5" in accuracy:
        parts.append(f"top-5 accuracy <b>{accuracy['top5']:.1f}%</b>")
    rows = "".join(
        f"<tr><td>{html.escape(explorer.classes[c])}</td><td>{len(v)}</td><td>{100.0 * sum(v) / len(v):.0f}%</td></tr>"
        for c, v in sorted(per_class.items())
    )
    return (
        f"<h2>Accuracy</h2><p>{', '.join(parts)} on {plural(n, 'labelled image')} ({n_wrong} misclassified); "
        f"{html.escape(scoring)}.</p>"
        f"<table><tr><th>class</th><th>images</th><th>top-1</th></tr>{rows}</table>"
    )


def _predictions_table(analysis: ExploredImage, label: int | None, n: int = 5) -> str:
    rows = []
    for p in analysis.predictions(n):
        mark = " &#10003;" if label is not None and p["index"] == label else ""
        rows.append(
            f"<tr><td>{html.escape(p['name'])}{mark}</td><td>{100 * p['probability']:.1f}%</td>"
            f"<td>{p['logit']:.2f}</td></tr>"
        )
    return f"<table class=preds><tr><th>class</th><th>prob.</th><th>logit</th></tr>{''.join(rows)}</table>"


def _image_card(explorer: Explorer, item: DemoItem, analysis: ExploredImage, pred: int | None, top: int, res: str,
                check: UnknownCheck | None, vmax: float | None = None) -> str:
    truth = ""
    if item.label is not None:
        ok = pred == item.label
        truth = (
            f" <span class={'ok' if ok else 'bad'}>true class: {html.escape(explorer.classes[item.label])}"
            f"{' &#10003;' if ok else ' &#10007;'}</span>"
        )
    explanation = analysis.explanation(analysis.ranking(top), res)
    explanation.patch_stride = explorer.patch_stride  # the caption says which patches make the logit
    explanation.unknown = check  # a flagged image's figure says so too, wherever it is copied to
    fig, _ = explanation.plot(vmax=vmax)
    best = explanation.classes[0]
    grid, _ = plot_patches(analysis.display, explanation.patches_for(best),
                           title=f"most predictive patches for {explorer.classes[best]}")
    flag = ""
    if check is not None and check.flag:
        flag = (f"<p class=unknown>&#9888; {html.escape(check.message)} ({check.method} score {check.score:.3g}, "
                f"below the threshold {check.threshold:.3g}): the classes below are only the closest it knows.</p>")
    if item.subject:
        flag += f"<p class={'unknown' if item.outside else 'note'}>{html.escape(item.subject)}</p>"
    return (
        f"<section class=card><h3>{html.escape(item.name)}{truth}</h3>{flag}"
        f"<div class=row>{_predictions_table(analysis, item.label)}{_fig(fig, 'evidence maps of ' + item.name)}</div>"
        f"<div class=row>{_fig(grid, 'top patches of ' + item.name)}</div></section>"
    )


def _mistake_figure(explorer: Explorer, item: DemoItem, analysis: ExploredImage, pred: int, res: str,
                    vmax: float | None = None) -> str:
    true = item.label
    fig, _ = plot_misclassification(
        analysis.display,
        analysis.evidence(true, res),
        analysis.evidence(pred, res),
        true_patches=analysis.patches(true, res),
        predicted_patches=analysis.patches(pred, res),
        true_name=explorer.classes[true],
        predicted_name=explorer.classes[pred],
        true_probability=float(analysis.probs[true]),
        predicted_probability=float(analysis.probs[pred]),
        geometry=analysis.geometry(res),
        model_stride=explorer.patch_stride,
        vmax=vmax,
    )
    return f"<figure class=mistake><figcaption>{html.escape(item.name)}</figcaption>{_fig(fig, 'misclassified ' + item.name)}</figure>"


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d232b; max-width: 1200px; margin: 0 auto; padding: 16px 24px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { margin-top: 28px; font-size: 19px; } h3 { margin: 0 0 8px; font-size: 16px; }
.meta, .note, footer { color: #5b6673; font-size: 13px; } .warn { color: #8a1020; font-size: 13px; }
.card { border: 1px solid #d8dde3; border-radius: 10px; padding: 12px 14px; margin: 14px 0; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #3d4650; max-width: 260px; }
img.fig { max-width: 100%; height: auto; } .mistake { margin-top: 18px; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eef0f3; }
.unknown { background: #fff1e6; border: 1px solid #e0a060; color: #8a3a00; border-radius: 6px; padding: 6px 10px;
  font-weight: 600; margin: 0 0 8px; }
details { display: inline; font-weight: normal; } summary { cursor: pointer; color: #3d5a80; }
.ok { color: #1a7f37; font-weight: normal; } .bad { color: #b2182b; font-weight: normal; }
footer { margin-top: 28px; }
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body>
{body}
</body></html>
"""
