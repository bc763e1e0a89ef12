"""Your own data, end to end: fine-tuning onto new classes, a model file that describes the
new model only, and the --val-split a run held out, found again by `bagnet eval`."""

import json
import logging
import shutil

import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from bagnet.explain import unknown_check
from bagnet.testing import make_image_folder
from bagnet.train import loop as train_loop
from bagnet.train import train
from bagnet.train._files import selection_note

from .conftest import tiny_config

TWO = ("ant", "bee")
# A threshold calibrated for the source model, as `bagnet calibrate` writes it.
UNKNOWN = {"method": "max_logit", "threshold": 1.5, "cost": 0.05}


@pytest.fixture(scope="module")
def source_run(tiny_data, tmp_path_factory):
    """A tiny model trained on 3 classes (circle, square, stripes)."""
    out = tmp_path_factory.mktemp("source") / "r"
    train(tiny_config(tiny_data, out, epochs=1))
    return out


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """A new data set without a split: 2 class folders of 6 images."""
    root = tmp_path_factory.mktemp("two") / "two"
    make_image_folder(root, classes=TWO, per_class=6, size=40, splits=("train",), seed=3)
    shutil.move(root / "train" / "ant", root / "ant")
    shutil.move(root / "train" / "bee", root / "bee")
    (root / "train").rmdir()
    return root


def _start_weights(monkeypatch):
    """The weights the first training step starts from, captured as train_one_epoch is called."""
    seen = {}
    real = train_loop.train_one_epoch

    def spy(model, *args, **kwargs):
        seen.setdefault("state", {k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_loop, "train_one_epoch", spy)
    return seen


def _meta(path):
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def test_fine_tuning_onto_new_classes_gets_a_new_head_and_keeps_every_other_weight(
        source_run, two_classes, tmp_path, monkeypatch, caplog):
    start = _start_weights(monkeypatch)
    source = bagnet.load_model(source_run / "model.pt").state_dict()
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="bagnet.train.loop"):
        # no model name: the run folder names it
        train(tiny_config(two_classes, out, model="", weights=str(source_run), epochs=1, val_split=0.34))
    assert f"new head for 2 classes (two); all other weights from {source_run}" in caplog.text
    assert "its 3-class head (circle, square, stripes) is dropped" in caplog.text
    head = {"fc.weight", "fc.bias"}
    assert set(start["state"]) == set(source)
    for k, v in source.items():
        if k in head:
            assert start["state"][k].shape[0] == 2 and v.shape[0] == 3, k
        else:
            assert torch.equal(start["state"][k], v), k
    model = bagnet.load_model(out / "model.pt")
    assert model.model_name == "bagnet_tiny" and model.num_classes == 2 and model.model_args["num_classes"] == 2
    assert model.pretrained_cfg["classes"] == list(TWO)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    assert json.loads((out / "config.json").read_text())["model"] == "bagnet_tiny"


