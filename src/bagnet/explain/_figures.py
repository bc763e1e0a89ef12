"""The paper's figures: heatmap overlays, patch grids and the misclassification figure.

Every function draws on a new Agg-backed :class:`~matplotlib.figure.Figure` (or on the
``ax`` it is given), returns ``(fig, ax)`` and never calls ``plt.show()``, so it works
headless, in loops (no pyplot figure registry to leak) and in notebooks alike. Images
may be torch ``[C, H, W]`` tensors (floats in [0, 1] or uint8), numpy ``[H, W, C]`` or
``[H, W]`` arrays, or PIL images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._extras import require
from ._images import ImageLike, image_tensor
from ._maps import MapGeometry
from ._patches import Patch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "as_rgb_array",
    "image_edges",
    "new_figure",
    "plot_heatmap",
    "plot_misclassification",
    "plot_patches",
]


def new_figure(figsize: tuple[float, float] = (4.0, 4.0), dpi: int = 100) -> Figure:
    """A figure with an Agg canvas that is not registered with pyplot."""
    require("matplotlib", "drawing figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
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
    percentile: float = 99.0,
    limit: float | None = None,
    cmap: str = "RdBu_r",
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
        percentile: colour range is +-(this percentile of |evidence|).
        limit: colour range +-limit instead (to share one scale between maps).
        cmap: a diverging colormap (red = evidence for the class, blue = against).
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
        limit = float(np.percentile(np.abs(ev), percentile))
    limit = max(limit, 1e-12)
    im = ax.imshow(ev, cmap=cmap, vmin=-limit, vmax=limit, extent=_heat_extent(geometry, ev.shape), interpolation="nearest")
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
    percentile: float = 99.0,
) -> tuple[Figure, np.ndarray]:
    """The paper's misclassification figure: the image; the true class's heatmap with its
    most predictive patches outlined in black; the predicted class's heatmap with its
    patches outlined in red. Probabilities are in the titles.

    Returns:
        ``(fig, axes)``, three axes.
    """
    fig = new_figure((9.6, 3.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    plot_image(image, ax=axes[0], title="image")
    # One colour scale for both maps, so their evidence can be compared.
    both = [np.abs(_np(e)) for e in (true_evidence, predicted_evidence)]
    limit = max(float(np.percentile(b, percentile)) for b in both)
    for ax, ev, patches, color, head, name, prob in (
        (axes[1], true_evidence, true_patches, "black", "true", true_name, true_probability),
        (axes[2], predicted_evidence, predicted_patches, "red", "predicted", predicted_name, predicted_probability),
    ):
        plot_heatmap(ev, image, geometry=geometry, ax=ax, limit=limit, patches=patches, patch_color=color,
                     title=f"{head}: {name} (p = {prob:.3f})")
    fig.tight_layout()
    return fig, axes


def _np(evidence) -> np.ndarray:
    if isinstance(evidence, torch.Tensor):
        return evidence.detach().float().cpu().numpy()
    return np.asarray(evidence, np.float32)
