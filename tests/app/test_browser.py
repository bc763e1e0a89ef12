"""The `bagnet serve` page in a real headless browser (Debian's chromium, driven by playwright).

Without chromium (``/usr/bin/chromium``, or the path in ``BAGNET_CHROMIUM``) these tests
are skipped with a reason that says how to install it, so the README's test command passes
on a fresh machine; in CI (``CI=true``, which ``.ci/run`` sets after installing chromium)
they fail instead, so a broken install cannot hide them.
"""

import copy
import io
import json
import os
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.app import sample_image

from .conftest import CLASSES, IMG_SIZE, png_bytes, random_image
from .test_server import bomb_header, normalized

CHROMIUM = os.environ.get("BAGNET_CHROMIUM", "/usr/bin/chromium")
INSTALL = "install Debian's chromium (sudo apt-get install -y chromium), as .ci/run does"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


def in_ci(env=os.environ) -> bool:
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_browser(path: str = CHROMIUM, env=os.environ) -> None:
    """Skip (outside CI) or fail (in CI) unless chromium and playwright are there."""
    problem = None
    if not os.access(path, os.X_OK):
        problem = f"{path} is missing: {INSTALL}"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing: pip install -e '.[dev]'"
    if problem is None:
        return
    if in_ci(env):
        pytest.fail(f"CI=true and {problem}")
    pytest.skip(f"browser tests skipped: {problem}")


def test_missing_chromium_skips_with_how_to_install_and_fails_in_ci(tmp_path):
    missing = str(tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception, match=r"no-chromium is missing: install Debian's chromium \(sudo apt"):
        require_browser(missing, env={})
    with pytest.raises(pytest.skip.Exception):
        require_browser(missing, env={"CI": "false"})
    with pytest.raises(pytest.fail.Exception, match="CI=true and .*no-chromium is missing"):
        require_browser(missing, env={"CI": "true"})


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 760}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def open_page(page, server):
    page.goto(server.url)
    page.wait_for_selector("body[data-ready]")


