"""The explorer's download figure: what the page shows for one class, as PNG or SVG.

The sharp photo with the class evidence over it (the map stretched over the part of the
photo the model saw, as on the page), the top patches outlined and numbered, and a colour
bar stating the scale. Drawn with matplotlib's object API (no pyplot state), so any
number of server threads can draw at once. The colours are the page's
(:mod:`bagnet.explain._colour`), and the texts are wrapped to the figure's width.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._extras import require
from ..explain._colour import OVERLAY_OPACITY, evidence_cmap, evidence_norm, evidence_rgba

if TYPE_CHECKING:
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from ..explain import Patch

__all__ = ["certificate_line", "explorer_figure", "fit_text", "short_name"]

_PATCH_COLOUR = "#ffd60a"
# Characters a title line may take at first (6 inch figure, 10 pt); fit_text wraps narrower
# where the characters are wide.
_TITLE_CHARS = 72


def explorer_figure(photo: np.ndarray, evidence: np.ndarray, patches: Sequence[Patch], vmax: float, *,
                    res: str, class_name: str, title: str, certificate: dict | None = None) -> Figure:
    """The evidence of one class over a photo, on the colour scale ``+-vmax``.

    Args:
        photo: ``[H, W, 3]`` uint8, the part of the original image the model saw.
        evidence: the map with one value per pixel of the model's input (``[h, w]``),
            stretched over the photo.
        patches: the top patches, boxes in the model input's pixels; numbered in order.
        vmax: the colour bar spans ``[-vmax, vmax]``; values beyond take its end colours.
        res: ``"native"`` (drawn as blocks) or ``"full"`` (interpolated).
        class_name: the class whose evidence this is.
        title: above the picture.
        certificate: a record of :meth:`bagnet.app.ExploredImage.certificate`: its sentence
            goes under the title and the window the masking removed (if any) is drawn as
            the page draws it, a dashed white box.
    """
    require("matplotlib", "the explorer's figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ph, pw = photo.shape[:2]
    h, w = evidence.shape
    # The page's overlay at its default opacity: the same colours and the same transparency
    # (weak evidence more transparent, so the photo shows through).
    overlay = evidence_rgba(evidence, vmax, overlay=True, opacity=OVERLAY_OPACITY)

    width = 6.0
    fig = Figure(figsize=(width, width * ph / pw + 1.2), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    extent = (0, pw, ph, 0)
    ax.imshow(photo, extent=extent, interpolation="antialiased")
    ax.imshow(overlay, extent=extent, interpolation="nearest" if res == "native" else "bilinear")
    sx, sy = pw / w, ph / h
    font = 11
    for i, p in enumerate(patches):
        x0, y0, x1, y1 = p.box
        ax.add_patch(Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False,
                               edgecolor=_PATCH_COLOUR, linewidth=1.6))
        ax.text(x0 * sx + 2, y0 * sy + 2, str(i + 1), color=_PATCH_COLOUR, fontsize=font, fontweight="bold",
                va="top", ha="left", bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.2, "linewidth": 0})
    if certificate is not None:
        title += "\n" + certificate_line(certificate)
        if certificate.get("removed_box_resized"):
            x0, y0, x1, y1 = certificate["removed_box_resized"]
            ax.add_patch(Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False,
                                   edgecolor="white", linewidth=2.0, linestyle="--", gid="removed-window"))
    ax.set_xlim(0, pw)
    ax.set_ylim(ph, 0)
    ax.set_axis_off()
    bar = fig.colorbar(ScalarMappable(norm=evidence_norm(vmax), cmap=evidence_cmap()), ax=ax,
                       orientation="horizontal", fraction=0.05, pad=0.03, extend="both")
    label = bar.ax.xaxis.label
    bar.set_label(f"patch logit: evidence for {class_name}, scale ±{vmax:.3g} (values beyond take the end colours)\n"
                  "the image's logit is the mean of the model's patch logits", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    bar.ax.set_gid("colorbar")  # findable in the SVG
    # Long file and class names, the "none of these" warning and the certificate's sentence
    # would run past the figure's edges (and be cut off in the download): wrapped to fit.
    renderer = canvas.get_renderer()
    fit_text(ax.set_title(title, fontsize=10), renderer, fig.bbox.width)
    fit_text(label, renderer, fig.bbox.width)
    return fig


def short_name(name: str, limit: int = 60) -> str:
    """``name`` cut in the middle to at most ``limit`` characters (keeping its end, the file
    type), for titles."""
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep - keep // 3] + "\u2026" + name[len(name) - keep // 3 :]


def fit_text(text: Text, renderer: RendererBase, width: float, margin: float = 0.04) -> None:
    """Wrap a matplotlib :class:`~matplotlib.text.Text` line by line until it is narrower than
    ``(1 - 2 * margin) * width`` (pixels of ``renderer``); long words are broken too."""
    paragraphs = text.get_text().split("\n")
    limit = (1 - 2 * margin) * width
    chars = max(len(p) for p in paragraphs)
    while chars > 8 and text.get_window_extent(renderer).width > limit:
        chars = min(chars, _TITLE_CHARS) if chars > _TITLE_CHARS else int(chars * 0.85)
        text.set_text("\n".join(line for p in paragraphs
                                for line in (textwrap.wrap(p, chars, break_on_hyphens=False) or [""])))


def certificate_line(cert: dict) -> str:
    """One line for a certificate record, as the page says it (without the page's pixels)."""
    mark = "certified" if cert["certified"] else "NOT certified"
    line = f"{cert['defense']}-defended prediction {cert['prediction']['name']}: {mark} (margin {cert['margin']:.3g}); "
    line += cert["message"]
    if cert.get("removed_box_resized"):
        line += "; dashed box: the window the masking removed"
    return line
