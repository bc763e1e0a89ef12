"""PatchCleanser's verdict in the explorer (``bagnet serve --cleanser-model``): API, result
JSON and the page, checked against :class:`bagnet.robust.PatchCleanser` run on the same input
here, and against a classifier whose every answer is known (case II by construction)."""

import json
import sys
import threading
import time
from urllib.parse import quote

import pytest
import torch
from torch import nn

import bagnet
from bagnet.app import Explorer
from bagnet.cli.main import main
from bagnet.robust import PatchCleanser, mask_set

from .conftest import CLASSES, IMG_SIZE, random_image
from .test_browser import browser, open_page, page  # noqa: F401  (fixtures)
from .test_server import call, normalized, upload

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class TinyCNN(nn.Module):
    """A small torchvision-like classifier (convolutions, pooling, a linear head): any model,
    not a BagNet."""

    def __init__(self, classes=CLASSES, seed=0, mean=MEAN, std=STD):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, len(classes))
        with torch.no_grad():
            self.fc.weight.normal_(0, 3.0)
        self.model_name = "tiny_cnn"
        self.pretrained_cfg = {"classes": list(classes), "mean": list(mean), "std": list(std)}
        self.eval()

    def forward(self, x):
        return self.fc(self.features(x).amax((2, 3)))


class Spot(nn.Module):
    """Says "dog" (1) exactly when the 4 x 4 px spot at rows and columns 20..23 is masked (all
    zero in the normalized input, PatchCleanser's mean fill), else "cat" (0)."""

    def __init__(self):
        super().__init__()
        self.model_name = "spot"
        self.pretrained_cfg = {"classes": list(CLASSES)}

    def forward(self, x):
        masked = (x[:, :, 20:24, 20:24].abs().amax((1, 2, 3)) == 0).float()
        return torch.stack([torch.full_like(masked, 5.0), 10 * masked, torch.zeros_like(masked),
                            torch.zeros_like(masked)], 1)


class Slow(TinyCNN):
    """TinyCNN taking ``delay`` seconds a pass (a big model on a busy CPU), counting its passes."""

    def __init__(self, delay):
        super().__init__()
        self.delay, self.passes = delay, 0

    def forward(self, x):
        self.passes += 1
        time.sleep(self.delay)
        return super().forward(x)


def direct(model, x, patch):
    """PatchCleanser's certificate, decision and two-mask predictions, computed here."""
    defence = PatchCleanser(model, patch, 6)
    return defence.certify(x[None]), defence.predict(x[None]), defence.prediction_maps(x[None])[0]


def check_verdict(got, model, x, patch):
    cert, decision, pairs = direct(model, x, patch)
    pred = int(cert.prediction[0])
    assert got["prediction"] == {"index": pred, "name": CLASSES[pred]}
    assert got["certified"] == bool(cert.certified[0])
    assert got["prediction"]["index"] == int(decision.prediction[0]) and got["case"] == int(decision.case[0])
    assert got["one_mask"] == decision.first_round[0].tolist()
    assert got["two_mask"]["predictions"] == pairs.tolist()
    n = len(got["one_mask"])
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    assert got["two_mask"]["agree"] == int(((pairs == pred) & upper).sum()) and got["two_mask"]["pairs"] == n * (n - 1) // 2
    assert got["disagreeing_masks"] == [i for i, c in enumerate(got["one_mask"]) if c != pred]
    masks = mask_set(tuple(x.shape[-2:]), patch, 6)
    (mh, mw) = masks.mask_size
    assert got["masks"]["boxes_resized"] == [[c, r, c + mw, r + mh] for r, c in masks.corners]
    assert got["masks"]["count"] == len(masks) and got["passes"] == masks.certification_passes + 1
    with torch.no_grad():
        plain = int(model(x[None])[0].argmax())
    assert got["undefended"] == {"index": plain, "name": CLASSES[plain]}
    return cert


