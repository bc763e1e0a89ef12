"""`bagnet demo`: one self-contained report, accuracy checked against the model directly."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.app import SAMPLE_NAMES
from bagnet.cli.main import main
from bagnet.models import DEFAULT_MODEL, _weights

from .conftest import CLASSES, IMG_SIZE, random_image
from .test_server import normalized


def run_demo(capsys, *args):
    code = main(["demo", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def data_urls_only(page):
    """Every image of the page is inlined, and nothing is fetched from elsewhere."""
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    return sources and all(s.startswith("data:image/") for s in sources) and "<link" not in page and "<script" not in page


def test_samples_report(tmp_path, tiny_model_file, capsys):
    code, out, err = run_demo(capsys, "--weights", tiny_model_file, "--out", tmp_path, "--show", "2", "--top", "2")
    assert code == 0, err
    path = tmp_path / "report.html"
    assert out.strip().endswith(f"report: {path}")
    page = path.read_text()
    assert data_urls_only(page)
    # Two images in detail, each with a figure of its evidence maps and one of its top patches.
    assert re.findall(r'alt="([^"]*)"', page) == [
        f"{what}{name}" for name in SAMPLE_NAMES[:2] for what in ("evidence maps of ", "top patches of ")
    ]
    assert f"{len(SAMPLE_NAMES)} images" in page and "Accuracy" not in page
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_labelled_folder_accuracy_matches_the_model(tmp_path, tiny_model_file, tiny_model, capsys):
    from bagnet.testing import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=CLASSES, per_class=2, size=IMG_SIZE, splits=("train", "val"))
    # Readable names for the report, as Imagenette's classes.tsv gives them for its WordNet ids.
    (root / "classes.tsv").write_text("".join(f"{c}\t{i}\tthe {c}\n" for i, c in enumerate(CLASSES)))
    code, out, err = run_demo(capsys, "--weights", tiny_model_file, "--data", root, "--out", tmp_path / "out",
                              "--show", "1", "--res", "native")
    assert code == 0, err
    # Independent: every val image (already 48 px, so not resized) through the model.
    wrong = []
    for c, name in enumerate(CLASSES):
        for f in sorted((root / "val" / name).iterdir()):
            x = normalized(np.asarray(Image.open(f).convert("RGB")))
            with torch.no_grad():
                if int(tiny_model(x[None])[0].argmax()) != c:
                    wrong.append(f"{name}/{f.name}")
    n = 2 * len(CLASSES)
    assert f"top1 {100 * (n - len(wrong)) / n:.1f}% on {n} images; {len(wrong)} misclassified" in out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Accuracy" in page and "Misclassified images" in page
    assert "<td>the rocket</td>" in page
    for name in wrong[:1]:
        assert name in page


def test_imagenet_model_on_wordnet_folders_uses_classes_tsv(tmp_path, capsys):
    """A 1000-class model scores Imagenette-style wnid folders through classes.tsv."""
    from bagnet.data.imagenet import imagenet_classes

    torch.manual_seed(1)
    model = bagnet.create_model("bagnet_tiny", num_classes=1000)
    weights = bagnet.save_model_file(tmp_path / "in1k.pt", model, {"classes": list(imagenet_classes()), "img_size": IMG_SIZE})
    model.eval()
    folders = {"n01440764": 0, "n02102040": 217, "n03000684": 491}
    root = tmp_path / "nette"
    images = {}
    for k, (wnid, index) in enumerate(folders.items()):
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            a = random_image(IMG_SIZE, IMG_SIZE, seed=10 * k + i)
            Image.fromarray(a).save(root / "val" / wnid / f"{i}.png")
            images[(wnid, i)] = (a, index)
    (root / "classes.tsv").write_text("wnid\timagenet_index\tname\n" + "".join(f"{w}\t{i}\tx\n" for w, i in folders.items()))
    outputs = list(folders.values())
    hits = hits_restricted = 0
    for a, index in images.values():
        with torch.no_grad():
            logits = model(normalized(a)[None])[0]
        hits += int(logits.argmax()) == index  # the best of all 1000 outputs
        hits_restricted += outputs[int(logits[outputs].argmax())] == index  # best of the folder's classes
    assert hits_restricted > hits  # the case where restricting flatters the model
    n = len(images)
    code, out, err = run_demo(capsys, "--weights", weights, "--data", root, "--out", tmp_path / "out",
                              "--show", "1", "--res", "native")
    assert code == 0, err
    assert f"top1 {100 * hits / n:.1f}%" in out and f"on {n} images" in out
    assert "predicted among all 1000 classes" in out
    code, out, err = run_demo(capsys, "--weights", weights, "--data", root, "--out", tmp_path / "r",
                              "--show", "1", "--res", "native", "--restrict-to-folder-classes")
    assert code == 0, err
    assert f"top1 {100 * hits_restricted / n:.1f}% on {n} images" in out  # 3 classes: no top-5
    assert "RESTRICTED: predicted among the folder's 3 classes only" in out
    assert "RESTRICTED: predicted among the folder&#x27;s 3 classes only" in (tmp_path / "r" / "report.html").read_text()


def test_flat_folder_and_a_corrupt_file(tmp_path, tiny_model_file, capsys):
    for i in range(2):
        Image.fromarray(random_image(IMG_SIZE, 60, seed=i)).save(tmp_path / f"photo{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, out, err = run_demo(capsys, "--weights", tiny_model_file, "--data", tmp_path, "--out", tmp_path / "out",
                              "--res", "native")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("2 images, ")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "photo0.png" in page and "photo1.png" in page and "Accuracy" not in page
    assert "skipped: " in page and "broken.jpg" in page


@pytest.mark.parametrize("how", ["unregistered", "file-deleted"])
def test_missing_shipped_model_is_a_one_line_error(tmp_path, capsys, monkeypatch, how):
    key = DEFAULT_MODEL
    if how == "unregistered":
        monkeypatch.delitem(_weights._PRETRAINED, key, raising=False)
    else:
        monkeypatch.setitem(_weights._PRETRAINED, key, _weights.PretrainedCfg(file="default-gone.pt"))
    code, out, err = run_demo(capsys, "--out", tmp_path)
    assert code == 1 and out == ""
    assert err == (f"bagnet demo: error: the shipped default model {key[0]} ({key[1]}) is missing; "
                   "reinstall bagnet or pass --weights\n")
    assert not (tmp_path / "report.html").exists()


def test_shipped_model_is_the_default(tmp_path, capsys, monkeypatch):
    """With the Imagenette weights registered, `bagnet demo` needs no arguments."""
    torch.manual_seed(0)
    slim = bagnet.create_model(DEFAULT_MODEL[0], num_classes=3)
    meta = {"classes": ["n01", "n02", "n03"], "class_names": ["tench", "springer", "horn"], "img_size": 40}
    path = bagnet.save_model_file(tmp_path / "nette.pt", slim, meta)
    # An absolute `file` resolves outside the package's weights folder, like a shipped one would inside it.
    monkeypatch.setitem(_weights._PRETRAINED, DEFAULT_MODEL, _weights.PretrainedCfg(file=str(path)))
    code, out, err = run_demo(capsys, "--out", tmp_path / "out", "--show", "1", "--res", "native")
    assert code == 0, err
    assert out.splitlines()[0] == f"{DEFAULT_MODEL[0]} knows 3 classes: tench, springer, horn"
    assert out.splitlines()[-1].startswith(f"{len(SAMPLE_NAMES)} images, ")
    page = (tmp_path / "out" / "report.html").read_text()
    q = slim.receptive_field
    assert f"<b>{DEFAULT_MODEL[0]}</b>: 3 classes, {q}&times;{q} px patches" in page
    assert "<td>springer</td>" in page and "<td>n02</td>" not in page  # the model file's display names


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-images", "0"], "--max-images must be at least 1"),
        (["--data", "/nonexistent/folder"], "does not exist"),
        (["--model", "bagnet_tiny"], "bagnet_tiny has no published weights"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, tiny_model_file, capsys, args, words):
    extra = [] if "--model" in args else ["--weights", str(tiny_model_file)]
    code, _, err = run_demo(capsys, *extra, *args, "--out", tmp_path)
    assert code == 1 and err.count("\n") == 1 and words in err


def test_imagenet_weights_mean_bagnet33_and_fail_offline_in_one_line(tmp_path, capsys, monkeypatch):
    def offline(url, **kwargs):
        raise OSError(f"could not download {url}: network unreachable")

    monkeypatch.setattr(_weights, "fetch", offline)
    code, out, err = run_demo(capsys, "--weights", "imagenet", "--out", tmp_path)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "could not download" in err and "bagnet32-2ddd53ed" in err  # BagNet-33's published file