def test_fine_tuning_the_shipped_weights_by_tag(two_classes, tmp_path, caplog):
    """The reviewer's case: the shipped Imagenette model (10 classes, a calibrated threshold)
    onto a new data set, by the CLI."""
    shipped = bagnet.create_model("bagnet17_slim", pretrained="imagenette")
    assert shipped.pretrained_cfg.get("unknown")  # the source does carry one
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="bagnet.train.loop"):
        assert main(["train", "--data", str(two_classes), "--model", "bagnet17_slim", "--weights", "imagenette",
                     "--val-split", "0.34", "--img-size", "40", "--epochs", "1", "--batch-size", "8", "--lr", "0.01",
                     "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    assert "new head for 2 classes (two); all other weights from imagenette" in caplog.text
    model = bagnet.load_model(out / "model.pt")
    assert model.num_classes == 2 and model.pretrained_cfg["classes"] == list(TWO)
    assert "unknown" not in model.pretrained_cfg and "class_names" not in model.pretrained_cfg
    assert model.pretrained_cfg["img_size"] == model.pretrained_cfg["train_img_size"] == 40
    with torch.no_grad():
        assert unknown_check(model.eval(), model(torch.randn(1, 3, 40, 40))[0]) is None


def test_weights_that_do_not_name_their_model_need_model(two_classes, tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save(bagnet.create_model("bagnet_tiny", num_classes=3).state_dict(), plain)
    base = ["train", "--data", str(two_classes), "--val-split", "0.34", "--weights", str(plain), "--img-size", "32",
            "--epochs", "1", "--batch-size", "6", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not say which model it belongs to; add --model NAME" in err
    assert main([*base, "--model", "bagnet_tiny", "--out", str(tmp_path / "b")]) == 0
    assert bagnet.load_model(tmp_path / "b" / "model.pt").num_classes == 2
    assert main(["train", "--data", str(two_classes), "--out", str(tmp_path / "c")]) == 1
    assert "--model is required (or --weights" in capsys.readouterr().err


def test_weights_without_class_names_and_the_right_head_size_keep_their_head(two_classes, tmp_path, monkeypatch):
    start = _start_weights(monkeypatch)
    src = bagnet.create_model("bagnet_tiny", num_classes=2)
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    train(tiny_config(two_classes, tmp_path / "r", weights=str(plain), epochs=1, val_split=0.34))
    for k, v in src.state_dict().items():
        assert torch.equal(start["state"][k], v), k


def test_a_trained_model_describes_itself_not_its_initial_weights(tiny_data, tmp_path):
    """Every meta field of model.pt and model/ is the new model's; none of the source's
    calibration, sizes, names or metrics survives, also through the EMA that is shipped."""
    torch.manual_seed(0)
    src = bagnet.create_model("bagnet_tiny", num_classes=3)
    stale = {"classes": ["circle", "square", "stripes"], "class_names": ["Circle", "Square", "Stripes"],
             "img_size": 192, "train_img_size": 160, "crop_pct": 0.5, "unknown": UNKNOWN, "dataset": "elsewhere",
             "metrics": {"top1": 99.0}, "command": "bagnet train --old", "weights": "ema", "epoch": 7,
             "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    path = bagnet.save_model_file(tmp_path / "calibrated.pt", src, stale)
    out = tmp_path / "r"
    cfg = tiny_config(tiny_data, out, weights=str(path), epochs=1, img_size=36, ema=True, ema_decay=0.5,
                      command="bagnet train --new")
    train(cfg)
    expected = {"mean", "std", "classes", "img_size", "train_img_size", "dataset", "train_evidence", "command",
                "config", "metrics", "initial_weights"}
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    for meta in (_meta(out / "model.pt"), json.loads((out / "model" / "config.json").read_text())["bagnet"]["meta"]):
        assert set(meta) == expected
        assert meta["img_size"] == meta["train_img_size"] == 36
        assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25]  # the weights' normalization
        assert meta["dataset"] == str(tiny_data) and meta["command"] == "bagnet train --new"
        assert meta["metrics"] == {"top1": best["best"]["top1"], "top5": best["best"]["top5"], "epoch": 1,
                                   "split": "val/", "selection": selection_note(cfg)}
        # chosen on val/, and the file says what that means for val/'s accuracy
        assert "optimistic" in meta["metrics"]["selection"]
        assert meta["initial_weights"] == str(path)
    for source in (out / "model.pt", out / "model", out / "last.pt"):
        model = bagnet.load_model(source)
        assert "unknown" not in model.pretrained_cfg and model.pretrained_cfg["crop_pct"] is None, source
        assert model.pretrained_cfg["img_size"] == model.pretrained_cfg["train_img_size"] == 36, source
        with torch.no_grad():
            assert unknown_check(model.eval(), model(torch.randn(1, 3, 36, 36))[0]) is None
    timm_cfg = json.loads((out / "model" / "config.json").read_text())["pretrained_cfg"]
    assert timm_cfg["input_size"] == [3, 36, 36]


def test_model_folder_input_size_follows_img_size_from_scratch(tiny_data, tmp_path):
    out = tmp_path / "r"
    train(tiny_config(tiny_data, out, epochs=1, img_size=36))
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 36, 36]
    assert config["pretrained_cfg"]["mean"] == list(IMAGENET_MEAN) and config["pretrained_cfg"]["std"] == list(IMAGENET_STD)
    meta = _meta(out / "model.pt")
    assert meta["img_size"] == meta["train_img_size"] == 36 and "initial_weights" not in meta and "val_split" not in meta


# -- the --val-split a run held out, found again by `bagnet eval` ---------------------------------


@pytest.fixture(scope="module")
def split_run(tiny_data, tmp_path_factory):
    """A run on a folder of class folders (8 images each) with --val-split 0.25: 2 held out per class."""
    root = tmp_path_factory.mktemp("split")
    data = root / "shapes"
    shutil.copytree(tiny_data / "train", data)
    out = root / "r"
    train(tiny_config(data, out, epochs=1, val_split=0.25, seed=5))
    return data, out


def test_the_model_file_records_the_held_out_images(split_run):
    data, out = split_run
    record = _meta(out / "model.pt")["val_split"]
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    assert len(files) == 24
    assert record["fraction"] == 0.25 and record["seed"] == 5 and record["images"] == 24
    assert record["folder"] == str(data.resolve())
    held = record["held_out"]
    assert len(held) == 6 and set(held) <= set(files)
    metrics = _meta(out / "model.pt")["metrics"]
    assert metrics["split"] == "held out of train (--val-split)" and "test accuracy" in metrics["selection"]
    assert sorted(h.split("/")[0] for h in held) == ["circle"] * 2 + ["square"] * 2 + ["stripes"] * 2
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert log["val_images"] == 6 and log["train_images"] == 18
    # the same record in the folder without pickle, and in last.pt
    assert json.loads((out / "model" / "config.json").read_text())["bagnet"]["meta"]["val_split"] == record
    assert bagnet.load_model(out / "last.pt").pretrained_cfg["val_split"] == record


def _eval(args, tmp_path, name):
    report = tmp_path / f"{name}.json"
    assert main([*args, "--workers", "0", "--device", "cpu", "--json", str(report)]) == 0
    return json.loads(report.read_text())


def test_eval_on_the_training_folder_scores_the_held_out_images(split_run, tmp_path, capsys):
    data, out = split_run
    base = ["eval", "--data", str(data), "--split", ".", "--weights", str(out)]
    report = _eval(base, tmp_path, "auto")
    printed = capsys.readouterr().out
    assert f"scoring the 6 images held out of {data}" in printed and "not the other 18 it was trained on" in printed
    assert report["images"] == 6 and {c: r["images"] for c, r in report["per_class"].items()} == {
        "circle": 2, "square": 2, "stripes": 2}
    assert report["val_split"] == {"subset": "held-out", "images_in_folder": 24, "held_out": 6, "trained_on": 18,
                                   "fraction": 0.25, "seed": 5, "folder_changed_since_training": False}
    # the run's own val measure on the same 6 images
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert report["top1"] == pytest.approx(log["val_top1"])

    everything = _eval([*base, "--subset", "all"], tmp_path, "all")
    printed = capsys.readouterr().out
    assert "WARNING: 18 of these 24 images were trained on" in printed
    assert everything["images"] == 24 and everything["val_split"]["subset"] == "all"

    # a copy of the folder elsewhere is recognised by its image paths
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert _eval(["eval", "--data", str(moved), "--split", ".", "--weights", str(out)], tmp_path, "moved")["images"] == 6


def test_eval_subset_held_out_on_another_folder_is_refused(split_run, tiny_data, capsys):
    _, out = split_run
    assert main(["eval", "--data", str(tiny_data), "--weights", str(out), "--subset", "held-out",
                 "--workers", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--subset held-out: the model records a --val-split of" in err


def test_eval_of_a_missing_data_folder_names_the_folder_not_the_split(tmp_path, capsys):
    missing = tmp_path / "missing_dir"
    assert main(["eval", "--data", str(missing), "--weights", "imagenette", "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--data {missing} does not exist" in err and "--split" not in err
