"""A shipped model's accuracy lives in one place, src/bagnet/weights/metrics.json: the
registry, pretrained_cfg and the Hub card read it, and the model cards and the README are
checked against it here (so a number quoted anywhere is the number measured)."""

import json
import re
import runpy
from pathlib import Path

import pytest
import torch

import bagnet
from bagnet.data.transforms import Preprocessing
from bagnet.models._pretrained import _model_card
from bagnet.models._weights import _PRETRAINED, shipped_metrics

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [(n, t) for (n, t), cfg in _PRETRAINED.items() if cfg.file is not None]


def _pct(v: float) -> str:
    return f"{v:.2f}%"


@pytest.mark.parametrize("name,tag", SHIPPED)
def test_every_shipped_model_has_its_metrics_and_their_provenance(name, tag):
    entry = shipped_metrics()[f"{name}-{tag}"]
    for key in ("top1", "top5", "images", "data", "preprocessing", "scoring", "command", "selection"):
        assert entry.get(key) not in (None, ""), f"{name}-{tag}: no {key}"
    assert entry["command"].startswith("bagnet eval ") and "--max-images" not in entry["command"]
    cfg = _PRETRAINED[(name, tag)]
    assert cfg.metrics == {"top1": entry["top1"], "top5": entry["top5"]}
    model = bagnet.create_model(name, pretrained=tag)
    assert model.pretrained_cfg["metrics"] == cfg.metrics
    assert model.pretrained_cfg["evaluation"]["preprocessing"] == entry["preprocessing"]
    # the preprocessing the number was measured with is the one the model is served with
    assert entry["preprocessing"] == Preprocessing.from_cfg(model.pretrained_cfg).describe()
    card = _model_card(model, "org/name")
    assert f"top-1 {entry['top1']:.2f}%" in card and entry["selection"] in card


@pytest.mark.parametrize("name,tag", SHIPPED)
def test_model_card_and_readme_quote_the_recorded_numbers(name, tag):
    entry = shipped_metrics()[f"{name}-{tag}"]
    card = (ROOT / "docs" / "models" / f"{name}-{tag}.md").read_text(encoding="utf-8")
    assert f"{_pct(entry['top1'])} / {_pct(entry['top5'])}" in card, f"{name}-{tag} card"
    for page in ("README.md", "docs/models/index.md"):  # the models table, in the README and on the site
        text = (ROOT / page).read_text(encoding="utf-8")
        rows = [line for line in text.splitlines() if line.startswith(f"| {name} ") and "top-1" in line]
        assert rows, f"{page}: the model table has no row for {name} with its top-1"
        for row in rows:
            quoted = re.findall(r"(\d+\.\d+)% top-1", row)
            assert quoted and all(q == f"{entry['top1']:.2f}" for q in quoted), f"{page}: {row}"


def test_record_metrics_refuses_what_would_misstate_a_number(tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "tools" / "record_metrics.py"))["main"]
    out = tmp_path / "metrics.json"
    good = {"model": "bagnet33_w25", "img_size": 192, "images": 3925, "top1": 85.0, "top5": 98.0, "skipped": 0,
            "folder_images": 3925, "max_images": None, "preprocessing": "p", "scoring": "s", "command": "bagnet eval"}

    def run(report, name="bagnet33_w25-imagenette"):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(report))
        return main([name, "--eval-json", str(path), "--selection", "nothing", "--metrics-file", str(out)])

    assert run({**good, "model": "bagnet9"}) == 1 and "not bagnet33_w25" in capsys.readouterr().err
    assert run({**good, "img_size": 160}) == 1 and "served at 192 px" in capsys.readouterr().err
    assert run({**good, "max_images": 200, "images": 200}) == 1 and "subset" in capsys.readouterr().err
    assert run({k: v for k, v in good.items() if k != "preprocessing"}) == 1
    assert "predates" in capsys.readouterr().err
    assert run(good, "bagnet33-imagenet") == 1 and "not a shipped model" in capsys.readouterr().err
    assert not out.exists()
    assert run(good) == 0
    assert json.loads(out.read_text())["bagnet33_w25-imagenette"]["top1"] == 85.0


def test_packaged_files_carry_no_metrics_of_their_own():
    """The metrics of a shipped file come from metrics.json only: a number inside the file
    could silently disagree with it."""
    from importlib import resources

    for f in resources.files("bagnet.weights").iterdir():
        if f.name.endswith(".pt"):
            meta = torch.load(f, map_location="cpu", weights_only=True).get("meta", {})
            assert "metrics" not in meta, f.name
