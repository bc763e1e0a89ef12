"""`bagnet serve` under hostile or heavy use: bounded memory for every image shape, other
sites refused, errors as JSON without internals, and a load test on loopback."""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import PIL.ImageFile
import pytest
from PIL import Image

import bagnet.data.transforms as transforms_module
import bagnet.explain._images as images_module
from bagnet.app import Explorer

from .conftest import IMG_SIZE, png_bytes, random_image
from .test_server import call

# The load test's bound on the server's peak memory above its idle resident size
# (README, "Demo and explorer"): request bodies, one image being decoded and prepared at
# a time, and the analyses kept for the page.
LOAD_TEST_RSS_LIMIT_MB = 400


def gray_png(width, height):
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def photo_40mp(fmt):
    """A 7296 x 5472 (40 MP) photo-like image, encoded as JPEG or PNG (under 1 MB either way)."""
    ramp = Image.linear_gradient("L")
    size = (7296, 5472)
    img = Image.merge("RGB", (ramp.resize(size), ramp.rotate(90).resize(size), ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM).resize(size)))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def request(server, path, data=None, method=None, headers=None):
    """(status, headers, body) with extra request headers (urllib keeps a given Host)."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw(server, data, linger_reset=False):
    """Send raw bytes; the answer (b"" when the socket is reset instead)."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(data)
        if linger_reset:  # close with a TCP reset, as a crashed or impatient client does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def json_answer(raw_answer):
    head, _, body = raw_answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


# -- item 7: memory bounded for every image shape -------------------------------------


