"""The explorer's PNG/SVG downloads keep their titles and labels inside the figure (long
file names, long class names, the "none of these" warning and the certificate's sentence
used to run past both edges and be cut off)."""

import copy
import io

import pytest
from PIL import Image

from bagnet.app import Explorer
from bagnet.app._figure import short_name

from .conftest import IMG_SIZE, random_image

LONG_NAME = "IMG_20240612_183355_holiday_photo_of_the_beach_at_sunset_with_the_whole_family_" + "x" * 60 + ".jpeg"


def texts_inside(fig):
    """Every non-empty text of the figure, with its box, after drawing it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if text.get_text().strip() and text.get_visible():
            out.append((text.get_text(), text.get_window_extent(renderer)))
    return out


@pytest.mark.parametrize("res", ["native", "full"])
@pytest.mark.parametrize("certify", [None, "2%"])
def test_titles_and_labels_lie_inside_the_figure(tiny_model, res, certify):
    model = copy.deepcopy(tiny_model)
    model.pretrained_cfg["unknown"] = {"method": "max_softmax", "threshold": 2.0}  # flag: a line more
    names = ["a cat of a very long and descriptive class name, " * 2, "dog", "tea", "rocket"]
    explorer = Explorer(model, class_names=names, img_size=IMG_SIZE, top_k=3)
    analysis = explorer.explore(random_image(IMG_SIZE, 2 * IMG_SIZE, seed=2), name=LONG_NAME)
    fig = analysis.figure(0, res, certify=certify)
    box = fig.bbox
    found = texts_inside(fig)
    title = fig.axes[0].title.get_text()
    assert any(t == title for t, _ in found)
    assert "probably none of the 4 classes" in title and (certify is None or "certified" in title)
    for text, extent in found:
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, (text, extent)
    # The downloads are this figure, saved whole.
    png = Image.open(io.BytesIO(analysis.figure_png(0, res, certify=certify, dpi=50)))
    assert png.size == (round(box.width / 2), round(box.height / 2))


def test_long_names_are_shortened_in_the_middle():
    assert short_name("photo.jpg") == "photo.jpg"
    short = short_name(LONG_NAME)
    assert len(short) == 60 and short.startswith("IMG_2024") and short.endswith("xxx.jpeg") and "\u2026" in short