@pytest.mark.parametrize("patch", ["2%", "11"])
def test_verdict_equals_patchcleanser_on_the_same_input(running_server, patch):
    reference = TinyCNN()
    server = running_server(cleanser_model=reference)
    array = random_image(IMG_SIZE, 64, seed=3)  # 48 x 64: no resize, so the input is known here
    key = upload(server, array)["id"]
    status, _, body = call(server, f"/api/uploads/{key}/cleanser?patch={quote(patch)}")
    assert status == 200, body
    got = json.loads(body)
    cert = check_verdict(got, reference, normalized(array), patch)
    assert got["model"] == "tiny_cnn" and got["role"] == "reference" and got["patch_px_resized"] == cert.patch_size
    assert got["masks"]["boxes"] == got["masks"]["boxes_resized"]  # no resize, no crop: the same pixels
    sticker = f"{cert.patch_size}x{cert.patch_size} px sticker"
    assert sticker in got["message"] and got["message"].startswith("certified" if got["certified"] else "not certified")
    # Computed once: the progress query and the result JSON give the same verdict.
    status, _, body = call(server, f"/api/uploads/{key}/cleanser?patch={quote(patch)}&wait=0")
    assert status == 200 and json.loads(body) == got
    status, _, body = call(server, f"/api/uploads/{key}/result.json?certify={quote(patch)}")
    assert status == 200 and json.loads(body)["cleanser"] == got
    status, _, body = call(server, f"/api/uploads/{key}/result.json")
    assert status == 200 and "cleanser" not in json.loads(body)
    config = server.config()["cleanser"]
    assert config["model"] == "tiny_cnn" and config["classes_matched"] == "by class name" and config["same_input"]


def test_a_torchvision_resnet_as_reference(tiny_model):
    resnet = bagnet.create_model("resnet18", num_classes=len(CLASSES))
    with torch.no_grad():  # a strong head, so that masks change its answer
        resnet.fc.weight.normal_(0, 1.0)
    explorer = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=resnet)
    # torchvision's head carries no names: in order, and said so
    assert explorer.cleanser_model.classes_matched.startswith("in output order (resnet18 carries no class names")
    array = random_image(IMG_SIZE, IMG_SIZE, seed=4)
    got = explorer.explore(array).cleanser("3%")
    check_verdict(got, resnet.eval(), normalized(array), "3%")
    assert got["model"] == "resnet18"


def test_case_two_a_disagreeing_mask_recovers(tiny_model):
    """Only the masks that cover the spot say "dog", and so does every pair with one of them:
    the paper's case II, by construction."""
    explored = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=Spot()).explore(
        random_image(IMG_SIZE, IMG_SIZE, seed=5))
    got = explored.cleanser("2%")
    masks = mask_set((IMG_SIZE, IMG_SIZE), "2%", 6)
    covering = [i for i, (r, c) in enumerate(masks.corners)
                if r <= 20 and 24 <= r + masks.mask_size[0] and c <= 20 and 24 <= c + masks.mask_size[1]]
    assert len(covering) == 1  # a 7 px sticker: 13 px masks every 7 px; one holds rows and columns 20..23
    (r0,) = covering
    assert got["case"] == 2 and got["case_name"] == "a disagreeing mask recovered" and got["recovered_by"] == r0
    assert got["prediction"] == {"index": 1, "name": "dog"} and got["undefended"] == {"index": 0, "name": "cat"}
    assert got["one_mask"] == [1 if i == r0 else 0 for i in range(36)]
    assert got["disagreeing_masks"] == [i for i in range(36) if i != r0]
    assert not got["certified"] and got["two_mask"]["agree"] == 35  # the pairs with mask r0
    x0, y0, x1, y1 = got["masks"]["boxes_resized"][r0]
    assert x0 <= 20 and y0 <= 20 and x1 >= 24 and y1 >= 24
    assert got["message"] == ("not certified against a 7x7 px sticker (2% of the image): 1 of 36 one-mask and 35 of "
                              "630 two-mask predictions are dog")
    check_verdict(got, Spot(), explored._x, "2%")