@pytest.mark.parametrize("size", [(2000, 1), (1, 3000), (1_000_000, 1), (500, 20)])
def test_thin_images_are_cut_before_they_are_resized(tiny_model, monkeypatch, size):
    """The long side is cut to twice the short one in the original's pixels, so no tensor
    larger than the model's input is ever made (a 2000x1 image used to become 48 x 96,000)."""
    made = []
    original = images_module.resize_short_side

    def spy(t, n):
        out = original(t, n)
        made.append(out.numel())
        return out

    # Wherever the preprocessing resizes from (bagnet.data.transforms now, the explain helpers before).
    for module in (images_module, transforms_module):
        monkeypatch.setattr(module, "resize_short_side", spy)
    explorer = Explorer(tiny_model, img_size=IMG_SIZE)
    w, h = size
    analysis = explorer.explore(gray_png(w, h), name="thin.png")
    short = min(w, h)
    cw, ch = min(w, 2 * short), min(h, 2 * short)
    assert analysis.source == {"size": [w, h], "box": [(w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch]}
    dw, dh = analysis.display.shape[2], analysis.display.shape[1]
    assert min(dw, dh) == IMG_SIZE and max(dw, dh) == IMG_SIZE * max(cw, ch) // min(cw, ch)
    assert max(made) <= 3 * IMG_SIZE * 2 * IMG_SIZE
    note = analysis.summary()["note"]
    assert f"only the centre {cw}x{ch} pixels of this {w}x{h} image" in note


def test_cut_keeps_the_centre_of_the_original(tiny_model):
    """The model's input is the resized centre of the original (an independent crop + resize)."""
    explorer = Explorer(tiny_model, img_size=IMG_SIZE)
    array = random_image(30, 150, seed=3)  # 150 x 30: the centre 60 x 30 is kept
    _, shown = explorer.prepare(Image.fromarray(array))
    expected = Image.fromarray(array[:, 45:105]).resize((2 * IMG_SIZE, IMG_SIZE), Image.Resampling.BILINEAR)
    got = (shown.permute(1, 2, 0).numpy() * 255).round()
    assert shown.shape[1:] == (IMG_SIZE, 2 * IMG_SIZE)
    assert np.abs(got - np.asarray(expected, np.float32)).mean() < 12  # resampling filters differ slightly
    assert Explorer(tiny_model, img_size=IMG_SIZE).explore(Image.fromarray(array)).summary()["note"]


def test_decoding_happens_inside_the_concurrency_bound(running_server, monkeypatch):
    """Six uploads at once: decoding and the model passes run one at a time (max_concurrent=1)."""
    active, peak, lock = [0], [0], threading.Lock()
    original_load = PIL.ImageFile.ImageFile.load

    def busy(fn):
        def wrapper(*args, **kwargs):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                time.sleep(0.05)  # long enough for an unbounded decode to overlap another
                return fn(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1
        return wrapper

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", busy(original_load))
    monkeypatch.setattr(Explorer, "_logits", busy(Explorer._logits))
    server = running_server()
    bodies = [png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=s)) for s in range(6)]
    statuses = []
    threads = [threading.Thread(target=lambda b=b: statuses.append(call(server, "/api/uploads", b, "POST")[0])) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [201] * 6
    assert peak[0] == 1


# Connection threads, working slots and slow clients: test_server_deadlines.py.


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_ctrl_c_while_a_request_thread_starts_does_not_break_the_thread_cap(running_server, monkeypatch, caplog):
    """Ctrl+C can land just after a connection's thread started: its slot is released once
    (it used to be released twice: 'Semaphore released too many times', and a hung stop)."""
    import bagnet.app.server as server_module

    server = running_server(max_connections=1)
    started = []

    class InterruptedAfterStart(threading.Thread):
        def start(self):
            super().start()
            started.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(server_module.threading, "Thread", InterruptedAfterStart)
    client, served = socket.socketpair()
    with caplog.at_level("DEBUG", logger="bagnet.app.server"), pytest.raises(KeyboardInterrupt):
        server.process_request(served, ("127.0.0.1", 1))
    monkeypatch.undo()
    client.sendall(b"GET /api/config HTTP/1.0\r\n\r\n")
    assert b"200 OK" in client.recv(100)
    client.close()
    started[0].join(timeout=30)
    assert server._connection_slots._value == 1
    assert "released too many times" not in caplog.text
    assert call(server, "/api/config")[0] == 200


# -- item 8: other sites ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io"])
def test_unknown_host_is_refused(running_server, host):
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1."""
    server = running_server()
    for path, data, method in (("/", None, "GET"), ("/api/config", None, "GET"), ("/api/samples/coffee", b"", "POST")):
        status, headers, body = request(server, path, data, method, {"Host": host})
        assert status == 403 and headers["Content-Type"] == "application/json"
        assert "unknown host" in json.loads(body)["error"]


def test_known_hosts_are_served(running_server):
    server = running_server(allow_hosts=["Bagnet-Box.lan"])
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "bagnet-box.lan:8000",
                 "app.localhost"):
        assert request(server, "/api/config", headers={"Host": host})[0] == 200, host


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["other-site", "null", "other-port", "fetch-metadata"],
)
def test_cross_origin_uploads_are_refused(running_server, headers):
    server = running_server()
    data = png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=1))
    status, _, body = request(server, "/api/uploads", data, "POST", headers)
    assert status == 403 and "other sites" in json.loads(body)["error"]
    assert request(server, "/api/samples/coffee", b"", "POST", headers)[0] == 403
    assert len(server.store._items) == 0


def test_same_origin_and_script_uploads_are_served(running_server):
    server = running_server()
    port = server.server_address[1]
    data = png_bytes(random_image(IMG_SIZE, IMG_SIZE, seed=1))
    for headers in ({"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
                    {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
                    {}):
        assert request(server, "/api/uploads", data, "POST", headers)[0] == 201, headers


# -- item 9: errors ------------------------------------------------------------------


def test_internal_errors_do_not_leak(running_server, monkeypatch, caplog):
    def broken(self, *args, **kwargs):
        raise RuntimeError("secret detail at /srv/models/x.pt")

    monkeypatch.setattr(Explorer, "explore", broken)
    server = running_server()
    with caplog.at_level("ERROR", logger="bagnet.app.server"):
        status, headers, body = request(server, "/api/samples/coffee", b"", "POST")
    assert status == 500 and headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error.startswith("internal error") and "secret" not in error and "RuntimeError" not in error
    assert "secret detail" in caplog.text  # the server's log has it


@pytest.mark.parametrize(
    "method, path, allow",
    [("GET", "/api/uploads", "POST"), ("POST", "/", "GET, HEAD"), ("DELETE", "/api/config", "GET, HEAD"),
     ("PUT", "/api/samples/coffee", "POST"), ("OPTIONS", "/api/uploads", "POST")],
)
def test_wrong_method_is_405_with_allow(running_server, method, path, allow):
    server = running_server()
    status, headers, body = request(server, path, b"" if method in ("POST", "PUT") else None, method)
    assert status == 405 and headers["Allow"] == allow
    assert headers["Content-Type"] == "application/json" and "use" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501, "not supported"),
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"GET / HTTP/7.0\r\n\r\n", 505, "version"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "URI"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431, "header"),
    ],
    ids=["unknown-method", "garbage", "version", "long-url", "many-headers"],
)
def test_malformed_requests_get_json(running_server, data, status, words):
    server = running_server()
    got, body = json_answer(raw(server, data))
    assert got == status and words.lower() in body["error"].lower()


def test_client_that_disconnects_leaves_no_traceback(running_server, capfd, caplog):
    server = running_server()
    with caplog.at_level("DEBUG", logger="bagnet.app.server"):
        raw(server, b"GET /api/con", linger_reset=True)  # reset in the middle of the request line
        raw(server, b"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000,
            linger_reset=True)  # reset in the middle of the body
        time.sleep(0.5)
        assert call(server, "/api/config")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


def start_cli_server(tiny_model_file, *args):
    """`bagnet serve` in a subprocess; returns (process, url, stderr lines so far)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bagnet", "serve", "--weights", str(tiny_model_file), "--port", "0", "--device", "cpu", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    if " on http" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line.split(" on ")[1].split()[0]


def stop_cli_server(proc):
    """Ctrl+C; returns (stdout, stderr)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"bagnet serve did not stop on Ctrl+C within 60 s:\n{err}") from None


def test_all_interfaces_prints_a_warning_and_a_reachable_url(tiny_model_file):
    proc, url = start_cli_server(tiny_model_file, "--host", "0.0.0.0")
    try:
        with urllib.request.urlopen(url + "api/config", timeout=60) as r:
            status = r.status
    finally:
        _, err = stop_cli_server(proc)
    assert status == 200, err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "no authentication" in warnings[0], err
    warning = warnings[0]
    urls = re.findall(r"http://([^/\s]+)/", warning)
    assert urls and all(not u.startswith(("0.0.0.0", "[::]")) for u in urls)
    assert "Traceback" not in err


# -- the load test (loopback only) ------------------------------------------------------


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_load_parallel_huge_and_thin_uploads(tiny_model_file):
    """8 parallel 40-megapixel photos plus 3000x1 and 1,000,000x1 images: the server's peak
    memory stays within LOAD_TEST_RSS_LIMIT_MB of its idle size, every answer is JSON with a
    2xx/4xx status, and a normal upload is answered all along."""
    jpeg, png = photo_40mp("JPEG"), photo_40mp("PNG")
    heavy = [("photo.jpg", jpeg)] * 6 + [("photo.png", png)] * 2 + [
        ("3000x1.png", gray_png(3000, 1)), ("1000000x1.png", gray_png(1_000_000, 1))]
    normal = png_bytes(random_image(IMG_SIZE, 64, seed=0))
    proc, url = start_cli_server(tiny_model_file)

    def post(name, body):
        req = urllib.request.Request(f"{url}api/uploads?name={name}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    try:
        assert post("warmup.png", normal)[0] == 201  # lazy imports and first-call allocations
        idle = rss_kb(proc.pid, "VmRSS")
        answers, normal_answers, config_answers = [], [], []
        done = threading.Event()

        def keep_uploading():
            while not done.is_set():
                start = time.perf_counter()
                status, kind, _ = post("normal.png", normal)
                normal_answers.append((status, kind, start, time.perf_counter()))
                start = time.perf_counter()
                with urllib.request.urlopen(url + "api/config", timeout=60) as r:
                    config_answers.append((r.status, time.perf_counter() - start))
                time.sleep(0.1)

        threads = [threading.Thread(target=lambda n=n, b=b: answers.append((n, *post(n, b), time.perf_counter())))
                   for n, b in heavy]
        for t in threads:
            t.start()
        steady = threading.Thread(target=keep_uploading)
        steady.start()
        for t in threads:
            t.join(timeout=300)
        done.set()
        steady.join(timeout=120)
        peak = rss_kb(proc.pid, "VmHWM")
    finally:
        _, err = stop_cli_server(proc)
    assert len(answers) == len(heavy)
    for name, status, kind, body, _ in answers:
        assert 200 <= status < 500 and kind == "application/json", (name, status, body[:200])
        json.loads(body)
    assert {name: status for name, status, _, _, _ in answers} == {n: 201 for n, _ in heavy}
    # The page stays usable: normal uploads sent while the heavy ones are in flight are
    # answered (in turn, after the images queued before them), and pages that need no
    # model pass are answered at once.
    last_heavy = max(t for *_, t in answers)
    assert normal_answers and all(s == 201 and k == "application/json" for s, k, _, _ in normal_answers)
    assert any(start < last_heavy for _, _, start, _ in normal_answers)
    assert max(end - start for _, _, start, end in normal_answers) < 60
    assert config_answers and all(s == 200 and seconds < 5 for s, seconds in config_answers)
    grown = (peak - idle) / 1024
    assert grown < LOAD_TEST_RSS_LIMIT_MB, f"peak RSS {peak / 1024:.0f} MB, {grown:.0f} MB over idle"
    assert "Traceback" not in err
