"""The explorer's certificates against adversarial stickers: API, result JSON and the page,
checked against :func:`bagnet.robust.certify` run on the same input here."""

import copy
import json
import re
from urllib.parse import quote

import pytest
import torch

from bagnet.app import Explorer
from bagnet.robust import certify

from .conftest import CLASSES, IMG_SIZE, png_bytes, random_image
from .test_browser import browser, choose_file, open_page, page  # noqa: F401  (fixtures)
from .test_server import call, normalized, upload


def expected(model, array, patch, defense):
    """What the page must say, from ``certify`` on the model input computed here."""
    cert = certify(model, normalized(array)[None], patch_size=patch, defense=defense)
    return cert, int(cert.prediction[0])


def removed_pixels(cert, height, width, q=9, s=8):
    """The union of the q x q squares (stride s) of the removed window's grid locations."""
    (r, c), (wh, ww) = cert.removed[0].tolist(), cert.window
    rows = [y for i in range(r, r + wh) for y in range(s * i, min(height, s * i + q))]
    cols = [x for j in range(c, c + ww) for x in range(s * j, min(width, s * j + q))]
    return [min(cols), min(rows), max(cols) + 1, max(rows) + 1]


def biased(model, cls=2, bias=30.0):
    """A copy of ``model`` whose every patch speaks strongly for ``cls``: certified."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.fc.bias[cls] += bias
    return out.eval()


@pytest.mark.parametrize("defense", ["mask", "clip"])
@pytest.mark.parametrize("patch", ["2%", "11"])
def test_certificate_equals_certify_on_the_same_input(running_server, tiny_model, defense, patch):
    server = running_server()
    array = random_image(IMG_SIZE, 64, seed=3)  # 48 x 64: no resize, so the input is known here
    summary = upload(server, array)
    status, _, body = call(server, f"/api/uploads/{summary['id']}/certificate?patch={quote(patch)}&defense={defense}")
    assert status == 200, body
    got = json.loads(body)
    cert, pred = expected(tiny_model, array, patch, defense)
    assert got["prediction"] == {"index": pred, "name": CLASSES[pred]}
    assert got["certified"] == bool(cert.certified[0]) and got["margin"] == pytest.approx(float(cert.margin[0]), abs=1e-9)
    assert got["patch_px_resized"] == cert.patch_size and got["window"] == list(cert.window)
    sticker = f"{cert.patch_size}x{cert.patch_size} px sticker"
    assert sticker in got["message"] and got["message"].startswith("certified" if got["certified"] else "not certified")
    if defense == "mask":
        assert got["removed_box_resized"] == removed_pixels(cert, IMG_SIZE, 64)
        assert got["removed_box"] == got["removed_box_resized"]  # no resize, no crop
    else:
        assert "removed_box" not in got and "removed_box_resized" not in got
    # The result JSON carries the same certificate.
    status, _, body = call(server, f"/api/uploads/{summary['id']}/result.json?certify={quote(patch)}&defense={defense}")
    assert status == 200 and json.loads(body)["certified"] == got
    status, _, body = call(server, f"/api/uploads/{summary['id']}/result.json")
    assert status == 200 and "certified" not in json.loads(body)


def test_a_certified_prediction_and_its_removed_window(tiny_model):
    model = biased(tiny_model)
    array = random_image(IMG_SIZE, IMG_SIZE, seed=5)
    explored = Explorer(model, img_size=IMG_SIZE).explore(array)
    got = explored.certificate("2%", "mask")
    cert, pred = expected(model, array, "2%", "mask")
    assert bool(cert.certified[0]) and got["certified"] and pred == 2
    # 2% of 48 x 48 is a 7 x 7 sticker (49 >= 46.08 pixels, 6 x 6 = 36 is less).
    assert got["message"] == "certified against any 7x7 px sticker (2% of the image)"
    assert got["removed_box_resized"] == removed_pixels(cert, IMG_SIZE, IMG_SIZE)
    # Pixels asked for get their share of the image said.
    assert explored.certificate("24", "clip")["message"].endswith("24x24 px sticker (25% of the image) could change "
                                                                  "this prediction")


def test_the_downloaded_figure_draws_the_certificate(running_server, tiny_model):
    model = biased(tiny_model)
    array = random_image(IMG_SIZE, IMG_SIZE, seed=5)
    explored = Explorer(model, img_size=IMG_SIZE).explore(array)
    cert, _ = expected(model, array, "2%", "mask")
    x0, y0, x1, y1 = removed_pixels(cert, IMG_SIZE, IMG_SIZE)
    fig = explored.figure(2, certify="2%")
    ax = fig.axes[0]
    dashed = [p for p in ax.patches if p.get_gid() == "removed-window"]
    assert len(dashed) == 1 and dashed[0].get_linestyle() == "--"
    # Drawn over the photo (here the model input itself, so one photo pixel per input pixel).
    assert (dashed[0].get_x(), dashed[0].get_y(), dashed[0].get_width(), dashed[0].get_height()) == pytest.approx(
        (x0, y0, x1 - x0, y1 - y0))
    title = " ".join(ax.get_title().split())  # wrapped to the figure's width
    assert "mask-defended prediction tea: certified" in title
    assert "certified against any 7x7 px sticker (2% of the image)" in title
    # Clip removes nothing; no certificate, no box and no line.
    clip = explored.figure(2, certify="2%", defense="clip").axes[0]
    assert "clip-defended" in clip.get_title() and not [p for p in clip.patches if p.get_gid() == "removed-window"]
    plain = explored.figure(2).axes[0]
    assert "certified" not in plain.get_title() and not [p for p in plain.patches if p.get_gid() == "removed-window"]

    # The server's downloads: the box is in the SVG; a bad size is refused, not drawn.
    server = running_server(model)
    key = upload(server, array)["id"]
    status, _, body = call(server, f"/api/uploads/{key}/figure.svg?class=2&certify=2%25")
    # (the SVG holds each line of the wrapped title as a comment)
    words = " ".join(re.findall(r"<!-- (.*?) -->", body.decode()))
    assert status == 200 and 'id="removed-window' in body.decode() and "certified against any 7x7" in words
    status, _, body = call(server, f"/api/uploads/{key}/figure.png?class=2&certify=2%25&defense=clip")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, _, body = call(server, f"/api/uploads/{key}/figure.png?class=2&certify=abc")
    assert status == 400 and "patch size 'abc' is neither pixels" in json.loads(body)["error"]
    status, _, body = call(server, f"/api/uploads/{key}/figure.png?class=2&defense=clip")
    assert status == 400 and "needs a patch size" in json.loads(body)["error"]


def test_the_page_json_and_figure_compute_one_certificate_once(running_server, tiny_model, monkeypatch):
    from bagnet.robust import RobustBagNet

    calls = []
    certify_evidence = RobustBagNet.certify_evidence

    def counted(self, *args, **kwargs):
        calls.append(self.defense)
        return certify_evidence(self, *args, **kwargs)

    monkeypatch.setattr(RobustBagNet, "certify_evidence", counted)
    server = running_server(biased(tiny_model))
    key = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=5))["id"]
    first = json.loads(call(server, f"/api/uploads/{key}/certificate?patch=2%25")[2])
    assert json.loads(call(server, f"/api/uploads/{key}/result.json?certify=2%25")[2])["certified"] == first
    assert call(server, f"/api/uploads/{key}/figure.svg?class=2&certify=2%25")[0] == 200
    assert calls == ["mask"]
    call(server, f"/api/uploads/{key}/certificate?patch=2%25&defense=clip")
    assert calls == ["mask", "clip"]


def test_certificates_need_no_further_pass(tiny_model, monkeypatch):
    explored = Explorer(tiny_model, img_size=IMG_SIZE).explore(random_image(IMG_SIZE, IMG_SIZE, seed=6))

    def no_pass(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(explored.explorer.model, "forward_features", no_pass)
    monkeypatch.setattr(explored.explorer.model, "patch_logits", no_pass)
    for patch in ("1%", "2%", "3%"):
        for defense in ("mask", "clip"):
            assert explored.certificate(patch, defense)["defense"] == defense


@pytest.mark.parametrize(
    "query, words",
    [
        ("certificate?patch=abc", "patch size 'abc' is neither pixels"),
        ("certificate?patch=0%25", "patch size '0%' is 0% of the image area"),
        ("certificate?patch=200", "a 200 x 200 patch does not fit in a 48 x 48 image"),
        ("certificate?patch=2%25&defense=none", "defense must be 'mask' or 'clip', got 'none'"),
        ("certificate", "give the patch size to certify against"),
        ("certificate?patch=" + "9" * 40, "patch must be a patch size such as 2%"),
        ("result.json?defense=clip", "defense='clip' needs a patch size to certify against (certify=2%"),
        ("result.json?certify=2x", "patch size '2x' is neither pixels"),
    ],
)
def test_bad_certificate_requests_are_refused(running_server, query, words):
    server = running_server()
    key = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=1))["id"]
    status, headers, body = call(server, f"/api/uploads/{key}/{query}")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert words in json.loads(body)["error"]


def test_explored_image_refuses_bad_values(tiny_model):
    explored = Explorer(tiny_model, img_size=IMG_SIZE).explore(random_image(IMG_SIZE, IMG_SIZE, seed=2))
    with pytest.raises(ValueError, match="defense must be 'mask' or 'clip'"):
        explored.certificate("2%", "none")
    with pytest.raises(ValueError, match="does not fit"):
        explored.certificate("49")


def test_page_says_whether_certified_and_outlines_the_removed_window(page, running_server, tiny_model):  # noqa: F811
    model = biased(tiny_model)
    server = running_server(model)
    open_page(page, server)
    array = random_image(IMG_SIZE, IMG_SIZE, seed=5)
    choose_file(page, "sticker.png", png_bytes(array))
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#certificate").is_hidden() and page.locator("#removed rect").count() == 0

    page.select_option("#certify-patch", "2%")
    page.wait_for_selector("#certificate[data-certified]")
    text = page.inner_text("#certificate")
    assert "mask-defended prediction tea: certified against any 7x7 px sticker (2% of the image)" in text
    cert, _ = expected(model, array, "2%", "mask")
    x0, y0, x1, y1 = removed_pixels(cert, IMG_SIZE, IMG_SIZE)
    rect = page.locator("#removed rect")
    assert rect.count() == 1
    assert [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")] == [x0, y0, x1 - x0, y1 - y0]
    with page.expect_download() as download:
        page.click("#download-json")
    assert json.loads(download.value.path().read_text())["certified"]["removed_box_resized"] == [x0, y0, x1, y1]
    # The figure downloads draw the same certificate.
    for link in ("#download-png", "#download-svg"):
        assert "certify=2%25&defense=mask" in page.get_attribute(link, "href")
    with page.expect_download() as download:
        page.click("#download-svg")
    assert 'id="removed-window' in download.value.path().read_text()

    # Clip removes no window; off hides the line.
    page.select_option("#certify-defense", "clip")
    page.wait_for_function("() => document.querySelector('#certificate').textContent.includes('clip-defended')")
    assert page.locator("#removed rect").count() == 0
    page.select_option("#certify-patch", "")
    page.wait_for_selector("#certificate", state="hidden")
    assert page.locator("#error").is_hidden()

    # An uncertified prediction says so.
    server2 = running_server()
    open_page(page, server2)
    choose_file(page, "plain.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=1)))
    page.wait_for_selector("#heatmap[data-class]")
    page.select_option("#certify-patch", "3%")
    page.wait_for_selector("#certificate[data-certified]")
    plain, _ = expected(tiny_model, random_image(IMG_SIZE, IMG_SIZE, seed=1), "3%", "mask")
    words = "certified against any" if bool(plain.certified[0]) else "not certified: a 9x9 px sticker (3% of the image)"
    assert words in page.inner_text("#certificate")
