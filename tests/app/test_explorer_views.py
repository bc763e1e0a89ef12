"""What the explorer's page and downloads are built from: the "none of these classes" flag,
one colour scale per image, the sharp photo, the figures and the small JSON."""

import copy
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bagnet.app import Explorer

from .conftest import CLASSES, IMG_SIZE, png_bytes, random_image
from .test_server import call, decode_data_url, normalized, upload


def with_threshold(model, threshold):
    flagged = copy.deepcopy(model)
    flagged.pretrained_cfg["unknown"] = {"method": "max_softmax", "threshold": threshold}
    return flagged


def test_unknown_flag_in_the_api_result_and_the_json(running_server, tiny_model):
    array = random_image(IMG_SIZE, IMG_SIZE, seed=11)
    with torch.no_grad():
        score = float(torch.softmax(tiny_model(normalized(array)[None])[0], 0).max())  # by hand: max softmax

    # No threshold in the model: nothing can be said, and the page is told so.
    plain = running_server()
    summary = upload(plain, array)
    assert summary["unknown"] is None
    assert json.loads(call(plain, "/api/config")[2])["unknown"] is None

    for threshold, flag in ((score + 0.01, True), (score - 0.01, False)):
        model = with_threshold(tiny_model, threshold)
        image = Explorer(model, img_size=IMG_SIZE).explore(Image.fromarray(array))
        assert image.unknown.flag is flag and image.unknown.score == pytest.approx(score, abs=1e-6)
        assert image.explanation([0]).unknown == image.unknown
        server = running_server(model)
        assert json.loads(call(server, "/api/config")[2])["unknown"] == {"method": "max_softmax", "threshold": threshold}
        summary = upload(server, array)
        assert summary["unknown"]["flag"] is flag
        assert summary["unknown"]["message"] == (f"probably none of the {len(CLASSES)} classes this model knows" if flag else "")
        result = json.loads(call(server, f"/api/uploads/{summary['id']}/result.json")[2])
        assert result["unknown"]["flag"] is flag


def test_one_colour_scale_for_every_class_of_an_image(running_server, tiny_model):
    server = running_server()
    array = random_image(IMG_SIZE, IMG_SIZE + 16, seed=12)
    summary = upload(server, array)
    # By hand: the 99th percentile of |native evidence| of the top 3 classes (the padded
    # patch logits of the model).
    q = tiny_model.receptive_field
    p = (q - 1) // 2
    x = normalized(array)
    with torch.no_grad():
        logits = tiny_model(x[None])[0]
        native = tiny_model.patch_logits(F.pad(x[None], (p, p, p, p)))[0]
    top = torch.argsort(logits, descending=True)[:3]
    expected = float(np.percentile(native[top].abs().numpy(), 99))
    assert summary["scale"] == pytest.approx(expected, rel=1e-4)
    views = [json.loads(call(server, f"/api/uploads/{summary['id']}/view?class={c}&res={r}")[2])
             for c in range(len(CLASSES)) for r in ("native", "full")]
    assert {v["vmax"] for v in views} == {summary["scale"]} and {v["scale"] for v in views} == {"image"}
    # The mean the page states is the mean of the map shown.
    assert views[0]["map_mean"] == pytest.approx(float(native[0].mean()), abs=1e-4)

    # A fixed scale (the page's "same scale across images") replaces it, and shows in the colours.
    fixed = json.loads(call(server, f"/api/uploads/{summary['id']}/view?class=0&vmax=1000000")[2])
    assert fixed["vmax"] == 1e6 and fixed["scale"] == "fixed"
    rgba = np.asarray(decode_data_url(fixed["heatmap"]))
    assert rgba[..., 3].max() <= 65  # every value is tiny on a +-1e6 scale: faint (alpha 0.25)
    for bad in ("0", "-1", "nan", "inf", "big"):
        status, _, body = call(server, f"/api/uploads/{summary['id']}/view?class=0&vmax={bad}")
        assert status == 400 and "vmax must be a positive number" in json.loads(body)["error"]


