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
