"""`bagnet serve`'s HTTP API, checked against maps computed independently from the model."""

import base64
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from urllib.parse import quote

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bagnet.app import Explorer, make_server
from bagnet.cli.main import main

from .conftest import CLASSES, IMG_SIZE, png_bytes, random_image


def call(server, path, data=None, method=None):
    """(status, headers, body) of one request; never raises for HTTP errors."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def upload(server, array, name="x.png"):
    status, _, body = call(server, f"/api/uploads?name={quote(name)}", png_bytes(array), "POST")
    assert status == 201, body
    return json.loads(body)


def normalized(array):
    """The model input of an image that is already IMG_SIZE on its short side (no resize)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((array / np.float32(255) - mean) / std).astype(np.float32)).permute(2, 0, 1)


def naive_full_map(model, x, cls):
    """Logit ``cls`` of the model on the q x q crop centred on every pixel (zero padding)."""
    q = model.receptive_field
    p = (q - 1) // 2
    padded = F.pad(x[None], (p, p, p, p))
    crops = padded.unfold(2, q, 1).unfold(3, q, 1)  # [1, C, H, W, q, q]
    h, w = crops.shape[2:4]
    crops = crops[0].permute(1, 2, 0, 3, 4).reshape(h * w, 3, q, q)
    with torch.no_grad():
        return model(crops)[:, cls].reshape(h, w).numpy()


def decode_data_url(url):
    head, data = url.split(",", 1)
    assert head.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_upload_predictions_and_maps_match_the_model(running_server, tiny_model):
    server = running_server()
    array = random_image(IMG_SIZE, IMG_SIZE, seed=1)
    summary = upload(server, array)
    x = normalized(array)
    with torch.no_grad():
        logits = tiny_model(x[None])[0]
    probs = torch.softmax(logits.double(), 0)
    got = {p["index"]: p for p in summary["predictions"]}
    assert [p["index"] for p in summary["predictions"]] == torch.argsort(logits, descending=True).tolist()
    for c in range(len(CLASSES)):
        assert got[c]["name"] == CLASSES[c]
        assert got[c]["probability"] == pytest.approx(float(probs[c]), abs=1e-5)
    assert (summary["width"], summary["height"]) == (IMG_SIZE, IMG_SIZE)

    # Native maps: the paper's padded maps at the model's stride = patch logits of the padded image.
    status, headers, body = call(server, f"/api/uploads/{summary['id']}/result.json?res=native&maps=1")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    result = json.loads(body)
    q = tiny_model.receptive_field
    p = (q - 1) // 2
    with torch.no_grad():
        native = tiny_model.patch_logits(F.pad(x[None], (p, p, p, p)))[0].numpy()
        own = tiny_model.patch_logits(x[None])[0].numpy()  # the model's own patches: what its logit averages
    assert sorted(result["maps"]) == ["0", "1", "2", "3"]
    for entry in result["explained"]:
        c = entry["index"]
        np.testing.assert_allclose(np.array(result["maps"][str(c)]), native[c], atol=2e-3)
        # the top patch is the best of the model's own patches, wholly inside the image
        assert entry["patches"][0]["score"] == pytest.approx(float(own[c].max()), abs=2e-3)
        x0, y0, x1, y1 = entry["patches"][0]["box"]
        assert x1 - x0 == y1 - y0 == q and x0 >= 0 and y0 >= 0 and x1 <= IMG_SIZE and y1 <= IMG_SIZE
        assert entry["evidence"]["mean"] == pytest.approx(float(native[c].mean()), abs=2e-3)

    # Full resolution: every pixel's centred crop, computed crop by crop.
    cls = summary["predictions"][-1]["index"]
    status, _, body = call(server, f"/api/uploads/{summary['id']}/view?class={cls}&res=full")
    assert status == 200
    view = json.loads(body)
    full = naive_full_map(tiny_model, x, cls)
    # The outlined patches are the model's own at every resolution (wholly inside the image,
    # every patch stride): the best one is the largest entry of its own patch logits.
    i, j = np.unravel_index(np.argmax(own[cls]), own[cls].shape)
    best = view["patches"][0]
    s = tiny_model.patch_stride
    assert best["box"] == [int(j) * s, int(i) * s, int(j) * s + q, int(i) * s + q]  # [x0, y0, x1, y1]
    assert best["class_index"] == cls and best["score"] == pytest.approx(float(own[cls].max()), abs=2e-3)
    # the patch centred on that pixel of the full map is that very patch
    assert full[int(i) * s + p, int(j) * s + p] == pytest.approx(float(own[cls].max()), abs=2e-3)
    heat = decode_data_url(view["heatmap"])
    assert heat.size == (IMG_SIZE, IMG_SIZE) and heat.mode == "RGBA"
    # The colour scale is symmetric about zero: red where the naive map is clearly
    # positive, blue where it is clearly negative.
    rgb = np.asarray(heat)[..., :3].astype(int)
    strong = np.abs(full) > 0.5 * view["vmax"]
    assert strong.any()
    assert np.all((rgb[..., 0] > rgb[..., 2])[strong] == (full > 0)[strong])


