"""``bagnet explain`` in-process, on a tiny model file and generated images."""

import json

import numpy as np
import pytest
from PIL import Image

import bagnet
from bagnet.cli.main import main
from bagnet.explain import explain

from .conftest import randomized


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain-cli")
    model = randomized("bagnet_tiny", num_classes=4, seed=41)
    bagnet.save_model_file(d / "tiny.pt", model, {"classes": ["a", "b", "c", "d"], "img_size": 20})
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (26, 34, 3), dtype=np.uint8)).save(d / "photo.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (30, 22), dtype=np.uint8)).save(d / "gray.png")
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)).save(d / "sub" / "photo.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (d / "notes.txt").write_text("not an image")
    return d


def test_writes_png_and_json_per_image_and_reports_failures(files, tmp_path, capsys):
    out = tmp_path / "out"
    images = [files / "photo.jpg", files / "broken.jpg", files / "gray.png", files / "notes.txt", files / "sub" / "photo.png"]
    rc = main(["explain", *map(str, images), "--weights", str(files / "tiny.pt"), "--out", str(out), "-k", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 2 and "broken.jpg" in errors[0] and "notes.txt" in errors[1]
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "gray.json", "gray.png", "photo-2.json", "photo-2.png", "photo.json", "photo.png"]
    record = json.loads((out / "photo.json").read_text())
    assert record["file"] == str(files / "photo.jpg")
    assert record["image_size"] == [20, 26]  # short side resized to the model file's img_size
    # the same numbers as the library call
    model = bagnet.load_model(files / "tiny.pt")
    e = explain(model, files / "photo.jpg", k=2)
    assert [p["index"] for p in record["predictions"]] == [p.index for p in e.predictions]
    assert [c["index"] for c in record["explained"]] == e.classes[:3]
    assert record["explained"][0]["patches"] == [{"box": list(p.box), "score": pytest.approx(p.score, abs=1e-5),
                                                  "center": list(p.center)} for p in e.patches[0]]
    with Image.open(out / "photo.png") as png:
        assert png.format == "PNG" and png.width > 200


def test_classes_and_native_stride(files, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["explain", str(files / "gray.png"), "--model", "bagnet_tiny", "--weights", str(files / "tiny.pt"),
               "--classes", "3", "1", "--stride", "native", "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "gray.json").read_text())
    assert [c["index"] for c in record["explained"]] == [3, 1] and record["stride"] == 8
    assert "gray.png" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--classes", "best"], "--classes"),
    (["--classes", "9"], "out of range"),
    (["--stride", "0"], "--stride"),
    (["-k", "0"], "-k"),
])
def test_bad_options_are_one_line_errors(files, tmp_path, capsys, args, message):
    rc = main(["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and message in err
    assert not list(tmp_path.glob("*.json"))


def test_all_images_fail(files, tmp_path, capsys):
    rc = main(["explain", str(files / "notes.txt"), str(files / "missing.png"), "--weights", str(files / "tiny.pt"),
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "no such file" in err and "2 of 2 images failed" in err
    assert not list(tmp_path.iterdir())