def test_the_photo_is_sharp_and_the_model_sees_its_own_size(running_server):
    server = running_server()
    array = np.kron(random_image(40, 60, seed=13), np.ones((20, 20, 1), np.uint8))  # 800 x 1200
    summary = upload(server, array, name="big.png")
    photo = decode_data_url(summary["image"])
    assert photo.size == (1200, 800) and (summary["width"], summary["height"]) == (72, IMG_SIZE)
    # The same picture: the photo shrunk to the model's size is its input.
    small = np.asarray(photo.resize((72, IMG_SIZE), Image.Resampling.BOX), float)
    big = np.asarray(Image.fromarray(array).resize((72, IMG_SIZE), Image.Resampling.BOX), float)
    assert np.abs(small - big).mean() < 6


def test_figure_downloads_png_at_200_dpi_and_svg_with_colour_bar(running_server, tiny_model):
    server = running_server(with_threshold(tiny_model, 2.0))  # every image flagged
    summary = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=14), name="cat.png")
    base = f"/api/uploads/{summary['id']}/figure"
    status, headers, body = call(server, base + ".png?class=1&res=native")
    assert status == 200 and headers["Content-Type"] == "image/png"
    png = Image.open(io.BytesIO(body))
    assert png.info["dpi"][0] == pytest.approx(200, abs=1)
    status, headers, body = call(server, base + ".svg?class=1&res=full&vmax=3")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"
    assert 'filename="cat-dog-full.svg"' in headers["Content-Disposition"]
    svg = body.decode()
    assert svg.lstrip().startswith("<?xml") and 'id="colorbar"' in svg

    # The figure itself: a colour bar axis with the scale, one numbered box per top patch.
    image = server.explorer.explore(Image.fromarray(random_image(IMG_SIZE, IMG_SIZE, seed=14)), "cat.png")
    fig = image.figure(1, "native")
    ax, bar = fig.axes
    assert bar.get_gid() == "colorbar" and bar.get_xlim() == pytest.approx((-image.scale, image.scale))
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"] and len(ax.patches) == 3
    assert "probably none of the 4 classes" in ax.get_title()


def test_json_is_small_unless_maps_are_asked_for(running_server):
    server = running_server()
    summary = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=15))
    small = json.loads(call(server, f"/api/uploads/{summary['id']}/result.json?res=full")[2])
    full = json.loads(call(server, f"/api/uploads/{summary['id']}/result.json?res=full&maps=1")[2])
    assert "maps" not in small and sorted(full["maps"]) == ["0", "1", "2", "3"]
    assert small["explained"] == full["explained"]
    status, _, body = call(server, f"/api/uploads/{summary['id']}/result.json?maps=yes")
    assert status == 400 and "maps must be 0 or 1" in json.loads(body)["error"]


def test_uploaded_bytes_keep_a_sharp_photo(tiny_model):
    explorer = Explorer(tiny_model, img_size=IMG_SIZE)
    image = explorer.explore(png_bytes(random_image(300, 500, seed=16)), "x.png")
    assert image.photo.size == (500, 300) and image.image.size == (80, IMG_SIZE)


def test_a_sample_says_whether_the_classes_can_name_it(running_server):
    server = running_server()
    status, _, body = call(server, "/api/samples/rocket", b"", "POST")
    assert status == 201
    # CLASSES has "rocket", but not ImageNet's names for that photo (missile, space shuttle, ...).
    assert json.loads(body)["sample_note"] == "sample photo: a rocket on its launch pad, none of the 4 classes this model knows"
    status, _, body = call(server, "/api/uploads", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=1)), "POST")
    assert status == 201 and json.loads(body)["sample_note"] is None


def test_the_downloaded_figure_names_the_models_patch_stride(tiny_model):
    # The caption says which patches average to the logit ("every 8 px"); without the
    # stride it could only say "at the model's own stride".
    image = Explorer(tiny_model, img_size=IMG_SIZE).explore(Image.fromarray(random_image(IMG_SIZE, IMG_SIZE, seed=3)))
    explanation = image.explanation([0])
    assert explanation.patch_stride == tiny_model.patch_stride
    fig, _ = explanation.plot()
    texts = [t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))]
    assert any(f"every {tiny_model.patch_stride} px" in t for t in texts), texts