def test_the_reference_sees_the_bagnets_pixels(tiny_model):
    array = random_image(IMG_SIZE, 64, seed=6)
    same = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=TinyCNN())
    explored = same.explore(array)
    cm = same.cleanser_model
    assert cm.same_input and cm.input(explored._x, explored.display) is explored._x
    assert torch.equal(cm.preprocessing.normalize(explored.display), explored._x)  # bit for bit
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    other = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=TinyCNN(mean=mean, std=std))
    explored = other.explore(array)
    cm = other.cleanser_model
    own = (torch.from_numpy(array).permute(2, 0, 1) / 255 - 0.5) / 0.25
    assert not cm.same_input and torch.allclose(cm.input(explored._x, explored.display), own, atol=1e-6)
    assert "normalized with mean [0.5, 0.5, 0.5]" in cm.to_dict()["preprocessing"]
    check_verdict(explored.cleanser("2%"), TinyCNN(mean=mean, std=std), cm.input(explored._x, explored.display), "2%")


def test_classes_are_matched_by_name_or_refused(tiny_model):
    # The same classes in another order: matched by name, its outputs put in the explorer's order.
    shuffled = TinyCNN(classes=CLASSES[::-1])
    with torch.no_grad():
        shuffled.fc.weight.copy_(TinyCNN().fc.weight.flip(0))
        shuffled.fc.bias.copy_(TinyCNN().fc.bias.flip(0))
    array = random_image(IMG_SIZE, IMG_SIZE, seed=7)
    got = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=shuffled).explore(array).cleanser("2%")
    want = Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=TinyCNN()).explore(array).cleanser("2%")
    assert {k: v for k, v in got.items() if k != "ms"} == {k: v for k, v in want.items() if k != "ms"}
    for reference, words in [
        (TinyCNN(classes=("cat", "dog", "tea", "car")), "its classes (cat, dog, tea, ...) lack rocket"),
        (TinyCNN(classes=(*CLASSES, "car")), "it has 5 outputs, 1 more"),
        (TinyCNN(classes=CLASSES[:3]), "lack rocket"),
    ]:
        with pytest.raises(ValueError, match="must have the 4 classes of bagnet_tiny") as e:
            Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=reference)
        assert words in str(e.value) and "\n" not in str(e.value)
    nameless = TinyCNN(classes=("a", "b", "c", "d", "e"))
    nameless.pretrained_cfg = {}
    with pytest.raises(ValueError, match="it has 5 outputs, 1 more and no class names"):
        Explorer(tiny_model, img_size=IMG_SIZE, cleanser_model=nameless)


