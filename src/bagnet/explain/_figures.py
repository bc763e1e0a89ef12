"""The paper's figures: heatmap overlays, patch grids and the misclassification figure.

Every function draws on a new Agg-backed :class:`~matplotlib.figure.Figure` (or on the
``ax`` it is given), returns ``(fig, ax)`` and never calls ``plt.show()``, so it works
headless, in loops (no pyplot figure registry to leak) and in notebooks alike. Images
may be torch ``[C, H, W]`` tensors (floats in [0, 1] or uint8), numpy ``[H, W, C]`` or
``[H, W]`` arrays, or PIL images.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._extras import require
from ._colour import EVIDENCE_CMAP, SCALE_PERCENTILE, colour_scale, evidence_cmap, evidence_norm
from ._images import ImageLike, image_tensor
from ._maps import MapGeometry
from ._patches import Patch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "as_rgb_array",
    "colour_scale",
    "image_edges",
    "new_figure",
    "plot_evidence_panels",
    "plot_heatmap",
    "plot_misclassification",
    "plot_patches",
]

# Evidence colour bar label, shared by every figure so they read the same.
EVIDENCE_LABEL = "patch logit (class evidence)"


def new_figure(figsize: tuple[float, float] = (4.0, 4.0), dpi: int = 100, *, layout: str | None = None) -> Figure:
    """A figure with an Agg canvas that is not registered with pyplot."""
    require("matplotlib", "drawing figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """Any supported image (see :func:`image_tensor`) as a float ``[H, W, 3]`` array in [0, 1]."""
    return image_tensor(image).permute(1, 2, 0).numpy()


def _filter(a: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """Separable correlation with edge replication (kernels of odd length)."""
    r = len(ky) // 2
    p = np.pad(a, r, mode="edge")
    h, w = a.shape
    tmp = sum(ky[i] * p[i : i + h, :] for i in range(len(ky)))
    return sum(kx[i] * tmp[:, i : i + w] for i in range(len(kx)))


def image_edges(image: ImageLike, *, sigma: float = 1.0, quantile: float = 0.85) -> np.ndarray:
    """Thin boolean edge mask, a light Canny: Sobel gradients of the Gaussian-smoothed gray
    image, kept where the magnitude is a maximum across the edge and above its ``quantile``
    (and above 5% of its maximum, so flat images have no edges)."""
    gray = as_rgb_array(image).mean(-1)
    r = max(1, round(3 * sigma))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g /= g.sum()
    smooth = _filter(gray, g, g)
    d, s = np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
    gx, gy = _filter(smooth, s, d), _filter(smooth, d, s)
    mag = np.hypot(gx, gy)
    if mag.max() <= 1e-6:
        return np.zeros(gray.shape, bool)
    # Non-maximum suppression along the gradient direction, quantized to 4 neighbours.
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    # Gradient direction in 4 sectors; rows grow downwards, so 45 degrees is down-right.
    sector = np.digitize(angle, [22.5, 67.5, 112.5, 157.5]) % 4
    p = np.pad(mag, 1, mode="edge")
    h, w = mag.shape
    shifted = {(dy, dx): p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    pairs = {0: ((0, -1), (0, 1)), 1: ((-1, -1), (1, 1)), 2: ((-1, 0), (1, 0)), 3: ((1, -1), (-1, 1))}
    peak = np.zeros(mag.shape, bool)
    for k, (a, b) in pairs.items():
        # ">" on one side: of two equal neighbours across an edge, only one is kept
        peak |= (sector == k) & (mag >= shifted[a]) & (mag > shifted[b])
    return peak & (mag > np.quantile(mag, quantile)) & (mag > 0.05 * mag.max())


def _heat_extent(geometry: MapGeometry | None, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """imshow extent that puts each map entry over the pixel its patch is centred on."""
    h, w = shape
    if geometry is None:
        return (-0.5, w - 0.5, h - 0.5, -0.5)
    s = geometry.stride
    c = (geometry.patch_size - 1) / 2 - geometry.offset  # centre of entry 0
    return (c - s / 2, c + s * (w - 1) + s / 2, c + s * (h - 1) + s / 2, c - s / 2)


def _outline(ax, patches: Sequence[Patch], color: str, linewidth: float = 1.5) -> None:
    from matplotlib.patches import Rectangle  # ax exists, so matplotlib is installed

    for p in patches:
        x0, y0, x1, y1 = p.box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth))


def plot_heatmap(
    evidence: torch.Tensor | np.ndarray,
    image: ImageLike | None = None,
    *,
    geometry: MapGeometry | None = None,
    ax: Axes | None = None,
    percentile: float = SCALE_PERCENTILE,
    limit: float | None = None,
    cmap: str = EVIDENCE_CMAP,
    edges: bool = True,
    edge_alpha: float = 0.6,
    patches: Sequence[Patch] = (),
    patch_color: str = "black",
    title: str | None = None,
    colorbar: bool = False,
) -> tuple[Figure, Axes]:
    """Heatmap as in the paper: diverging colours centred at zero, clipped at a percentile
    of ``|evidence|``, with the image's edges drawn over it.

    Args:
        evidence: ``[h, w]`` map (tensor or array).
        image: the image the map belongs to, for the edge overlay and the axes extent.
        geometry: where map entries sit in the image; ``None`` when the map is pixel-aligned
            with the image (stride 1, padded).
        ax: axes to draw on; a new figure otherwise.
        percentile: colour range is +-(this percentile of |evidence|), as
            :func:`colour_scale` sets it.
        limit: colour range +-limit instead (to share one scale between maps).
        cmap: a diverging colormap (red = evidence for the class, blue = against); the
            default is the one every evidence picture of this library uses
            (:mod:`bagnet.explain._colour`).
        edges: overlay edges of ``image``.
        edge_alpha: opacity of the edges.
        patches: boxes to outline.
        patch_color: their colour.
        title: axes title.
        colorbar: add a colour bar.

    Returns:
        ``(fig, ax)``.
    """
    ev = _np(evidence)
    if ev.ndim != 2:
        raise ValueError(f"plot_heatmap takes one [h, w] map, got shape {ev.shape}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    fig, ax = (ax.figure, ax) if ax is not None else _single_axes()
    if limit is None:
        limit = colour_scale([ev], percentile)
    limit = max(limit, 1e-12)
    im = ax.imshow(ev, cmap=evidence_cmap() if cmap == EVIDENCE_CMAP else cmap, norm=evidence_norm(limit),
                   extent=_heat_extent(geometry, ev.shape), interpolation="nearest")
    if image is not None:
        rgb = as_rgb_array(image)
        h, w = rgb.shape[:2]
        if edges:
            mask = image_edges(rgb)
            overlay = np.zeros((h, w, 4), np.float32)
            overlay[mask] = (0.0, 0.0, 0.0, edge_alpha)
            ax.imshow(overlay, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    _outline(ax, patches, patch_color)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig, ax


def _single_axes():
    fig = new_figure()
    return fig, fig.add_subplot(1, 1, 1)


def plot_image(
    image: ImageLike,
    *,
    ax: Axes | None = None,
    patches: Sequence[Patch] = (),
    patch_color: str = "black",
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """The image itself, optionally with boxes outlined; returns ``(fig, ax)``."""
    fig, ax = (ax.figure, ax) if ax is not None else _single_axes()
    ax.imshow(as_rgb_array(image), interpolation="nearest")
    _outline(ax, patches, patch_color)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def plot_patches(
    image: ImageLike, patches: Sequence[Patch], *, ncols: int | None = None, title: str | None = None
) -> tuple[Figure, np.ndarray]:
    """A grid of the image crops of ``patches``, each titled with its score.

    Returns:
        ``(fig, axes)`` with ``axes`` a list, one per patch.
    """
    if not patches:
        raise ValueError("no patches to show")
    rgb = as_rgb_array(image)
    crops = [rgb[p.box[1] : p.box[3], p.box[0] : p.box[2]] for p in patches]
    return plot_crops(crops, [f"{p.score:.2f}" for p in patches], ncols=ncols, title=title)


def plot_crops(
    crops: Sequence[ImageLike], titles: Sequence[str], *, ncols: int | None = None, title: str | None = None
) -> tuple[Figure, np.ndarray]:
    """Grid of small images with a title each; returns ``(fig, axes)``."""
    n = len(crops)
    ncols = ncols or min(n, 8)
    nrows = -(-n // ncols)
    fig = new_figure((1.3 * ncols, 1.45 * nrows + (0.3 if title else 0)))
    axes = []
    for i, (crop, t) in enumerate(zip(crops, titles)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(as_rgb_array(crop), interpolation="nearest")
        ax.set_title(t, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, axes


def evidence_caption(
    scale: float,
    *,
    fixed: bool,
    percentile: float = SCALE_PERCENTILE,
    clipped: bool = False,
    geometry: MapGeometry | None = None,
    model_stride: int | None = None,
) -> str:
    """The sentences under an evidence figure: what the colours mean, the scale and how it
    was set, and how the maps make the image logit.

    Args:
        scale: the colour range ``+-scale``.
        fixed: the scale was given (``vmax``), not taken from the maps.
        percentile: else, the percentile of ``|evidence|`` it is.
        clipped: some values lie beyond the scale.
        geometry: where the map entries sit; a padded map (``offset > 0``) or one denser
            than the model's own patches also holds patches the model never averages
            (``None``: a pixel-aligned, padded map).
        model_stride: the model's own patch stride, to say which patches make the logit.
    """
    how = (f"fixed at ±{scale:.3g}" if fixed
           else f"±{scale:.3g}, the {percentile:g}th percentile of |evidence| over these maps")
    ends = " (stronger values take the colours at its ends)" if clipped else ""
    own = geometry is not None and geometry.offset == 0 and geometry.stride == model_stride
    if own:
        logit = "The image logit is the mean of these patch values."
    else:
        every = f"every {model_stride} px" if model_stride else "at the model's own stride"
        logit = f"The image logit is the mean of these patch values over the patches the model uses ({every}, wholly inside the image)."
    return f"Red: evidence for the class, blue: against it. One colour scale for all maps: {how}{ends}. {logit}"


def plot_evidence_panels(
    image: ImageLike,
    maps: Sequence[torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray,
    *,
    titles: Sequence[str],
    patches: Sequence[Sequence[Patch]] | None = None,
    patch_colors: Sequence[str] | None = None,
    geometry: MapGeometry | None = None,
    vmax: float | None = None,
    percentile: float = SCALE_PERCENTILE,
    image_title: str = "image",
    edges: bool = True,
    caption: str | None = None,
    model_stride: int | None = None,
    warning: str | None = None,
    panel_width: float = 2.6,
) -> tuple[Figure, list[Axes]]:
    """The image followed by one heatmap per map, all on one colour scale shown by one
    colour bar, with a caption saying what the colours mean.

    The figure is sized to the image's aspect ratio, so it has no empty bands.

    Args:
        image: the image the maps belong to.
        maps: ``[h, w]`` evidence maps.
        titles: a title per map.
        patches: per map, boxes to outline.
        patch_colors: per map, the colour of its boxes (default black).
        geometry: where map entries sit in the image (see :func:`plot_heatmap`).
        vmax: colour range ``+-vmax`` for every map (e.g. one fixed scale across images);
            default: :func:`colour_scale` of these maps.
        percentile: the percentile of ``|evidence|`` that sets the range when ``vmax`` is not given.
        image_title: title of the image panel.
        edges: draw the image's edges over the maps.
        caption: text under the panels; default: :func:`evidence_caption` (what the colours
            and the scale mean, and how the maps make the image logit).
        model_stride: the model's own patch stride, for the caption.
        warning: a line above the panels in red, e.g. that the image is probably none of
            the model's classes.
        panel_width: width of each panel in inches.

    Returns:
        ``(fig, axes)``: the image's axes, then one per map. The colour bar is the
        figure's last axes.
    """
    maps = [_np(m) for m in maps]
    titles = list(titles)
    if not maps or len(titles) != len(maps):
        raise ValueError(f"need one title per map, got {len(maps)} maps and {len(titles)} titles")
    if vmax is not None and not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a positive number, got {vmax}")
    scale = float(vmax) if vmax is not None else colour_scale(maps, percentile)
    rgb = as_rgb_array(image)
    h, w = rgb.shape[:2]
    n = 1 + len(maps)
    # Tall images get narrower panels (down to what their titles need) rather than white
    # bands beside them.
    panel_width = max(min(panel_width, 1.6 * panel_width * w / h), 1.8)
    panel_height = max(panel_width * h / w, 0.8)
    clipped = max(float(np.abs(m).max()) for m in maps) > scale
    if caption is None:
        caption = evidence_caption(scale, fixed=vmax is not None, percentile=percentile, clipped=clipped,
                                   geometry=geometry, model_stride=model_stride)
    width = n * panel_width + 1.0  # the colour bar with its ticks and label
    lines = textwrap.wrap(caption, width=max(40, int(width * 15))) if caption else []
    height = panel_height + 0.5 + 0.17 * len(lines) + (0.1 if lines else 0)  # two-line titles, the caption
    height += 0.3 if warning else 0.0
    # Whole pixels at 100 dpi, so the PNG is exactly the figure's size.
    fig = new_figure((round(width, 2), round(height, 2)), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.0)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    plot_image(rgb, ax=axes[0], title=image_title)
    colors = list(patch_colors) if patch_colors is not None else ["black"] * len(maps)
    boxes = list(patches) if patches is not None else [()] * len(maps)
    for ax, ev, title, box, color in zip(axes[1:], maps, titles, boxes, colors):
        plot_heatmap(ev, rgb, geometry=geometry, ax=ax, limit=scale, edges=edges, patches=box, patch_color=color,
                     title=title)
    bar = fig.colorbar(axes[1].images[0], ax=axes, location="right", fraction=0.03, pad=0.01, aspect=20,
                       extend="both" if clipped else "neither")
    bar.set_label(EVIDENCE_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bar.set_ticks([-scale, -scale / 2, 0.0, scale / 2, scale])
    if lines:
        fig.supxlabel("\n".join(lines), fontsize=8, color="#333333")
    if warning:
        fig.suptitle(f"\u26a0 {warning}", fontsize=10, color="#a01010", fontweight="bold")
    return fig, axes


def plot_misclassification(
    image: ImageLike,
    true_evidence: torch.Tensor | np.ndarray,
    predicted_evidence: torch.Tensor | np.ndarray,
    *,
    true_patches: Sequence[Patch] = (),
    predicted_patches: Sequence[Patch] = (),
    true_name: str,
    predicted_name: str,
    true_probability: float,
    predicted_probability: float,
    geometry: MapGeometry | None = None,
    percentile: float = SCALE_PERCENTILE,
    vmax: float | None = None,
    caption: str | None = None,
    model_stride: int | None = None,
) -> tuple[Figure, list[Axes]]:
    """The paper's misclassification figure: the image; the true class's heatmap with its
    most predictive patches outlined in black; the predicted class's heatmap with its
    patches outlined in red. Probabilities are in the titles; both maps share one colour
    scale (``vmax``, or the ``percentile`` of both maps' ``|evidence|``), shown by a colour bar.

    Returns:
        ``(fig, axes)``, three axes (the colour bar is the figure's last axes).
    """
    return plot_evidence_panels(
        image,
        [true_evidence, predicted_evidence],
        titles=[f"true: {true_name}\np = {true_probability:.3f}",
                f"predicted: {predicted_name}\np = {predicted_probability:.3f}"],
        patches=[true_patches, predicted_patches],
        patch_colors=["black", "red"],
        geometry=geometry,
        vmax=vmax,
        percentile=percentile,
        caption=caption,
        model_stride=model_stride,
    )


def _np(evidence) -> np.ndarray:
    if isinstance(evidence, torch.Tensor):
        return evidence.detach().float().cpu().numpy()
    return np.asarray(evidence, np.float32)
