"""Fixtures for the demo report and the web explorer: a tiny model file with class names."""

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.testing.models import randomize_batchnorm

CLASSES = ("cat", "dog", "tea", "rocket")
IMG_SIZE = 48


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny test model gains nothing from a second thread, and on a busy machine the
    two threads of every small op wait for each other (seconds per image)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A bagnet_tiny model file (q = 9) with class names, 48 px images and non-trivial weights."""
    torch.manual_seed(0)
    model = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=len(CLASSES)))
    with torch.no_grad():  # a strong head, so maps and predictions differ by class
        model.fc.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    bagnet.save_model_file(path, model, {"classes": list(CLASSES), "img_size": IMG_SIZE, "dataset": "test"})
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_file):
    return bagnet.load_model(tiny_model_file).eval()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def running_server(tiny_model):
    """Start servers on free ports in background threads; stopped after the test."""
    from bagnet.app import Explorer, make_server

    started = []

    def start(model=None, *, cleanser_model=None, **kwargs):
        explorer = Explorer(model if model is not None else tiny_model, img_size=IMG_SIZE, top_k=3,
                            cleanser_model=cleanser_model)
        server = make_server(explorer, "127.0.0.1", 0, **kwargs)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