def choose_file(page, name, data, mime="image/png"):
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_upload_switch_class_and_resolution(page, running_server, tiny_model, tmp_path):
    server = running_server()
    open_page(page, server)
    array = random_image(IMG_SIZE, 64, seed=7)
    choose_file(page, "photo.png", png_bytes(array))
    page.wait_for_selector("#heatmap[data-class]")

    with torch.no_grad():
        ranking = torch.argsort(tiny_model(normalized(array)[None])[0], descending=True).tolist()
    assert page.get_attribute("#heatmap", "data-class") == str(ranking[0])
    # Real times: the upload's analysis, then "from cache" for maps computed before.
    assert page.inner_text("#status").startswith("image analysed in ")
    assert page.locator("#full-note").is_hidden()
    names = page.locator("#classes .name").all_inner_texts()
    assert names == [CLASSES[c] for c in ranking]
    assert page.locator("#patches rect").count() == 3
    first = page.get_attribute("#heatmap", "src")

    # Click another class: its own heatmap replaces the first one.
    other = ranking[2]
    page.click(f"#classes button[data-class='{other}']")
    page.wait_for_selector(f"#heatmap[data-class='{other}']")
    second = page.get_attribute("#heatmap", "src")
    assert second.startswith("data:image/png;base64,") and second != first
    assert page.get_attribute(f"#classes button[data-class='{other}']", "aria-pressed") == "true"
    assert page.inner_text("#map-class").startswith(f"evidence for {CLASSES[other]} (")
    assert page.inner_text("#status") == "map from cache"  # native maps come with the upload

    # Full resolution: a finer map of the same class, computed now; the page says the
    # model is not shift-stable next to it.
    page.check("#res-full")
    page.wait_for_selector("#heatmap[data-res='full']")
    full = page.get_attribute("#heatmap", "src")
    assert full != second and page.get_attribute("#heatmap", "data-class") == str(other)
    status = page.inner_text("#status")
    assert status.startswith("map computed in ") and status.endswith(" s") and status != "map computed in 0.00 s"
    assert page.locator("#full-note").is_visible() and "not shift-stable" in page.inner_text("#full-note")

    # Downloads: the figure as a PNG and the results as JSON, for what is on screen.
    with page.expect_download() as download:
        page.click("#download-png")
    figure = Image.open(download.value.path())
    assert figure.format == "PNG" and download.value.suggested_filename == f"photo-{CLASSES[other]}-full.png"
    with page.expect_download() as download:
        page.click("#download-json")
    result = json.loads(download.value.path().read_text())
    assert result["resolution"] == "full" and result["predictions"][0]["index"] == ranking[0]
    assert download.value.suggested_filename == "photo-full-results.json"
    with page.expect_download() as download:
        page.click("#download-maps")
    assert download.value.suggested_filename == "photo-full-results-with-maps.json"  # not the same name
    assert "maps" in json.loads(download.value.path().read_text())

    # Back to the first class at native resolution: the page's cache gives the same image.
    page.check("#res-native")
    page.click(f"#classes button[data-class='{ranking[0]}']")
    page.wait_for_selector(f"#heatmap[data-class='{ranking[0]}'][data-res='native']")
    assert page.get_attribute("#heatmap", "src") == first
    assert page.inner_text("#status") == "map from cache"
    assert page.locator("#error").is_hidden()
    assert page.evaluate("() => fetch('/favicon.ico').then(r => r.status)") == 200

    page.screenshot(path=str(tmp_path / "page.png"))
    assert Image.open(tmp_path / "page.png").size == (1100, 760)


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("notes.png", b"these are my notes, not a picture", "notes.png: not an image file"),
        ("bomb.png", bomb_header(7_000, 7_000), "7000x7000 pixels, more than the limit"),
    ],
    ids=["not-an-image", "bomb"],
)
def test_bad_upload_shows_the_error(page, running_server, name, data, words):
    server = running_server()
    open_page(page, server)
    choose_file(page, name, data)
    page.wait_for_selector("#error:not([hidden])")
    assert words in page.inner_text("#error")
    assert page.locator("#result").is_hidden()

    # A good upload afterwards clears the message.
    choose_file(page, "ok.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=1)))
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#error").is_hidden()


def test_oversized_upload_shows_the_limit(page, running_server):
    server = running_server(max_upload_bytes=20_000)
    open_page(page, server)
    assert page.inner_text("#limit") == "up to 20 kB"
    choose_file(page, "big.png", png_bytes(random_image(120, 120, seed=0)))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").endswith("big.png is 42 kB, over the upload limit of 20 kB")


def test_sample_photo_after_an_upload(page, running_server):
    server = running_server()
    open_page(page, server)
    choose_file(page, "first.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=4)))
    page.wait_for_selector("#heatmap[data-class]")
    first_photo, first_heat = page.get_attribute("#photo", "src"), page.get_attribute("#heatmap", "src")

    page.click("#samples button[data-sample='coffee']")
    page.wait_for_function("old => document.querySelector('#photo').src !== old", arg=first_photo)
    page.wait_for_selector("#heatmap[data-class]")
    assert page.get_attribute("#heatmap", "src") != first_heat
    assert page.locator("#classes li").count() == len(CLASSES)
    photo = page.get_attribute("#photo", "src")
    img = Image.open(io.BytesIO(__import__("base64").b64decode(photo.split(",", 1)[1])))
    assert img.size == sample_image("coffee").size and np.asarray(img).std() > 10  # sharp: the photo's own pixels
    assert page.inner_text("#shown") == "Showing the sample photo coffee (from scikit-image)"
    assert page.get_attribute("#samples button[data-sample='coffee']", "aria-pressed") == "true"
    page.click("#samples button[data-sample=golf_ball]")
    page.wait_for_function("() => document.querySelector('#shown').textContent.includes('golf_ball')")
    assert page.inner_text("#shown") == "Showing the sample drawing golf_ball (drawn by bagnet)"


def test_any_class_from_the_list_of_all_classes(page, running_server):
    """Models with more classes than the ranked list offer every class in a menu."""
    torch.manual_seed(3)
    model = bagnet.create_model("bagnet_tiny", num_classes=12)
    model.pretrained_cfg["classes"] = [f"thing {i}" for i in range(12)]
    server = running_server(model)
    open_page(page, server)
    choose_file(page, "x.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=2)))
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#classes li").count() == 10 and page.locator("#other-class").is_visible()
    shown = {int(v) for v in page.locator("#classes button").evaluate_all("bs => bs.map(b => b.dataset.class)")}
    hidden = next(c for c in range(12) if c not in shown)
    page.select_option("#class-select", str(hidden))
    page.wait_for_selector(f"#heatmap[data-class='{hidden}']")
    assert page.inner_text("#map-class").startswith(f"evidence for thing {hidden} (")


def api_view(server, upload_id, cls, res="native"):
    with urllib.request.urlopen(f"{server.url}api/uploads/{upload_id}/view?class={cls}&res={res}", timeout=60) as r:
        return json.loads(r.read())


def shown_id(page):
    return page.evaluate("() => current.id")


def test_colour_bar_with_one_scale_per_image_and_a_same_scale_option(page, running_server):
    server = running_server()
    open_page(page, server)
    choose_file(page, "a.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=21)))
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#colorbar .ramp").is_visible()
    ramp = page.eval_on_selector("#colorbar .ramp", "el => getComputedStyle(el).backgroundImage")
    assert ramp.startswith("linear-gradient") and ramp.count("rgb(") == 11
    vmax = api_view(server, shown_id(page), 0)["vmax"]
    bar = page.inner_text("#bar-max")
    assert bar.startswith("+") and float(bar[1:]) == pytest.approx(vmax, rel=2e-3)
    assert "the same scale for every class of this image" in page.inner_text("#scale-note")
    assert "is the mean of the model's own patch values" in page.inner_text("#mean-note")
    for cls in (1, 3):  # the scale stays while the class changes
        page.click(f"#classes button[data-class='{cls}']")
        page.wait_for_selector(f"#heatmap[data-class='{cls}']")
        assert page.inner_text("#bar-max") == bar

    # "Same scale across images": the next image keeps this one's scale.
    page.check("#same-scale")
    page.wait_for_function("() => document.querySelector('#scale-note').textContent.includes('kept for every image')")
    choose_file(page, "b.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=22) // 4))
    page.wait_for_function("() => document.querySelector('#shown-name')?.textContent === 'b.png'")
    page.wait_for_selector("#heatmap[data-class]")
    assert page.inner_text("#bar-max") == bar and "taken from a.png" in page.inner_text("#scale-note")
    assert api_view(server, shown_id(page), 0)["vmax"] != pytest.approx(vmax, rel=2e-3)  # its own would differ
    page.uncheck("#same-scale")
    page.wait_for_function("old => document.querySelector('#bar-max').textContent !== old", arg=bar)


def test_progress_is_shown_while_an_image_is_analysed(page, running_server):
    server = running_server()
    open_page(page, server)
    held = []
    page.route("**/api/samples/chelsea", lambda route: held.append(route))
    page.click("#samples button[data-sample='chelsea']")
    page.wait_for_selector("#progress:not([hidden])")
    page.wait_for_function("() => true")  # lets playwright hand the held request to the handler
    while not held:
        page.wait_for_timeout(50)
    assert page.inner_text("#progress-text").startswith("analysing the sample photo chelsea…")
    assert page.get_attribute("body", "data-busy") == "true" and page.locator("#result").is_hidden()
    held[0].continue_()
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#progress").is_hidden()
    assert page.inner_text("#shown") == "Showing the sample photo chelsea (from scikit-image)"


def test_unknown_flag_on_a_sample_and_the_classes_listed(page, running_server, tiny_model):
    flagged = copy.deepcopy(tiny_model)
    flagged.pretrained_cfg["unknown"] = {"method": "max_softmax", "threshold": 2.0}  # above any probability
    server = running_server(flagged)
    open_page(page, server)
    assert page.inner_text("#known") == "This model knows 4 classes: cat, dog, tea, rocket."
    assert "are flagged (max_softmax below 2.00" in page.inner_text("#unknown-setting")
    page.click("#samples button[data-sample='astronaut']")
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#unknown.flag").is_visible()
    # What the sample shows is known (none of the classes), and the model's check flags it too.
    fact, check = page.inner_text("#unknown").split("\n", 1)
    assert fact == "⚠ This sample photo: an astronaut in an orange suit, none of the 4 classes this model knows."
    assert check.strip().startswith("⚠ Probably none of the 4 classes this model knows")

    # A model without a threshold says that it cannot tell, on the page and per image.
    plain = running_server()
    open_page(page, plain)
    assert "No threshold is calibrated for this model" in page.inner_text("#unknown-setting")
    page.click("#samples button[data-sample='astronaut']")
    page.wait_for_selector("#heatmap[data-class]")
    assert page.get_attribute("#unknown", "data-flag") == "unchecked"
    assert page.locator("#sample-note").is_visible()  # the known fact stays visible without a threshold
    assert "no threshold is calibrated for this model" in page.inner_text("#unknown")


def test_phone_layout_keeps_the_classes_next_to_the_map(browser, running_server):
    server = running_server()
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_page(page, server)
        page.click("#samples button[data-sample='chelsea']")
        page.wait_for_selector("#heatmap[data-class]")
        page.locator("#stage").scroll_into_view_if_needed()
        page.evaluate("() => document.querySelector('#stage').scrollIntoView({block: 'start'})")
        stage = page.locator("#stage").bounding_box()
        assert stage["y"] >= 0 and stage["y"] + stage["height"] <= 844 and stage["width"] <= 390
        for button in page.locator("#classes button").all():  # every class, with the map still in view
            box = button.bounding_box()
            assert 0 <= box["y"] and box["y"] + box["height"] <= 844, box
        assert page.locator("#map-class").is_visible() and page.inner_text("#map-class").startswith("evidence for ")
        sizes = page.eval_on_selector_all("#labels span", "els => els.map(e => parseFloat(getComputedStyle(e).fontSize))")
        assert len(sizes) == 3 and min(sizes) >= 12
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        page.screenshot(path="/tmp/explorer-phone.png")
    finally:
        context.close()


def in_viewport(page, selector):
    return page.evaluate("""sel => { const r = document.querySelector(sel).getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""", selector)


def wait_in_viewport(page, selector):
    page.wait_for_function("""sel => { const r = document.querySelector(sel).getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""", arg=selector, timeout=10_000)


def test_phone_brings_the_prediction_and_the_certificate_into_view(browser, running_server):
    """On a phone the result starts below the upload control, and the certificate's line
    used to appear far above its control: after an upload the top prediction is on screen,
    after choosing a sticker size the certificate is."""
    server = running_server()
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_page(page, server)
        # A tall photo: its map alone fills the screen, so the classes start below the fold.
        choose_file(page, "tall.png", png_bytes(random_image(2 * IMG_SIZE, IMG_SIZE, seed=8)))
        page.wait_for_selector("#heatmap[data-class]")
        assert page.locator("#stage").bounding_box()["height"] > 600
        wait_in_viewport(page, "#classes li:first-child button")
        top = page.locator("#classes li:first-child button")
        assert top.get_attribute("aria-pressed") == "true" and in_viewport(page, "#shown") is not None

        # The user scrolls down to the certify control and picks a size.
        page.evaluate("() => document.querySelector('#certify-patch').scrollIntoView({block: 'end'})")
        page.select_option("#certify-patch", "2%")
        page.wait_for_selector("#certificate[data-certified]")
        wait_in_viewport(page, "#certificate")
        assert in_viewport(page, "#certify-patch") or in_viewport(page, "#certificate")
        page.screenshot(path="/tmp/explorer-phone-certificate.png")
    finally:
        context.close()


def test_an_error_hides_the_previous_result(page, running_server):
    server = running_server()
    open_page(page, server)
    choose_file(page, "good.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=23)))
    page.wait_for_selector("#heatmap[data-class]")
    choose_file(page, "notes.png", b"not a picture")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#result").is_hidden() and "notes.png" in page.inner_text("#error")


def test_many_classes_are_listed_behind_one_click(page, running_server):
    torch.manual_seed(4)
    model = bagnet.create_model("bagnet_tiny", num_classes=25)
    model.pretrained_cfg["classes"] = [f"thing {i}" for i in range(25)]
    open_page(page, running_server(model))
    assert page.inner_text("#known summary") == "This model knows 25 classes (show them)"
    page.click("#known summary")
    assert page.inner_text("#known .names") == ", ".join(f"thing {i}" for i in range(25))


def test_a_failed_map_leaves_the_shown_class_marked(page, running_server):
    server = running_server()
    open_page(page, server)
    choose_file(page, "x.png", png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=24)))
    page.wait_for_selector("#heatmap[data-class]")
    shown = page.get_attribute("#heatmap", "data-class")
    other = next(c for c in range(len(CLASSES)) if str(c) != shown)
    page.route(f"**/view?class={other}&*", lambda route: route.fulfill(
        status=500, content_type="application/json", body=json.dumps({"error": "internal error (test)"})))
    page.click(f"#classes button[data-class='{other}']")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "internal error (test)"
    assert page.get_attribute(f"#classes button[data-class='{shown}']", "aria-pressed") == "true"
    assert page.get_attribute(f"#classes button[data-class='{other}']", "aria-pressed") == "false"
    assert page.get_attribute("#heatmap", "data-class") == shown and page.locator("#progress").is_hidden()