def test_serve_refuses_a_cleanser_model_with_other_classes(tiny_model_file, tmp_path, capsys):
    other = bagnet.load_model(tiny_model_file)
    path = tmp_path / "other.pt"
    bagnet.save_model_file(path, other, {"classes": ["cat", "dog", "tea", "car"]})
    assert main(["serve", "--weights", str(tiny_model_file), "--port", "0", "--cleanser-model", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--cleanser-model {path}: the cleanser model bagnet_tiny must have" in err
    assert "lack rocket" in err
    assert main(["serve", "--weights", str(tiny_model_file), "--cleanser-model", "resnet18@nothing-such"]) == 1
    assert capsys.readouterr().err.startswith("bagnet serve: error: --cleanser-model resnet18@nothing-such: ")
    assert main(["serve", "--weights", str(tiny_model_file), "--cleanser-model", str(path), "--cleanser-masks",
                 "0"]) == 1
    assert "--cleanser-masks must lie in 1..32" in capsys.readouterr().err
    # without a cleanser model there is no PatchCleanser for the masks to set
    assert main(["serve", "--weights", str(tiny_model_file), "--cleanser-masks", "3"]) == 1
    assert "--cleanser-masks sets the masks of --cleanser-model's PatchCleanser" in capsys.readouterr().err


def test_serve_command_loads_a_random_resnet_with_the_models_classes(tiny_model_file):
    import os
    import subprocess
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "bagnet", "serve", "--weights", str(tiny_model_file), "--port", "0", "--device", "cpu",
         "--cleanser-model", "resnet18@random"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert " on http" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        assert "PatchCleanser verdicts of resnet18 (6x6 masks, 667 passes" in proc.stdout.readline()
        with urllib.request.urlopen(url + "api/config", timeout=30) as r:
            config = json.loads(r.read())["cleanser"]
        assert config["model"] == "resnet18" and config["same_input"] and config["passes"] == 667
        assert config["classes_matched"].startswith("in output order")
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_without_a_reference_the_endpoint_says_so(running_server, tiny_model):
    server = running_server()
    assert server.config()["cleanser"] is None
    array = random_image(IMG_SIZE, IMG_SIZE, seed=8)
    key = upload(server, array)["id"]
    for query in ("patch=2%25", "patch=2%25&wait=0"):
        status, headers, body = call(server, f"/api/uploads/{key}/cleanser?{query}")
        assert status == 404 and headers["Content-Type"] == "application/json"
        assert "no PatchCleanser reference model" in json.loads(body)["error"]
        assert "bagnet serve --cleanser-model SPEC" in json.loads(body)["error"]
    status, _, body = call(server, f"/api/uploads/{key}/result.json?certify=2%25")
    assert status == 200 and "cleanser" not in json.loads(body)
    # The BagNet itself can always be defended by PatchCleanser.
    status, _, body = call(server, f"/api/uploads/{key}/cleanser?patch=2%25&model=bagnet")
    assert status == 200
    got = json.loads(body)
    assert got["role"] == "bagnet" and got["model"] == "bagnet_tiny"
    check_verdict(got, tiny_model, normalized(array), "2%")


@pytest.mark.parametrize(
    "query, words",
    [
        ("cleanser?patch=abc", "patch size 'abc' is neither pixels"),
        ("cleanser?patch=200", "a 200 x 200 patch does not fit in a 48 x 48 image"),
        ("cleanser?patch=200&wait=0", "a 200 x 200 patch does not fit in a 48 x 48 image"),
        ("cleanser", "give the patch size to certify against, e.g. patch=2%"),
        ("cleanser?patch=2%25&model=other", "model must be 'reference' (the --cleanser-model) or 'bagnet'"),
        ("cleanser?patch=2%25&wait=2", "wait must be 0 or 1"),
    ],
)
def test_bad_cleanser_requests_are_refused(running_server, query, words):
    server = running_server(cleanser_model=TinyCNN())
    key = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=1))["id"]
    status, headers, body = call(server, f"/api/uploads/{key}/{query}")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert words in json.loads(body)["error"]