def test_patches_do_not_overlap_and_classes_differ(running_server):
    server = running_server()
    summary = upload(server, random_image(IMG_SIZE, 64, seed=2))
    views = {}
    for cls in range(2):
        status, _, body = call(server, f"/api/uploads/{summary['id']}/view?class={cls}&res=native")
        assert status == 200
        views[cls] = json.loads(body)
        boxes = views[cls]["patches"]
        assert len(boxes) == 3
        assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
        for a in range(len(boxes)):
            for b in range(a):
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a]["box"], boxes[b]["box"]
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0  # no shared pixel
    assert views[0]["heatmap"] != views[1]["heatmap"]
    assert views[0]["name"] == CLASSES[0] and views[1]["name"] == CLASSES[1]


def test_full_maps_are_computed_once_per_upload(running_server, monkeypatch):
    calls = []
    original = Explorer._evidence

    def spy(self, x, classes, res):
        calls.append((tuple(classes) if classes is not None else None, res))
        return original(self, x, classes, res)

    monkeypatch.setattr(Explorer, "_evidence", spy)
    server = running_server()
    summary = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=3))
    assert calls == [(None, "native")]
    for cls in (0, 1, 2, 3, 0, 1):
        status, _, _ = call(server, f"/api/uploads/{summary['id']}/view?class={cls}&res=full")
        assert status == 200
    # One full-resolution pass for all four classes, whatever order they are clicked in.
    assert calls == [(None, "native"), ((0, 1, 2, 3), "full")]


def test_figure_download_is_a_png(running_server):
    server = running_server()
    summary = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=4), name="my photo.png")
    status, headers, body = call(server, f"/api/uploads/{summary['id']}/figure.png?class=2&res=full")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert 'filename="my_photo-tea-full.png"' in headers["Content-Disposition"]
    assert Image.open(io.BytesIO(body)).format == "PNG"


