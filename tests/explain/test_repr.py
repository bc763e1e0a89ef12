import base64
import io
import re

import pytest
import torch
from PIL import Image

from bagnet.explain import explain

from .conftest import randomized


@pytest.fixture(scope="module")
def result():
    model = randomized("bagnet_tiny", num_classes=4, seed=5)
    model.pretrained_cfg = {**model.pretrained_cfg, "classes": ["cat", "<script>x</script>", "a & b", "dog"]}
    image = torch.rand(3, 48, 56, generator=torch.Generator().manual_seed(0))
    return explain(model, image, classes="top2", k=2)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


def test_repr_png_is_the_figure(result):
    fig, _ = result.plot()
    w, h = fig.get_size_inches() * 100
    assert _png_size(result._repr_png_()) == (round(w), round(h))


def test_repr_html_lists_predictions_escaped_and_inlines_the_figure(result):
    page = result._repr_html_()
    for p in result.predictions:
        assert f"<td>{p.probability:.3f}</td>" in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "a &amp; b" in page
    top = result.patches_for(result.classes[0])[0]
    assert f"box {list(top.box)}" in page and f"evidence {top.score:.3f}" in page
    m = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert m and _png_size(base64.b64decode(m.group(1)))[0] > 100


def test_unknown_flag_is_shown(result):
    from dataclasses import replace

    from bagnet.explain._unknown import UnknownCheck

    flagged = replace(result, unknown=UnknownCheck(True, 0.1, 0.5, "max_softmax", 4, "probably none of the 4 classes"))
    assert "probably none of the 4 classes" in flagged._repr_html_()
    assert "probably none" not in result._repr_html_()


def test_jupyter_display_formatter_picks_them_up(result):
    formatters = pytest.importorskip("IPython.core.formatters")
    data, _ = formatters.DisplayFormatter().format(result)
    assert {"text/html", "image/png"} <= set(data)