def test_verdicts_do_not_block_other_users(running_server):
    """A slow verdict takes the model slot one pass at a time: uploads go in between; the same
    verdict asked twice is computed once; its progress is reported; beyond the bound on verdict
    requests the server answers 503 instead of tying up its working slots."""
    slow = Slow(delay=0.05)
    server = running_server(cleanser_model=slow, max_cleanser_requests=1)
    key = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=9))["id"]
    answers = []

    def ask():
        answers.append(call(server, f"/api/uploads/{key}/cleanser?patch=2%25"))

    clients = [threading.Thread(target=ask) for _ in range(2)]
    clients[0].start()
    deadline = time.monotonic() + 30
    while slow.passes < 20 and time.monotonic() < deadline:  # the verdict is under way
        time.sleep(0.02)
    clients[1].start()  # the same verdict: waits for the first
    status, _, body = call(server, f"/api/uploads/{key}/cleanser?patch=2%25&wait=0")
    progress = json.loads(body)
    assert status == 202 and progress["state"] == "computing" and 0 < progress["done"] < progress["total"] == 667
    other = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=10))["id"]
    status, headers, body = call(server, f"/api/uploads/{other}/cleanser?patch=3%25")
    assert status == 503 and headers["Retry-After"] == "5" and "try again" in json.loads(body)["error"]
    start = time.perf_counter()
    upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=11))  # another user: answered meanwhile
    assert time.perf_counter() - start < 2.0
    assert slow.passes < 600  # ... long before the verdict is done
    for c in clients:
        c.join(timeout=120)
    assert [a[0] for a in answers] == [200, 200] and answers[0][2] == answers[1][2]
    # 1 shape probe, 1 undefended pass, 667 masked images 16 at a time; the upload's pass is the BagNet's
    assert slow.passes == 1 + 1 + -(-666 // 16)


def test_page_shows_the_patchcleanser_panel(page, running_server):  # noqa: F811
    reference = TinyCNN()
    server = running_server(cleanser_model=reference)
    open_page(page, server)
    name = server.config()["samples"][0]
    page.click(f"#samples button[data-sample='{name}']")
    page.wait_for_selector("#heatmap[data-class]")
    assert page.locator("#cleanser").is_hidden()
    page.select_option("#certify-patch", "2%")
    page.wait_for_selector("#certificate[data-certified]")
    page.wait_for_selector("#cleanser[data-state='done']")
    key = page.evaluate("current.id")
    got = json.loads(call(server, f"/api/uploads/{key}/cleanser?patch=2%25&wait=0")[2])
    text = page.inner_text("#cleanser-verdict")
    assert f"tiny_cnn with PatchCleanser predicts {got['prediction']['name']}" in text and got["message"] in text
    assert page.get_attribute("#cleanser", "data-certified") == str(got["certified"]).lower()
    assert "PatchCleanser on tiny_cnn" in page.inner_text("#cleanser h2")
    cells = page.locator("#cleanser-grid button")
    assert cells.count() == got["masks"]["count"]
    agree = [c == got["prediction"]["index"] for c in got["one_mask"]]
    assert [cells.nth(i).get_attribute("data-agree") == "true" for i in range(cells.count())] == agree
    assert f"{got['two_mask']['agree']} of {got['two_mask']['pairs']} pairs" in page.inner_text("#cleanser-pairs")
    assert f"Case {'I' * got['case']}, {got['case_name']}" in page.inner_text("#cleanser-case")
    assert "Classes matched by class name." in page.inner_text("#cleanser-about")
    # Hovering a cell outlines its mask on the image.
    cells.nth(7).hover()
    rect = page.locator("#cleanser-mask rect")
    assert rect.count() == 1
    x0, y0, x1, y1 = got["masks"]["boxes_resized"][7]
    assert [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")] == [x0, y0, x1 - x0, y1 - y0]
    page.hover("#classes")
    assert page.locator("#cleanser-mask rect").count() == 0
    with page.expect_download() as download:
        page.click("#download-json")
    assert json.loads(download.value.path().read_text())["cleanser"]["one_mask"] == got["one_mask"]
    page.select_option("#certify-patch", "")
    page.wait_for_selector("#cleanser", state="hidden")
    assert page.locator("#error").is_hidden()


def test_page_without_a_reference_shows_no_panel(page, running_server):  # noqa: F811
    server = running_server()
    open_page(page, server)
    page.click(f"#samples button[data-sample='{server.config()['samples'][0]}']")
    page.wait_for_selector("#heatmap[data-class]")
    page.select_option("#certify-patch", "2%")
    page.wait_for_selector("#certificate[data-certified]")
    assert page.locator("#cleanser").is_hidden() and page.locator("#error").is_hidden()


def test_the_json_download_holds_both_verdicts(running_server):
    server = running_server(cleanser_model=TinyCNN())
    key = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=12))["id"]
    status, headers, body = call(server, f"/api/uploads/{key}/result.json?certify=3%25&defense=clip")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    record = json.loads(body)
    assert record["certified"]["defense"] == "clip" and record["cleanser"]["patch"] == "3%"