def bomb_header(width, height):
    """A PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"hello, I am a text file", 415, "not an image"),
        (png_bytes(random_image(40, 40, 0))[:120], 400, "corrupt or truncated"),
        (bomb_header(7_000, 7_000), 400, "7000x7000 pixels, more than the limit of 40000000"),
        (bomb_header(100_000, 100_000), 400, "decompression bomb"),
        (b"", 400, "empty"),
    ],
    ids=["text", "truncated", "bomb-header", "huge-bomb-header", "empty"],
)
def test_bad_uploads_get_a_json_error(running_server, body, status, words):
    server = running_server()
    got, headers, answer = call(server, "/api/uploads?name=bad.png", body, "POST")
    assert got == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(answer)["error"]
    assert words in error and "Traceback" not in error


def test_real_decompression_bomb_and_oversized_upload(running_server):
    server = running_server(max_pixels=100 * 100, max_upload_bytes=50_000)
    bomb = io.BytesIO()
    Image.new("L", (120, 120)).save(bomb, format="PNG")  # 14400 pixels, a few hundred bytes
    status, _, body = call(server, "/api/uploads", bomb.getvalue(), "POST")
    assert status == 400 and "120x120 pixels, more than the limit of 10000" in json.loads(body)["error"]

    big = png_bytes(random_image(160, 160, 0))  # ~77 kB of noise
    assert len(big) > 50_000
    status, _, body = call(server, "/api/uploads", big, "POST")
    assert status == 413 and "over the upload limit of 49 kB" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/api/uploads/AAAAAAAAAAAAAAAAAAAAAAAA/view?class=0", 404, "upload it again"),
        ("/api/uploads/../../etc/passwd/view", 404, "no such page"),
        ("/static/../server.py", 404, "no such"),
        ("/nope", 404, "no such page"),
    ],
)
def test_unknown_paths_are_404(running_server, path, status, words):
    server = running_server()
    got, _, body = call(server, path)
    assert got == status and words in json.loads(body)["error"]


@pytest.mark.parametrize(
    "query, words",
    [("class=4", "out of range"), ("class=x", "class index"), ("class=0&res=huge", "res must be")],
)
def test_bad_view_parameters(running_server, query, words):
    server = running_server()
    summary = upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=5))
    status, _, body = call(server, f"/api/uploads/{summary['id']}/view?{query}")
    assert status == 400 and words in json.loads(body)["error"]


def test_oldest_upload_is_dropped(running_server):
    server = running_server(max_uploads=2)
    ids = [upload(server, random_image(IMG_SIZE, IMG_SIZE, seed=s))["id"] for s in range(3)]
    assert call(server, f"/api/uploads/{ids[0]}/view")[0] == 404
    assert all(call(server, f"/api/uploads/{i}/view")[0] == 200 for i in ids[1:])


def test_page_static_files_and_samples(running_server):
    server = running_server()
    status, headers, body = call(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'id="heatmap"' in body
    for name in ("app.js", "style.css"):
        assert call(server, f"/static/{name}")[0] == 200
    config = json.loads(call(server, "/api/config")[2])
    assert config["classes"] == list(CLASSES) and config["receptive_field"] == 9
    status, headers, body = call(server, "/api/samples/chelsea.jpg")
    assert status == 200 and Image.open(io.BytesIO(body)).format == "JPEG"
    status, _, body = call(server, "/api/samples/coffee", b"", "POST")
    assert status == 201 and json.loads(body)["name"] == "coffee"


def test_concurrent_users_get_their_own_results(running_server, tiny_model):
    """Eight users upload different images at once, then ask for their maps at once."""
    server = running_server()
    arrays = [random_image(IMG_SIZE, IMG_SIZE + 4 * i, seed=10 + i) for i in range(8)]
    results, errors = [None] * len(arrays), []
    barrier = threading.Barrier(len(arrays))

    def user(i):
        try:
            barrier.wait()
            summary = upload(server, arrays[i], name=f"user{i}.png")
            barrier.wait()  # every upload exists before anyone asks for a map
            status, _, body = call(server, f"/api/uploads/{summary['id']}/result.json?res=native&maps=1")
            assert status == 200, body
            results[i] = (summary, json.loads(body))
        except Exception as e:
            errors.append((i, e))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    q = tiny_model.receptive_field
    p = (q - 1) // 2
    for i, (summary, result) in enumerate(results):
        assert summary["width"] == IMG_SIZE + 4 * i and result["image"] == f"user{i}.png"
        x = normalized(arrays[i])
        with torch.no_grad():
            native = tiny_model.patch_logits(F.pad(x[None], (p, p, p, p)))[0].numpy()
            top = int(tiny_model(x[None])[0].argmax())
        assert summary["top_class"] == top
        assert result["predictions"][0]["index"] == top
        np.testing.assert_allclose(np.array(result["maps"][str(top)]), native[top], atol=2e-3)
    assert len({s["id"] for s, _ in results}) == len(arrays)


def test_binds_to_localhost_by_default(tiny_model):
    server = make_server(Explorer(tiny_model), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_serve_command_prints_its_url_and_stops_on_ctrl_c(tiny_model_file, tmp_path):
    """`bagnet serve` as a user runs it: a URL on stdout, the page there, Ctrl+C ends it."""
    # Started with SIGINT ignored, as a script's background job is: Ctrl+C must still stop it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bagnet", "serve", "--weights", str(tiny_model_file), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "api/config", timeout=30) as r:
            assert json.loads(r.read())["classes"] == list(CLASSES)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err


@pytest.mark.parametrize(
    "args, words",
    [(["--port", "70000"], "--port must lie in 0..65535"), (["--max-upload-mb", "0"], "--max-upload-mb must lie in"),
     (["--cache-mb", "-1"], "--cache-mb must lie in")],
)
def test_serve_command_bad_arguments(tiny_model_file, capsys, args, words):
    assert main(["serve", "--weights", str(tiny_model_file), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_serve_command_port_in_use(tiny_model_file, capsys, running_server):
    busy = running_server()
    assert main(["serve", "--weights", str(tiny_model_file), "--port", str(busy.server_address[1])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose another --port" in err


def test_large_photos_are_reduced_before_resizing(tiny_model):
    """A big PIL photo is box-filtered first; the model sees nearly the same image."""
    explorer = Explorer(tiny_model, img_size=IMG_SIZE)
    array = np.kron(random_image(30, 40, seed=8), np.ones((10, 10, 1), np.uint8))  # 300 x 400, blocky
    _, shown = explorer.prepare(Image.fromarray(array))
    _, direct = explorer.prepare(torch.from_numpy(array).permute(2, 0, 1))  # tensors are not reduced
    assert tuple(shown.shape) == (3, IMG_SIZE, 64)
    assert (shown - direct).abs().mean() < 0.04  # about 10 grey levels, on sharp-edged noise


def test_bfloat16_maps_are_close_and_the_page_says_so(tiny_model):
    explorer = Explorer(tiny_model, img_size=IMG_SIZE, top_k=3, dtype=torch.bfloat16)
    image = random_image(IMG_SIZE, 60, seed=9)
    explored = explorer.explore(image)
    full = naive_full_map(tiny_model, normalized(image), 2)
    got = explored.evidence(2, "full").numpy()
    err = np.abs(got - full)
    assert err.max() <= 0.05 * np.abs(full).max() and err.max() > 0  # approximate, not float32's map
    server = make_server(explorer, "127.0.0.1", 0)
    try:
        assert server.config()["map_dtype"] == "bfloat16"
    finally:
        server.server_close()
    assert Explorer(tiny_model, img_size=IMG_SIZE).map_dtype == "float32"
