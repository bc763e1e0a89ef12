"""A whole run: what lands in RUN_DIR, the model file, and every refusal a user can meet."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.cli.main import main
from bagnet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from bagnet.train import TrainConfig, load_checkpoint, train

from .conftest import assert_same_tensors, tiny_config


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    train(tiny_config(tiny_data, out, command="bagnet train ..."))
    return out


def test_run_dir_holds_config_log_events_and_checkpoints(run, tiny_data):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "log.jsonl", "last.pt", "best.pt", "model.pt"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "bagnet_tiny" and config["epochs"] == 3 and config["img_size"] == 32
    assert config["classes"] == ["circle", "square", "stripes"] and config["data"] == str(tiny_data)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for key in ("train_loss", "train_top1", "train_top5", "val_top1", "val_top5", "lr", "train_img_s", "skipped", "time"):
        assert all(isinstance(r[key], (int, float)) for r in log), key
    assert log[0]["lr"] < log[1]["lr"]  # warmup, then the cosine decay
    assert log[1]["lr"] > log[2]["lr"]
    # best.pt is the epoch with the highest val top-1 (the first one on ties)
    best = max(range(3), key=lambda i: (log[i]["val_top1"], -i))
    assert load_checkpoint(run / "best.pt")["epoch"] == best + 1
    assert log[-1]["best_top1"] == log[best]["val_top1"]


def test_model_file_loads_everywhere_with_its_metadata(run):
    best = load_checkpoint(run / "best.pt")
    named = bagnet.create_model("bagnet_tiny", pretrained=run / "model.pt")
    unnamed = bagnet.load_model(run / "model.pt")
    folder = bagnet.load_model(run / "model")  # model.safetensors + config.json: no pickle
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "model.safetensors"]
    for model in (named, unnamed, folder):
        assert_same_tensors(model.state_dict(), best["model"])
        cfg = model.pretrained_cfg
        assert cfg["classes"] == ["circle", "square", "stripes"] and cfg["img_size"] == 32
        assert cfg["mean"] == list(IMAGENET_MEAN) and cfg["std"] == list(IMAGENET_STD)
        assert cfg["metrics"]["top1"] == best["best"]["top1"] and cfg["metrics"]["epoch"] == best["epoch"]
        assert cfg["command"] == "bagnet train ..." and cfg["config"]["lr"] == 0.2
    assert unnamed.model_name == "bagnet_tiny" and unnamed.num_classes == 3


def test_corrupt_images_are_skipped_and_counted_in_the_log(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, format="JPEG")
    (data / "train" / "circle" / "cut.jpg").write_bytes(buf.getvalue()[:200])
    (data / "train" / "square" / "text.jpg").write_text("not a JPEG")
    (data / "val" / "stripes" / "bad.png").write_bytes(b"nope")
    train(tiny_config(data, tmp_path / "r", epochs=2))
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in log] == [3, 3]


def test_val_split_when_there_is_no_val_folder(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data / "train")
    with pytest.raises(FileNotFoundError, match="--val-split 0.1"):
        train(tiny_config(data, tmp_path / "a", epochs=1))
    train(tiny_config(data, tmp_path / "b", epochs=1, val_split=0.25))
    log = json.loads((tmp_path / "b" / "log.jsonl").read_text())
    assert log["val_top1"] * 6 / 100 == pytest.approx(round(log["val_top1"] * 6 / 100))  # 2 of 8 per class


def test_a_folder_of_class_folders_trains_with_val_split(tiny_data, tmp_path, capsys):
    """No train/ and val/: the class folders themselves, as Caltech-101 ships."""
    data = tmp_path / "caltech"
    shutil.copytree(tiny_data / "train", data)
    args = ["train", "--data", str(data), "--model", "bagnet_tiny", "--img-size", "32", "--epochs", "1",
            "--batch-size", "6", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--val-split 0.1 to train on the class folders of" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--val-split", "0.25"]) == 0
    [record] = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert record["train_images"] == 3 * 6 and record["val_images"] == 3 * 2  # 2 of 8 per class held out
    assert load_checkpoint(tmp_path / "b" / "last.pt")["classes"] == ["circle", "square", "stripes"]


@pytest.mark.parametrize("layout", ["one-class", "one-class-with-images"])
def test_fewer_than_two_classes_are_refused_before_training(tiny_data, tmp_path, capsys, layout):
    data = tmp_path / "data"
    for split in ("train", "val"):
        shutil.copytree(tiny_data / split / "circle", data / split / "circle")
        if layout == "one-class-with-images":  # a second class folder, but empty
            (data / split / "square").mkdir()
    out = tmp_path / "r"
    assert main(["train", "--data", str(data), "--model", "bagnet_tiny", "--out", str(out), "--workers", "0",
                 "--epochs", "1", "--img-size", "32", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "has images of 1 class (circle); a classifier needs at least 2 classes" in err
    assert not (out / "model.pt").exists() and not (out / "last.pt").exists()


def test_resume_refuses_other_classes_changed_options_and_an_existing_run(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = tmp_path / "r"
    train(tiny_config(data, out, epochs=2, stop_after=1))
    with pytest.raises(ValueError, match="already holds a run; add --resume"):
        train(tiny_config(data, out, epochs=2))
    with pytest.raises(ValueError, match="cannot change --lr 0.5"):
        train(tiny_config(data, out, epochs=2, lr=0.5, resume="last"), explicit={"lr", "resume"})
    for split in ("train", "val"):
        (data / split / "square").rename(data / split / "box")
    with pytest.raises(ValueError, match="missing: square; unexpected: box"):
        train(TrainConfig(out=str(out), resume="last", progress=False), explicit={"out", "resume"})


def test_weights_for_as_many_other_classes_get_a_new_head(tiny_data, tmp_path, caplog):
    """Same head size, other class names: the head is new all the same (its rows meant other classes)."""
    torch.manual_seed(0)
    model = bagnet.create_model("bagnet_tiny", num_classes=3)
    with torch.no_grad():
        model.fc.weight.fill_(7.0)
    bagnet.save_model_file(tmp_path / "other.pt", model, {"classes": ["cat", "dog", "emu"]})
    with caplog.at_level("INFO", logger="bagnet.train.loop"):
        train(tiny_config(tiny_data, tmp_path / "r", weights=str(tmp_path / "other.pt"), epochs=1, lr=1e-6))
    assert "new head for 3 classes (" in caplog.text and "its 3-class head (cat, dog, emu) is dropped" in caplog.text
    tuned = bagnet.load_model(tmp_path / "r" / "model.pt")
    assert tuned.pretrained_cfg["classes"] == ["circle", "square", "stripes"]
    assert (tuned.fc.weight - 7.0).abs().min() > 1  # a fresh head, not the source's rows after a tiny step


def test_fine_tuning_from_a_model_file_with_the_same_classes(run, tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "ft", epochs=1, weights=str(run / "model.pt")))
    first = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    source = bagnet.load_model(run / "model.pt")
    start = source.state_dict()
    names = [n for n, _ in source.named_parameters()]  # weights; BN statistics may move far in an epoch
    fresh = bagnet.create_model("bagnet_tiny", num_classes=3).state_dict()  # where training from scratch starts

    def dist(a, b):
        return sum((a[k].float() - b[k].float()).norm() ** 2 for k in names).sqrt().item()

    # one epoch of small steps moves the weights away from the start, and stays much nearer
    # to it than to a fresh initialization
    assert 0 < dist(first, start) < 0.5 * dist(first, fresh)


def test_cli_errors_are_one_line(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data / "train")
    args = ["train", "--data", str(data), "--model", "bagnet_tiny", "--out", str(tmp_path / "r"), "--workers", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val does not exist" in err and "--val-split" in err
    assert main(["train", "--data", str(data), "--model", "bagnet_tiny"]) == 1
    assert "--out RUN_DIR is required" in capsys.readouterr().err
    assert main([*args, "--lr", "-1"]) == 1
    assert "--lr must be positive" in capsys.readouterr().err


def test_checkpoints_load_without_pickled_code(run):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert {"model", "optimizer", "lr_scheduler", "scaler", "ema", "epoch", "rng", "classes", "config"} <= set(ckpt)


def test_a_deterministic_run_gives_back_the_process_wide_torch_flags(tiny_data, tmp_path):
    # Without the restore, every op after one deterministic training ran in deterministic
    # mode, and kernels without a deterministic version (captum's DeepLift path) refused.
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    try:
        train(tiny_config(tiny_data, tmp_path / "run", epochs=1, deterministic=True))
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = False
