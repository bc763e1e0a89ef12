"""`bagnet certify` and `bagnet attack` on a generated folder: what they print and write
agrees with itself and with the library, and bad input is one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert "(12 images)" in text and "short side resized to 48 px" in text
    assert "certified images the attack flipped: 0" in text
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


def test_max_images_takes_the_one_stratified_subset(folder_and_model, tmp_path, capsys):
    """--max-images N is the seeded, class-stratified subset every command takes: the same
    images as bagnet eval's --max-images N --seed S."""
    root, weights = folder_and_model
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--max-images", "5", "--seed", "3",
               "--workers", "0", "--out", str(tmp_path)])
    assert rc == 0
    assert "5 images, a class-stratified subset of 12 (--max-images 5, --seed 3)" in capsys.readouterr().out
    images = json.loads((tmp_path / "per_image.json").read_text())["images"]
    assert len(images) == 5 and {r["label"] for r in images} == set(CLASSES)
    assert main(["eval", "--data", str(root), "--weights", str(weights), "--max-images", "5", "--seed", "3",
                 "--workers", "0", "--predictions", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        evaluated = {line.split(",")[0] for line in f.read().splitlines()[1:]}
    assert {r["path"] for r in images} == evaluated


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
    # attack options without --attack would be silently ignored
    (["--attack-steps", "3"], "--attack-steps sets the attack, which only runs with --attack"),
    (["--attack-refine", "1", "--attack-positions", "3"], "--attack-positions, --attack-refine set the attack"),
    (["--patch", "60"], "does not fit"),
    (["--defense", "smooth"], "unknown --defense 'smooth'"),
    (["--clip-range", "1"], "are for --defense clip"),
    (["--defense", "clip", "--clip-range", "1"], "must be LOW,HIGH"),
    (["--defense", "clip", "--clip-range", "2,1"], "low < high"),
    (["--max-images", "0"], "--max-images must be at least 1"),
    (["--img-size", "4"], "--img-size 4 is smaller than the model's"),
    # 48 px on 48 px images: the window is the whole 5 x 5 map, masking would leave nothing
    (["--patch", "2%,48"], "a 48 px patch covers the whole 5x5 evidence map"),
    (["--defense", "clip", "--clip-range=0,3", "--tanh-shift", "-2"], "--clip-range replaces the tanh squashing"),
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


def test_explain_refuses_a_defence_without_a_sticker_size(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    rc = main(["explain", str(root / "val" / "circle" / "0.png"), "--weights", str(weights), "--certify-defense",
               "clip", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "--certify-defense chooses the defence of --certify-patch" in err
    assert not (tmp_path / "e").exists()


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


def _clip_trained(root, a, b):
    """The fixture's model saved as `bagnet train --clip-evidence A,B` saves it."""
    from bagnet.train.config import describe_clip_evidence

    model = bagnet.load_model(root / "m.pt")
    return bagnet.save_model_file(root / f"clip{a}.pt", model, {"train_evidence": describe_clip_evidence([a, b]),
                                                                "config": {"clip_evidence": [a, b]}})


def _val_inputs(root, model):
    ds = ImageFolder(root / "val", transform=eval_transform(48, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    return ds, torch.stack([ds[i][0] for i in range(len(ds))])


@pytest.mark.parametrize("extra,squashing,source", [
    ([], "tanh(0.5 * x - 1)", "the model's own training squashing"),
    (["--tanh-scale", "1", "--tanh-shift", "-2"], "tanh(1 * x - 2)", "given"),
])
def test_clip_defaults_to_the_models_training_squashing(folder_and_model, tmp_path, capsys, extra, squashing, source):
    root, _ = folder_and_model
    weights = _clip_trained(root, 0.5, -1.0)
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--patch", "10", "--defense", "clip",
               "--workers", "0", "--out", str(tmp_path), *extra])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"clip squashing: {squashing} ({source}" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clip_squashing"]["squashing"] == squashing and summary["clip_squashing"]["source"].startswith(source)
    # the per-image certificates are those of the squashing written out here
    model = bagnet.load_model(weights).eval()
    ds, x = _val_inputs(root, model)
    a, b = (0.5, -1.0) if not extra else (1.0, -2.0)
    cert = certify(model, x, patch_size=10, defense="clip", tanh_scale=a, tanh_shift=b)
    by_path = {r["path"]: r["results"][0] for r in json.loads((tmp_path / "per_image.json").read_text())["images"]}
    for i, (path, _) in enumerate(ds.samples):
        got = by_path[str(Path(path).relative_to(root / "val"))]
        assert got["certified"] == bool(cert.certified[i]) and got["margin"] == pytest.approx(float(cert.margin[i]))


def test_clip_on_a_plain_model_uses_the_recommended_squashing(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    assert main(["certify", "--data", str(root), "--weights", str(weights), "--patch", "10", "--defense", "mask,clip",
                 "--workers", "0", "--out", str(tmp_path)]) == 0
    assert "clip squashing: tanh(1 * x - 2) (the squashing docs/ROBUSTNESS.md recommends" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clip_squashing"]["scale"] == 1.0 and summary["clip_squashing"]["shift"] == -2.0


def test_explain_certificates_say_their_squashing_share_and_refuse_a_whole_map(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    image = root / "val" / "circle" / "0.png"
    common = [str(image), "--stride", "native", "--certify-patch"]
    # clip on a whole-image sticker: a prediction (never certified), its share said plainly
    assert main(["explain", *common, "48", "--certify-defense", "clip", "--weights", str(_clip_trained(root, 0.5, -1)),
                 "--out", str(tmp_path / "c")]) == 0
    entry = json.loads((tmp_path / "c" / "0.json").read_text())["certified"]
    assert entry["message"] == "not certified: a 48x48 px sticker (100% of the image) could change this prediction"
    assert entry["squashing"] == "tanh(0.5 * x - 1)" and "training squashing" in entry["squashing_source"]
    assert "squashing tanh(0.5 * x - 1)" in capsys.readouterr().out
    assert main(["explain", *common, "20", "--weights", str(weights), "--out", str(tmp_path / "p")]) == 0
    assert "(17% of the image)" in json.loads((tmp_path / "p" / "0.json").read_text())["certified"]["message"]
    # mask on a whole-image sticker: nothing is left to predict from; the image fails, nothing is written
    capsys.readouterr()
    assert main(["explain", *common, "48", "--weights", str(weights), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert f"bagnet explain: error: {image}: a 48 px patch covers the whole 5x5 evidence map" in err
    assert "nothing is left to decide on" in err and not (tmp_path / "m" / "0.json").exists()


# -- PatchCleanser: any classifier ------------------------------------------------------------


def _resnet18(tmp_path):
    torch.manual_seed(0)
    dnn = torchvision.models.resnet18(num_classes=3)
    torch.save(dnn.state_dict(), tmp_path / "r18.pt")
    return tmp_path / "r18.pt"


def test_certify_a_torchvision_model_with_the_cleanser(folder_and_model, tmp_path, capsys):
    root, _ = folder_and_model
    weights = _resnet18(tmp_path)
    out = tmp_path / "out"
    rc = main(["certify", "--data", str(root), "--model", "resnet18", "--weights", str(weights), "--img-size", "32",
               "--patch", "25%,4", "--defense", "cleanser,none", "--cleanser-masks", "3", "--workers", "0",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    # 25% of 32 x 32 is a 16 px sticker: stride ceil(17 / 3) = 6, masks of 21 px
    assert "cleanser 25%: 9 masks (3 x 3) of 21x21 px, stride 6x6 px, against a 16 px sticker, fill mean" in text
    assert "cleanser 4: 9 masks (3 x 3) of 13x13 px, stride 10x10 px, against a 4 px sticker" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cleanser"]["masks"] == 3 and len(summary["cleanser"]["mask_sets"]) == 2
    assert summary["cleanser"]["mask_sets"][0]["certification_passes"] == 45
    rows = {(s["defense"], s["patch"]): s for s in summary["results"]}
    assert rows[("cleanser", "25%")]["passes"] == 45 and rows[("none", "25%")]["passes"] == 1
    assert rows[("none", "25%")]["certified"] is None and rows[("cleanser", "25%")]["certified"] is not None
    # the per-image certificates are the library's
    dnn = torchvision.models.resnet18(num_classes=3)
    dnn.load_state_dict(torch.load(weights, weights_only=True))
    dnn.eval()
    ds = ImageFolder(root / "val", transform=eval_transform(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    cert = certify(dnn, x, patch_size="25%", defense="cleanser", masks=3)
    images = json.loads((out / "per_image.json").read_text())["images"]
    by_path = {r["path"]: r["results"][0] for r in images}
    for i, (path, _) in enumerate(ds.samples):
        got = by_path[str(Path(path).relative_to(root / "val"))]
        assert got["certified"] == bool(cert.certified[i]) and got["prediction"] == int(cert.prediction[i])
        assert got["window"] == [21, 21] and got["masks"] == 9


def test_attack_a_torchvision_model_defended_by_the_cleanser(folder_and_model, tmp_path, capsys):
    root, _ = folder_and_model
    rc = main(["attack", "--data", str(root), "--model", "resnet18", "--weights", str(_resnet18(tmp_path)),
               "--img-size", "32", "--patch", "25%", "--defense", "cleanser", "--cleanser-masks", "2",
               "--cleanser-fill", "black", "--attack-steps", "1", "--attack-positions", "2",
               "--attack-search-steps", "1", "--max-images", "3", "--workers", "0", "--out", str(tmp_path / "a")])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    (row,) = summary["results"]
    assert row["defense"] == "cleanser" and row["certified"] is None and row["attacked"] <= row["clean"]
    assert row["passes"] >= 4  # the first round: 2 x 2 masks
    assert summary["cleanser"] == {"masks": 2, "fill": "black", "mask_sets": [
        {"patch": "25%", "patch_px": 16, "image_size": [32, 32], "mask_size": [24, 24], "stride": [9, 9], "masks": 4,
         "certification_passes": 10, "mask_set": "4 masks (2 x 2) of 24x24 px, stride 9x9 px, against a 16 px sticker",
         "fill": "black"}]}


def test_the_cleanser_certifies_a_bagnet_like_any_classifier(folder_and_model, tmp_path, capsys):
    root, weights = folder_and_model
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--patch", "10", "--defense",
               "mask,cleanser", "--workers", "0", "--out", str(tmp_path)])
    assert rc == 0
    images = json.loads((tmp_path / "per_image.json").read_text())["images"]
    model = bagnet.load_model(weights).eval()
    ds, x = _val_inputs(root, model)
    cert = certify(model, x, patch_size=10, defense="cleanser")  # 6 x 6 masks by default
    assert cert.masks == 36
    by_path = {r["path"]: r["results"][1] for r in images}
    for i, (path, _) in enumerate(ds.samples):
        got = by_path[str(Path(path).relative_to(root / "val"))]
        assert got["defense"] == "cleanser" and got["certified"] == bool(cert.certified[i])
        assert got["margin"] == pytest.approx(float(cert.margin[i]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("extra,message", [
    (["--cleanser-masks", "3"], "--cleanser-masks and --cleanser-fill are for --defense cleanser"),
    (["--defense", "cleanser", "--cleanser-masks", "0"], "--cleanser-masks must be at least 1, got 0"),
    (["--defense", "cleanser", "--cleanser-fill", "grey"], "--cleanser-fill 'grey' must be mean, black or a number"),
    (["--defense", "cleanser", "--cleanser-masks", "1"], "a 10 px sticker with 1 mask per axis needs a 48x48 px mask, "
                                                         "the whole 48x48 image"),
    (["--defense", "cleanser", "--patch", "48"], "the sticker covers the whole image"),
])
def test_bad_cleanser_input_is_one_line(folder_and_model, tmp_path, capsys, extra, message):
    root, weights = folder_and_model
    rc = main(["certify", "--data", str(root), "--weights", str(weights), "--patch", "10", "--workers", "0",
               "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err
