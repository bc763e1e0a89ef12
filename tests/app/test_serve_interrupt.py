"""Ctrl+C on `bagnet serve` while a full-resolution map is being computed: a clean stop.

It used to abort ("terminate called without an active exception", exit 134): the
interpreter shut down under a request thread that was inside torch."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from PIL import Image

from .conftest import random_image

SIZE = 768  # a full-resolution map of the tiny model takes seconds at this size, on one thread


def test_ctrl_c_during_a_full_resolution_map_stops_cleanly(tiny_model_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bagnet", "serve", "--weights", str(tiny_model_file), "--port", "0", "--device", "cpu",
         "--img-size", str(SIZE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert " on http" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        buf = io.BytesIO()
        Image.fromarray(random_image(SIZE, SIZE, seed=0)).save(buf, format="PNG")
        req = urllib.request.Request(url + "api/uploads?name=big.png", data=buf.getvalue(), method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            key = json.loads(r.read())["id"]

        answered = []

        def full_map():
            try:
                with urllib.request.urlopen(f"{url}api/uploads/{key}/view?res=full", timeout=120) as r:
                    answered.append(r.status)
            except OSError:
                pass  # the server went away mid-request, as it should

        client = threading.Thread(target=full_map, daemon=True)
        client.start()
        time.sleep(1.0)  # the request is in, the map being computed
        assert not answered, "the full-resolution map was done before Ctrl+C; make SIZE larger"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "terminate called" not in err and "Traceback" not in err, err
    assert proc.returncode in (0, 130), (proc.returncode, err)
    assert out.splitlines()[-1] == "bagnet serve: stopped (1 request in progress abandoned)", out
    assert not answered
