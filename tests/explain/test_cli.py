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
    assert record["image_size"] == [34, 26]  # [width, height] of the original
    assert record["resized_size"] == [26, 20]  # short side resized to the model file's img_size
    # the same numbers as the library call
    model = bagnet.load_model(files / "tiny.pt")
    e = explain(model, files / "photo.jpg", k=2)
    assert [p["index"] for p in record["predictions"]] == [p.index for p in e.predictions]
    assert [c["index"] for c in record["explained"]] == e.classes[:3]
    assert [{k: p[k] for k in ("box_resized", "center_resized", "score")} for p in record["explained"][0]["patches"]] == [
        {"box_resized": list(p.box), "score": pytest.approx(p.score, abs=1e-5), "center_resized": list(p.center)}
        for p in e.patches[0]]
    with Image.open(out / "photo.png") as png:
        assert png.format == "PNG" and png.width > 200


def test_classes_and_native_stride(files, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["explain", str(files / "gray.png"), "--model", "bagnet_tiny", "--weights", str(files / "tiny.pt"),
               "--classes", "3", "1", "--stride", "native", "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "gray.json").read_text())
    assert [c["index"] for c in record["explained"]] == [3, 1] and record["stride_resized"] == 8
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


def test_img_size_explains_at_that_resolution_and_maps_back_to_the_original(files, tmp_path, capsys):
    """A 60x40 image at --img-size 20 is seen at 30x20, half size: every box and centre
    maps back to the original by x2 on both axes."""
    out = tmp_path / "o"
    photo = tmp_path / "big.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photo)  # 60 wide, 40 high
    rc = main(["explain", str(photo), "--weights", str(files / "tiny.pt"), "--img-size", "20", "--out", str(out),
               "-k", "3", "--classes", "0"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "big.json").read_text())
    assert record["image_size"] == [60, 40] and record["resized_size"] == [30, 20]
    assert record["patch_size"] == [18, 18] and record["patch_size_resized"] == [9, 9]
    e = explain(bagnet.load_model(files / "tiny.pt"), photo, classes=[0], k=3, img_size=20)
    patches = record["explained"][0]["patches"]
    assert [p["box_resized"] for p in patches] == [list(p.box) for p in e.patches[0]]
    for p in patches:
        assert p["box"] == [2 * v for v in p["box_resized"]]
        assert p["center"] == [2 * c + 1 for c in p["center_resized"]]  # the centre pixel of a 2x2 block
        x0, y0, x1, y1 = p["box"]
        assert x0 <= p["center"][0] < x1 and y0 <= p["center"][1] < y1
    assert main(["explain", str(photo), "--weights", str(files / "tiny.pt"), "--img-size", "4", "--out", str(out)]) == 1
    assert "--img-size 4 is smaller than the model's 9x9 px patches" in capsys.readouterr().err


def test_classes_by_name(files, tmp_path, capsys):
    base = ["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--out", str(tmp_path)]
    assert main([*base, "--classes", "d", "B", "0"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "gray.json").read_text())
    assert [c["index"] for c in record["explained"]] == [3, 1, 0]
    assert main([*base, "--classes", "e"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the model has no class 'e'" in err


def test_a_folder_explains_the_images_in_it(files, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    (folder / "dogs").mkdir()
    rng = np.random.default_rng(1)
    for sub in ("cats", "dogs"):
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(folder / sub / "1.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    rc = main(["explain", str(folder), str(tmp_path / "empty"), "--weights", str(files / "tiny.pt"), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == ["cats/1.json", "dogs/1.json"]
    assert json.loads((out / "dogs" / "1.json").read_text())["file"] == str(folder / "dogs" / "1.png")
    assert "empty: a folder without images" in captured.err and "1 of 3 images failed" in captured.err


def test_a_zero_byte_file_is_called_empty(files, tmp_path, capsys):
    (tmp_path / "zero.jpg").write_bytes(b"")
    rc = main(["explain", str(tmp_path / "zero.jpg"), "--weights", str(files / "tiny.pt"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "zero.jpg: empty file (0 bytes)" in err


def test_scale_is_one_per_image_by_default_and_fixed_with_scale(files, tmp_path, capsys):
    weights = files / "tiny.pt"
    model = bagnet.load_model(weights)
    out = tmp_path / "image"
    assert main(["explain", str(files / "photo.jpg"), "--weights", str(weights), "--out", str(out)]) == 0
    record = json.loads((out / "photo.json").read_text())
    # Independent: the 99th percentile of |evidence| pooled over the explained classes' maps.
    e = explain(model, files / "photo.jpg", classes="top3")
    expected = float(np.percentile(np.abs(e.evidence.numpy()).ravel(), 99))
    assert record["colour_scale"] == {"vmax": pytest.approx(expected, rel=1e-5), "set_by": "image"}
    out = tmp_path / "fixed"
    assert main(["explain", str(files / "photo.jpg"), str(files / "gray.png"), "--weights", str(weights),
                 "--scale", "0.75", "--out", str(out)]) == 0
    for name in ("photo", "gray"):
        assert json.loads((out / f"{name}.json").read_text())["colour_scale"] == {"vmax": 0.75, "set_by": "--scale"}
        assert Image.open(out / f"{name}.png").format == "PNG"
    for bad in ("0", "-1", "big", "nan"):
        assert main(["explain", str(files / "photo.jpg"), "--weights", str(weights), "--scale", bad,
                     "--out", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--scale takes 'image' or a positive number" in err


def test_dtype_bfloat16_is_recorded_and_close_to_float32(files, tmp_path, capsys):
    common = [str(files / "photo.jpg"), "--weights", str(files / "tiny.pt"), "--classes", "0", "-k", "1"]
    assert main(["explain", *common, "--out", str(tmp_path / "f32")]) == 0
    assert main(["explain", *common, "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    captured = capsys.readouterr()
    assert "--dtype auto" not in captured.err  # an explicit choice needs no note
    lines = captured.out.splitlines()
    assert "[bfloat16] ->" in lines[-1] and "[" not in lines[0]  # the terminal line flags it
    f32, bf16 = (json.loads((tmp_path / d / "photo.json").read_text()) for d in ("f32", "bf16"))
    assert f32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
    logits = [[p["logit"] for p in r["predictions"]] for r in (f32, bf16)]
    assert logits[0] != logits[1] and logits[0] == pytest.approx(logits[1], abs=0.05 * max(map(abs, logits[0])))


def test_dtype_auto_says_what_it_chose(files, tmp_path, capsys, monkeypatch):
    import bagnet._device

    monkeypatch.setattr(bagnet._device, "fast_bfloat16", lambda device: "this CPU has test units")
    rc = main(["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--dtype", "auto",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0 and "--dtype auto: bfloat16 (this CPU has test units)" in err
    assert json.loads((tmp_path / "gray.json").read_text())["dtype"] == "bfloat16"
    monkeypatch.setattr(bagnet._device, "fast_bfloat16", lambda device: None)
    assert main(["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--dtype", "auto",
                 "--out", str(tmp_path)]) == 0
    assert "--dtype auto" not in capsys.readouterr().err
    assert json.loads((tmp_path / "gray.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("command", [["explain", "x.png"], ["serve", "--port", "0"]])
def test_unknown_dtype_is_a_one_line_error(files, tmp_path, capsys, command):
    rc = main([*command, "--weights", str(files / "tiny.pt"), "--dtype", "int8"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "--dtype 'int8' is not one of auto, float32, bfloat16" in err


def _work(model, image, **kwargs):
    """Multiply-adds explain() spends on an image, counted by PyTorch (a prepared mapper, so
    that folding the weights is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bagnet.explain import EvidenceMapper

    mapper = EvidenceMapper(model)
    with FlopCounterMode(display=False) as counter:
        explain(model, image, mapper=mapper, max_macs=None, **kwargs)
    return counter.get_total_flops() // 2


def test_a_long_thin_image_over_the_limit_is_a_clean_error_and_the_others_go_on(files, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (10, 4000, 3), dtype=np.uint8)).save(strip)
    model = bagnet.load_model(files / "tiny.pt")
    strip_work, gray_work = _work(model, strip), _work(model, files / "gray.png")
    assert strip_work > gray_work
    limit = (strip_work + gray_work) / 2 / 1e9
    out = tmp_path / "out"
    rc = main(["explain", str(strip), str(files / "gray.png"), "--weights", str(files / "tiny.pt"),
               "--max-gmacs", f"{limit:.12f}", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert f"{strip}: explaining this image, 4000x10 px (width x height)" in errors[0]
    for option in ("--stride native", "--img-size", "--max-gmacs"):
        assert option in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["gray.json", "gray.png"]
    assert main(["explain", str(strip), "--weights", str(files / "tiny.pt"), "--max-gmacs", "-1",
                 "--out", str(out)]) == 1
    assert "--max-gmacs must be 0 (no limit) or a positive number" in capsys.readouterr().err


def test_long_maps_show_progress(files, tmp_path, capsys, monkeypatch):
    import bagnet.cli.explain as cli

    monkeypatch.setattr(cli, "PROGRESS_MACS", 0)
    assert main(["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "GMACs" in line]
    assert lines[0].startswith(f"  {files / 'gray.png'}:   0% of about") and "100% of about" in lines[-1]
    monkeypatch.setattr(cli, "PROGRESS_MACS", 10**15)
    assert main(["explain", str(files / "gray.png"), "--weights", str(files / "tiny.pt"), "--out", str(tmp_path)]) == 0
    assert "GMACs" not in capsys.readouterr().err  # a small map says nothing


def test_a_tiny_image_is_flagged_on_the_terminal_and_in_the_json(files, tmp_path, capsys):
    dot = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(dot)
    assert main(["explain", str(dot), str(files / "gray.png"), "--weights", str(files / "tiny.pt"),
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "[warning: upscaled 20x from 1x1 px (smaller than one 9x9 px patch)" in out[0]
    assert "warning" not in out[1]
    record = json.loads((tmp_path / "o" / "dot.json").read_text())
    assert len(record["warnings"]) == 1 and record["warnings"][0].startswith("upscaled 20x from 1x1 px")
    assert json.loads((tmp_path / "o" / "gray.json").read_text())["warnings"] == []


def test_patch_source(files, tmp_path, capsys):
    base = ["explain", str(files / "photo.jpg"), "--weights", str(files / "tiny.pt"), "-k", "30"]
    assert main([*base, "--out", str(tmp_path / "model")]) == 0
    assert main([*base, "--patch-source", "map", "--out", str(tmp_path / "map")]) == 0
    own, anywhere = (json.loads((tmp_path / d / "photo.json").read_text()) for d in ("model", "map"))
    assert own["patches_from"] == "model" and anywhere["patches_from"] == "map"
    for record, padded_allowed in ((own, False), (anywhere, True)):
        for c in record["explained"]:
            for p in c["patches"]:
                x0, y0, x1, y1 = p["box_resized"]
                assert p["padded"] is ((x1 - x0, y1 - y0) != (9, 9))
                if not padded_allowed:
                    assert not p["padded"] and x0 % 8 == 0 and y0 % 8 == 0
