"""`bagnet certify` and `bagnet attack` on a generated folder: what they print and write
agrees with itself and with the library, and bad input is one clear line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import bagnet
from bagnet.cli.main import main
from bagnet.data.folder import ImageFolder, eval_transform
from bagnet.robust import certify
from bagnet.testing import make_image_folder
from bagnet.testing.models import randomize_batchnorm

CLASSES = ["circle", "square", "stripes"]


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    """A random bagnet_tiny whose classifier is solved so that every image's logits favour its
    own class, by margins from small to large: all are right, some certify and some do not."""
    root = tmp_path_factory.mktemp("certify")
    make_image_folder(root, per_class=4, size=48, splits=("val",))
    torch.manual_seed(0)
    model = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=3))
    cfg = model.pretrained_cfg
    ds = ImageFolder(root / "val", transform=eval_transform(48, cfg["mean"], cfg["std"]))
    labels = torch.tensor([t for _, t in ds.samples])
    with torch.no_grad():
        feats = model.forward_features(torch.stack([ds[i][0] for i in range(len(ds))])).mean((2, 3)).double()
        strength = torch.linspace(0.05, 4.0, len(ds), dtype=torch.float64)[torch.randperm(len(ds))]
        target = torch.nn.functional.one_hot(labels, 3).double() * strength[:, None]
        weight = torch.linalg.lstsq(feats, target).solution.T  # feats @ weight.T == target
        model.fc.weight.copy_(weight.float())
        model.fc.bias.zero_()
    path = bagnet.save_model_file(root / "m.pt", model, {"img_size": 48, "classes": CLASSES})
    return root, path


def test_certify_prints_writes_and_agrees_with_the_library(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    out = tmp_path / "out"
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--patch", "2%,10", "--defense",
               "mask,clip,none", "--clip-range=-1,1", "--attack", "--attack-steps", "2", "--attack-positions", "3",
               "--attack-search-steps", "1", "--workers", "0", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "12 images at 48 px" in text and "certified images the attack flipped: 0" in text
    summary = json.loads((out / "summary.json").read_text())
    images = json.loads((out / "per_image.json").read_text())["images"]
    assert (out / "certified_vs_patch.png").read_bytes()[:4] == b"\x89PNG"
    assert len(images) == 12 and {r["label"] for r in images} == set(CLASSES)
    assert [(r["defense"], r["patch"]) for r in summary["results"]] == [
        (d, p) for d in ("mask", "clip", "none") for p in ("2%", "10")]
    for k, s in enumerate(summary["results"]):
        rows = [(r["label"], r["results"][k]) for r in images]
        n_right = sum(o["prediction_name"] == label for label, o in rows)
        n_cert = sum(o["certified"] and o["prediction_name"] == label for label, o in rows)
        n_att = sum(o["attacked_prediction_name"] == label for label, o in rows)
        assert s["clean"] == pytest.approx(100 * n_right / 12)
        assert s["certified"] == pytest.approx(100 * n_cert / 12)
        assert s["attacked"] == pytest.approx(100 * n_att / 12)
        assert s["certified"] <= s["attacked"] <= s["clean"]
        assert s["certified_but_flipped"] == 0
        assert f"{s['clean']:.2f}%" in text
    assert any(s["certified"] > 0 for s in summary["results"])  # the check of flips was not vacuous
    # The per-image mask certificates at 2% are the library's, image by image, file by file.
    model = bagnet.load_model(weights)
    tf = eval_transform(48, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    ds = ImageFolder(root / "val", transform=tf)
    by_path = {r["path"]: r["results"][0] for r in images}
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    cert = certify(model.eval(), x, patch_size="2%", defense="mask")
    for i, (path, _) in enumerate(ds.samples):
        rel = str(path.relative_to(root / "val")) if hasattr(path, "relative_to") else path[len(str(root / "val")) + 1:]
        assert by_path[rel]["certified"] == bool(cert.certified[i])
        assert by_path[rel]["prediction_name"] == CLASSES[int(cert.prediction[i])]


def test_max_images_takes_an_even_subset(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--max-images", "5", "--workers", "0",
               "--out", str(tmp_path)])
    assert rc == 0
    assert "5 images at 48 px, an even subset of 12" in capsys.readouterr().out
    images = json.loads((tmp_path / "per_image.json").read_text())["images"]
    assert len(images) == 5 and {r["label"] for r in images} == set(CLASSES)


def test_attack_runs_on_a_torchvision_model(folder_and_model, tmp_path, capsys):
    root, _ = folder_and_model
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    rc = main(["attack", "--data", str(root), "--model", "resnet18", "--weights", str(tmp_path / "r18.pt"),
               "--img-size", "32", "--patch", "25%", "--attack-steps", "2", "--attack-positions", "2",
               "--workers", "0", "--out", str(tmp_path / "a")])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    (row,) = summary["results"]
    assert row["defense"] == "none" and row["certified"] is None and row["attacked"] <= row["clean"]


@pytest.mark.parametrize("extra,message", [
    (["--patch", "0%"], "patch size '0%' is 0% of the image area"),
    (["--patch", "200%"], "patch size '200%' is 200% of the image area"),
    (["--attack", "--attack-positions", "0"], "--attack-positions must be at least 1, got 0"),
    (["--attack", "--attack-step-size", "0"], "--attack-step-size must be more than 0"),
    (["--patch", "60"], "does not fit"),
    (["--defense", "smooth"], "unknown --defense 'smooth'"),
    (["--clip-range", "1"], "are for --defense clip"),
    (["--defense", "clip", "--clip-range", "1"], "must be LOW,HIGH"),
    (["--defense", "clip", "--clip-range", "2,1"], "low < high"),
    (["--max-images", "0"], "--max-images must be at least 1"),
])
def test_bad_input_is_one_line(folder_and_model, tmp_path, capsys, extra, message):
    root, weights = folder_and_model
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--workers", "0", "--out", str(tmp_path),
               *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err


def test_certify_refuses_a_model_without_patch_logits(folder_and_model, tmp_path, capsys):
    root, _ = folder_and_model
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    rc = main(["certify", "--data", str(root), "--model", "resnet18", "--weights", str(tmp_path / "r18.pt"),
               "--workers", "0", "--out", str(tmp_path)])
    assert rc == 1 and "not a BagNet" in capsys.readouterr().err


def test_a_torchvision_model_is_refused_before_its_weights_are_downloaded(folder_and_model, tmp_path, capsys,
                                                                          monkeypatch):
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    root, _ = folder_and_model
    rc = main(["attack", "--data", str(root), "--model", "resnet18", "--defense", "mask", "--workers", "0",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "resnet18 is a torchvision classifier, not a BagNet" in err and len(err.splitlines()) == 1


def test_explain_says_whether_the_prediction_is_certified(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    image = root / "val" / "circle" / "0.png"
    rc = main(["explain", str(image), "--weights", str(weights), "--certify-patch", "5%", "--stride", "native",
               "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    record = json.loads((tmp_path / "0.json").read_text())
    entry = record["certified"]
    model = bagnet.load_model(weights).eval()
    cfg = model.pretrained_cfg
    # The image is 48 x 48, the model's size: explain sees it as it is, no resizing or crop.
    pixels = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(cfg[k]).reshape(3, 1, 1) for k in ("mean", "std"))
    x = ((pixels - mean) / std)[None]
    cert = certify(model, x, patch_size="5%", defense="mask")
    assert entry["certified"] == bool(cert.certified[0]) and entry["margin"] == pytest.approx(float(cert.margin[0]))
    assert entry["prediction"]["name"] == CLASSES[int(cert.prediction[0])]
    assert ("CERTIFIED" if entry["certified"] else "not certified") in text
    # The removed window: grid corner (r, c) of a 3 x 3 window (11 px patch, q 9, stride 8) in pixels.
    r, c = cert.removed[0].tolist()
    assert cert.window == (3, 3) and entry["patch_px_resized"] == 11
    assert entry["removed_box_resized"] == [8 * c, 8 * r, min(48, 8 * c + 25), min(48, 8 * r + 25)]
    rc = main(["explain", str(image), "--weights", str(weights), "--stride", "native", "--out", str(tmp_path / "b")])
    assert rc == 0 and "certified" not in json.loads((tmp_path / "b" / "0.json").read_text())


def test_torchrun_shards_images_and_gathers_the_same_results(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    common = ["--data", str(root), "--weights", str(weights), "--patch", "2%,10", "--defense", "mask,clip",
              "--workers", "0", "--device", "cpu"]
    assert main(["certify", *common, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bagnet",
           "certify", *common, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed: 2 processes, backend gloo" in done.stderr
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    one = json.loads((tmp_path / "one" / "per_image.json").read_text())
    two = json.loads((tmp_path / "two" / "per_image.json").read_text())
    # Batches differ (each process holds half of them), so margins agree to float rounding.
    margins = [[o.pop("margin") for o in r["results"]] for doc in (one, two) for r in doc["images"]]
    assert two == one
    half = len(margins) // 2
    for a, b in zip(margins[:half], margins[half:]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_no_model_options_mean_the_default_model(tmp_path, capsys, caplog):
    from bagnet.models import default_model

    model, _ = default_model()
    classes = list(model.pretrained_cfg["classes"])
    size = model.pretrained_cfg.get("img_size") or 224
    root = make_image_folder(tmp_path / "data", classes=tuple(classes), per_class=1, size=size, splits=("val",))
    caplog.set_level("INFO")
    rc = main(["certify", "--data", str(root), "--workers", "0", "--out", str(tmp_path / "o")])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["images"] == len(classes) and summary["model"] == model.model_name
    assert any("model:" in r.getMessage() for r in caplog.records)  # it says which model it used
