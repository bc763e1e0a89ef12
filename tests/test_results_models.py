"""Every model docs/RESULTS.md and docs/ROBUSTNESS.md use is listed in docs/results/models.json
and loads from the repository with everything its preprocessing needs, and the accuracy
listed is the one its committed bagnet eval report printed."""

import json
from pathlib import Path

import pytest

import bagnet
from bagnet.data.transforms import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TABLE = json.loads((RESULTS / "models.json").read_text()) if (RESULTS / "models.json").is_file() else {}


def test_the_table_lists_the_models():
    assert TABLE, "docs/results/models.json lists no model"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_model_loads_with_its_preprocessing_and_its_recorded_accuracy(name):
    entry = TABLE[name]
    path = entry["path"]
    assert (ROOT / path).is_file() or "/" not in path, f"{name}: {path} is not committed"
    model = bagnet.load_model(ROOT / path if (ROOT / path).is_file() else path)
    cfg = model.pretrained_cfg
    assert model.model_name == entry["model"]
    assert len(cfg["classes"]) == model.num_classes and cfg.get("img_size")
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and "crop_pct" in cfg
    report = json.loads((RESULTS / entry["eval"]).read_text())
    assert report["model"] == entry["model"] and report["weights"] == path and report.get("max_images") is None
    assert (round(report["top1"], 2), round(report["top5"], 2)) == (entry["top1"], entry["top5"])
    assert report["preprocessing"] == Preprocessing.from_cfg(cfg).describe()
    assert report["images"] == 3925  # all of Imagenette val


def test_record_results_model_refuses_what_would_misstate_a_number(tmp_path, capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "tools" / "record_results_model.py"))["main"]
    model = bagnet.create_model("bagnet_tiny", num_classes=3)
    weights = str(bagnet.save_model_file(tmp_path / "m.pt", model, {"img_size": 64, "classes": ["a", "b", "c"]}))
    good = {"model": "bagnet_tiny", "weights": weights, "img_size": 64, "images": 30, "skipped": 0,
            "folder_images": 30, "max_images": None, "top1": 50.0, "top5": 100.0, "preprocessing": "p"}

    def run(report):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(report))
        return main(["tiny", "--path", weights, "--eval-json", str(path), "--results", str(tmp_path / "results")])

    assert run({**good, "model": "bagnet9"}) == 1 and "not bagnet_tiny" in capsys.readouterr().err
    assert run({**good, "weights": "other.pt"}) == 1 and "not " + weights in capsys.readouterr().err
    assert run({**good, "img_size": 32}) == 1 and "served at 64 px" in capsys.readouterr().err
    assert run({**good, "max_images": 10, "images": 10}) == 1 and "subset" in capsys.readouterr().err
    assert run({**good, "images": 20}) == 1 and "subset" in capsys.readouterr().err  # 20 of 30, no --max-images
    assert not (tmp_path / "results" / "models.json").exists()
    assert run(good) == 0
    assert json.loads((tmp_path / "results" / "models.json").read_text())["tiny"]["top1"] == 50.0
