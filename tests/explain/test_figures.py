"""The figures: what they draw, on which inputs, and that they never touch pyplot."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from bagnet.explain import (
    MapGeometry,
    Patch,
    image_edges,
    plot_heatmap,
    plot_misclassification,
    plot_patches,
)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a figure was registered with pyplot"


def square_image(h=24, w=30):
    a = np.zeros((h, w, 3), np.uint8)
    a[6:18, 8:22] = 255
    return a


def rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_edges_of_a_square_are_its_outline():
    img = square_image()
    edges = image_edges(img)
    ys, xs = np.nonzero(edges)
    # every edge pixel lies on (or right next to) the square's boundary ...
    on_boundary = np.minimum.reduce([np.abs(ys - 6), np.abs(ys - 17), np.abs(xs - 8), np.abs(xs - 21)]) <= 1
    assert on_boundary.all()
    # ... all four sides are found, and edges are thin lines, not bands
    assert edges[12, 7:10].any() and edges[12, 20:23].any() and edges[5:8, 15].any() and edges[16:19, 15].any()
    assert edges[12].sum() == 2 and edges[:, 15].sum() == 2
    assert not image_edges(np.full((10, 10), 128, np.uint8)).any()


@pytest.mark.parametrize("kind", ["tensor", "pil", "numpy", "gray"])
def test_heatmap_accepts_images_and_centres_the_colour_scale(kind):
    img = square_image()
    image = {
        "tensor": torch.from_numpy(img).permute(2, 0, 1).float() / 255,
        "pil": Image.fromarray(img),
        "numpy": img,
        "gray": img[..., 0],
    }[kind]
    ev = np.linspace(-3, 1, 24 * 30, dtype=np.float32).reshape(24, 30)
    fig, ax = plot_heatmap(torch.from_numpy(ev), image, percentile=90, patches=[Patch((1, 2, 10, 11), 1.0, 0, (6, 5))],
                           title="class")
    assert fig.canvas.get_renderer() is not None  # Agg canvas
    heat = ax.images[0]
    lo, hi = heat.get_clim()
    assert lo == -hi and hi == pytest.approx(np.percentile(np.abs(ev), 90))
    assert heat.get_cmap().name == "RdBu_r"
    assert len(ax.images) == 2  # heatmap, then the edge overlay
    overlay = ax.images[1].get_array()
    assert overlay.shape == (24, 30, 4) and (overlay[..., 3] > 0).sum() == image_edges(img).sum()
    (r,) = rects(ax)
    assert r.get_xy() == (0.5, 1.5) and r.get_width() == 9 and r.get_height() == 9
    assert ax.get_title() == "class"


def test_native_stride_map_is_placed_over_its_patch_centres():
    geom = MapGeometry(33, 8, 16, (61, 50))
    ev = np.random.default_rng(0).normal(size=geom.map_size)
    _, ax = plot_heatmap(ev, square_image(61, 50), geometry=geom)
    left, right, bottom, top = ax.images[0].get_extent()
    # entry (i, j) is centred on pixel (8i, 8j) and 8 pixels wide
    assert (left, top) == (-4, -4) and right == 8 * (ev.shape[1] - 1) + 4 and bottom == 8 * (ev.shape[0] - 1) + 4


def test_patch_grid_shows_the_crops():
    img = square_image()
    patches = [Patch((8, 6, 22, 18), 2.5, 1, (12, 15)), Patch((0, 0, 5, 4), -1.0, 1, (1, 2))]
    _, axes = plot_patches(torch.from_numpy(img).permute(2, 0, 1), patches, title="top patches")
    assert len(axes) == 2
    first = axes[0].images[0].get_array()
    assert first.shape == (12, 14, 3) and np.allclose(first, 1.0)  # the white square exactly
    assert axes[1].images[0].get_array().shape == (4, 5, 3)
    assert [a.get_title() for a in axes] == ["2.50", "-1.00"]


def test_misclassification_figure():
    img = square_image()
    t = np.full((24, 30), 0.5, np.float32)
    p = np.full((24, 30), -2.0, np.float32)
    tp, pp = [Patch((1, 1, 5, 5), 0.5, 3, (3, 3))], [Patch((2, 2, 9, 9), 1.0, 7, (5, 5)), Patch((9, 9, 12, 12), 0.9, 7, (10, 10))]
    _, axes = plot_misclassification(img, t, p, true_patches=tp, predicted_patches=pp, true_name="tabby",
                                     predicted_name="tiger", true_probability=0.125, predicted_probability=0.75)
    assert len(axes) == 3
    assert "tabby" in axes[1].get_title() and "0.125" in axes[1].get_title()
    assert "tiger" in axes[2].get_title() and "0.750" in axes[2].get_title()
    to_rgb = matplotlib.colors.to_rgba
    assert [to_rgb(r.get_edgecolor()) for r in rects(axes[1])] == [to_rgb("black")]
    assert [to_rgb(r.get_edgecolor()) for r in rects(axes[2])] == [to_rgb("red")] * 2
    # one colour scale for both maps, so they can be compared
    assert axes[1].images[0].get_clim() == axes[2].images[0].get_clim() == (-2.0, 2.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one"):
        plot_heatmap(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="unnormalized"):
        plot_heatmap(np.zeros((4, 4)), torch.randn(3, 4, 4) * 5)
    with pytest.raises(ValueError, match="no patches"):
        plot_patches(square_image(), [])


# -- one colour scale, a colour bar, a caption, no empty margins -------------------------


@pytest.fixture(scope="module")
def explained():
    from bagnet.explain import explain

    from .conftest import randomized

    model = randomized("bagnet_tiny", num_classes=5, seed=3)
    image = torch.rand(3, 40, 64, generator=torch.Generator().manual_seed(1))
    return explain(model, image, classes="top3", k=2)


def colour_bar_of(fig, heat_axes):
    """The colour bar drawn for the heatmaps: an axes of the figure that is none of them."""
    bars = [im.colorbar for ax in heat_axes for im in ax.images if im.colorbar is not None]
    assert len(bars) == 1, "expected exactly one colour bar for all maps"
    bar = bars[0]
    assert bar.ax in fig.axes and bar.ax not in heat_axes
    return bar


def blank_border_fraction(png: bytes) -> tuple[float, float]:
    """Fractions of the PNG's rows and of its columns that are all background and lie in
    an unbroken run from an edge (the empty margins)."""
    import io

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    blank = (np.abs(a - a[0, 0]).sum(-1) == 0)  # the corner pixel is the background
    rows, cols = blank.all(1), blank.all(0)

    def run(flags):
        n = 0
        for f in flags:
            if not f:
                break
            n += 1
        return n

    return (run(rows) + run(rows[::-1])) / len(rows), (run(cols) + run(cols[::-1])) / len(cols)


def test_explanation_figure_has_one_colour_bar_shared_by_its_classes(explained):
    fig, axes = explained.plot()
    heat = axes[1:]
    assert len(heat) == 3
    # Independent: the 99th percentile of |evidence| pooled over the three maps.
    v = float(np.percentile(np.abs(explained.evidence.numpy()).ravel(), 99))
    for ax in heat:
        assert ax.images[0].get_clim() == pytest.approx((-v, v))
    bar = colour_bar_of(fig, heat)
    assert bar.vmin == pytest.approx(-v) and bar.vmax == pytest.approx(v)
    assert sorted(bar.ax.get_ylim()) == pytest.approx([-v, v])
    assert "class evidence" in bar.ax.get_ylabel()
    caption = fig._supxlabel.get_text().replace("\n", " ")
    assert f"±{v:.3g}" in caption and "99th percentile" in caption
    assert "image logit is the mean of these patch values" in caption
    # the maps differ, so per-map percentiles (the old figure) would have given different scales
    per_map = [np.percentile(np.abs(m.numpy()), 99) for m in explained.evidence]
    assert max(per_map) - min(per_map) > 1e-3 * v


def test_a_fixed_scale_is_obeyed(explained):
    fig, axes = explained.plot(vmax=2.5)
    for ax in axes[1:]:
        assert ax.images[0].get_clim() == (-2.5, 2.5)
    bar = colour_bar_of(fig, axes[1:])
    assert (bar.vmin, bar.vmax) == (-2.5, 2.5)
    assert "fixed at ±2.5" in fig._supxlabel.get_text().replace("\n", " ")
    with pytest.raises(ValueError, match="vmax"):
        explained.plot(vmax=0)


def test_misclassification_figure_has_the_colour_bar_and_the_fixed_scale():
    img = square_image()
    t, p = np.full((24, 30), 0.5, np.float32), np.full((24, 30), -2.0, np.float32)
    kw = dict(true_name="a", predicted_name="b", true_probability=0.1, predicted_probability=0.9)
    fig, axes = plot_misclassification(img, t, p, **kw)
    assert colour_bar_of(fig, axes[1:]).vmax == 2.0
    fig, axes = plot_misclassification(img, t, p, vmax=0.25, **kw)
    assert axes[1].images[0].get_clim() == axes[2].images[0].get_clim() == (-0.25, 0.25)
    assert colour_bar_of(fig, axes[1:]).extend == "both"  # values beyond the fixed scale


@pytest.mark.parametrize("h,w", [(40, 64), (64, 40), (48, 48), (30, 120)])
def test_figures_have_no_large_empty_margins(h, w):
    from bagnet.explain import explain
    from bagnet.explain._explain import figure_png

    from .conftest import randomized

    model = randomized("bagnet_tiny", num_classes=4, seed=4)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(2))
    for e in (explain(model, image, classes="top3", k=1), explain(model, image, classes=[], true_class=1, k=1)):
        fig, _ = e.plot()
        rows, cols = blank_border_fraction(figure_png(fig))
        # The old figure left about a third of its rows blank (fixed 3.4 in height).
        assert rows < 0.06 and cols < 0.06, (h, w, rows, cols)


@pytest.mark.parametrize("threshold,flagged", [(1.5, True), (0.0, False)])
def test_a_flagged_explanation_says_so_above_its_figure(threshold, flagged, capsys, tmp_path):
    import bagnet
    from bagnet.cli.main import main
    from bagnet.explain import explain

    from .conftest import randomized

    model = randomized("bagnet_tiny", num_classes=4, seed=6)
    # max_softmax lies in (0, 1]: a threshold of 1.5 flags every image, 0 none.
    model.pretrained_cfg = {**model.pretrained_cfg, "img_size": 40,
                            "unknown": {"method": "max_softmax", "threshold": threshold}}
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(3))
    fig, _ = explain(model, image, k=1).plot()
    message = "probably none of the 4 classes this model knows"
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    assert (message in title) == flagged
    # and on the terminal line of `bagnet explain`
    path = bagnet.save_model_file(tmp_path / "m.pt", model, model.pretrained_cfg)
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "x.png")
    assert main(["explain", str(tmp_path / "x.png"), "--weights", str(path), "--out", str(tmp_path / "o")]) == 0
    assert (f"({message}) -> " in capsys.readouterr().out) == flagged
