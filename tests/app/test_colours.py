"""One colour scale and one colour map for every evidence picture: the page's heatmap
tiles, its colour bar, the explorer's downloads and the paper's figures all show a given
evidence value in the colour :func:`bagnet.explain._colour.evidence_rgba` gives it."""

import base64
import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from bagnet.app import Explorer
from bagnet.app._figure import explorer_figure
from bagnet.explain import colour_scale, plot_heatmap
from bagnet.explain._colour import EVIDENCE_CMAP, OVERLAY_OPACITY, colormap_stops, evidence_rgba

from .conftest import IMG_SIZE, random_image

# Evidence values of a 6 x 6 map of 8 px blocks on the scale +-2: both signs, zero, the
# scale's ends and values beyond them (which take the end colours).
VALUES = np.array([[-3.0, -2.0, -1.5, -1.0, -0.5, -0.1],
                   [0.0, 0.1, 0.5, 1.0, 1.5, 2.0],
                   [3.0, -0.25, 0.25, -0.75, 0.75, -1.25],
                   [1.25, -1.75, 1.75, 0.05, -0.05, 0.6],
                   [-0.6, 0.9, -0.9, 1.1, -1.1, 0.3],
                   [-0.3, 2.5, -2.5, 0.0, 1.9, -1.9]], np.float32)
VMAX = 2.0
BLOCK = 8


def blocks(values=VALUES, size=BLOCK):
    return np.kron(values, np.ones((size, size), np.float32))


def test_the_colour_function_is_the_red_blue_map_on_a_symmetric_scale():
    """Checked against its definition, value by value: RdBu_r at (v / vmax + 1) / 2, clipped."""
    cmap = colormaps["RdBu_r"]
    for v in VALUES.ravel():
        expected = cmap(float(np.clip((v / VMAX + 1) / 2, 0, 1)))
        np.testing.assert_allclose(evidence_rgba(v, VMAX), expected, atol=1e-6)
    assert EVIDENCE_CMAP == "RdBu_r"
    np.testing.assert_array_equal(evidence_rgba(-5.0, VMAX), evidence_rgba(-VMAX, VMAX))  # beyond: the end colour
    # Over a photo: weak evidence more transparent, from a quarter to full opacity.
    assert evidence_rgba(0.0, VMAX, overlay=True, opacity=0.8)[3] == pytest.approx(0.2)
    assert evidence_rgba(-VMAX, VMAX, overlay=True, opacity=0.8)[3] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="colour scale must be a positive number"):
        evidence_rgba(1.0, 0.0)


def test_the_scale_is_the_99th_percentile_of_absolute_evidence():
    maps = [torch.arange(-50.0, 50.0).reshape(10, 10), np.full((4, 4), 0.5)]
    values = np.concatenate([np.abs(np.arange(-50.0, 50.0)), np.full(16, 0.5)])
    assert colour_scale(maps) == pytest.approx(np.percentile(values, 99))
    assert colour_scale([np.zeros((3, 3))]) == 1.0


def pixel(fig, ax, x, y):
    """The rendered RGB of data point (x, y) of ``ax``."""
    buf = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return buf[round(buf.shape[0] - py), round(px), :3].astype(int)


CENTRES = [(i, j) for i in range(6) for j in range(6) if (i + j) % 2 == 0]  # 18 blocks


def test_page_tiles_and_the_download_figure_show_the_same_colours(tiny_model):
    """The page's overlay PNG (at the page's default opacity) and the figure the page
    downloads, at the centre of each block, against the single colour function."""
    explorer = Explorer(tiny_model, img_size=IMG_SIZE)
    analysis = explorer.explore(random_image(IMG_SIZE, IMG_SIZE, seed=3))
    side = BLOCK * 6
    analysis.upsampled = lambda cls, res="native": blocks()  # known evidence, drawn by the page's own code
    view = analysis.view(0, "native", vmax=VMAX)
    tile = np.asarray(Image.open(io.BytesIO(base64.b64decode(view["heatmap"].split(",", 1)[1]))))
    assert tile.shape == (side, side, 4) and view["vmax"] == VMAX

    grey = np.full((side, side, 3), 128, np.uint8)
    fig = explorer_figure(grey, blocks(), [], VMAX, res="native", class_name="cat", title="t")
    fig.canvas.draw()
    ax = fig.axes[0]
    for i, j in CENTRES:
        y, x = i * BLOCK + BLOCK // 2, j * BLOCK + BLOCK // 2
        expected = evidence_rgba(VALUES[i, j], VMAX, overlay=True, uint8=True)
        np.testing.assert_array_equal(tile[y, x], expected)  # the page's tile: these very bytes
        # The figure: the same colour at the page's default opacity over the photo.
        rgba = evidence_rgba(VALUES[i, j], VMAX, overlay=True, opacity=OVERLAY_OPACITY)
        blended = 255 * (rgba[3] * rgba[:3]) + (1 - rgba[3]) * 128
        got = pixel(fig, ax, x + 0.5, y + 0.5)
        assert np.abs(got - blended).max() <= 3, (VALUES[i, j], got, blended)
    # The figure's colour bar shows the same colours for the same values.
    bar = next(a for a in fig.axes if a.get_gid() == "colorbar")
    for v in (-1.9, -1.0, -0.3, 0.0, 0.4, 1.2, 1.9):
        expected = evidence_rgba(v, VMAX, uint8=True)[:3].astype(int)
        assert np.abs(pixel(fig, bar, v, 0.5) - expected).max() <= 3, v


def test_paper_figures_use_the_same_colours():
    fig, ax = plot_heatmap(VALUES, limit=VMAX)
    fig.canvas.draw()
    for i, j in CENTRES:
        expected = evidence_rgba(VALUES[i, j], VMAX, uint8=True)[:3].astype(int)
        assert np.abs(pixel(fig, ax, j, i) - expected).max() <= 1, VALUES[i, j]
    # Without a limit: the scale is colour_scale's, the 99th percentile of |evidence|.
    fig, ax = plot_heatmap(VALUES)
    assert ax.images[0].norm.vmax == pytest.approx(colour_scale([VALUES]))


def test_the_page_colour_bar_is_the_same_map(running_server):
    import json
    import urllib.request

    server = running_server()
    with urllib.request.urlopen(server.url + "api/config", timeout=30) as r:
        config = json.loads(r.read())
    assert config["colormap"] == colormap_stops(11)
    cmap = colormaps["RdBu_r"]
    assert config["colormap"][0] == "#" + "".join(f"{round(255 * c):02x}" for c in cmap(0.0)[:3])
