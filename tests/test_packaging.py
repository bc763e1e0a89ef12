"""What the package declares: data files that exist, a typed marker, shipped files that
record no machine's absolute paths, dependency floors that cover the APIs used."""

import re
from importlib import resources
from pathlib import Path

import pytest
import torch

import bagnet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(bagnet.__file__).parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+: reading pyproject.toml


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_data_pattern_matches_a_file():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["bagnet"]
    empty = [p for p in patterns if not list(PACKAGE.glob(p))]
    assert not empty, f"package-data patterns that match nothing: {empty}"
    assert "py.typed" in patterns and (PACKAGE / "py.typed").is_file()


def test_shipped_model_files_record_no_absolute_paths():
    for f in resources.files("bagnet.weights").iterdir():
        if not f.name.endswith(".pt"):
            continue
        meta = torch.load(f, map_location="cpu", weights_only=True).get("meta", {})
        text = repr({k: v for k, v in meta.items() if k != "state_dict"})
        assert not re.search(r"(?<![\w.])/(work|root|tmp|home|Users)/", text), f"{f.name}: {text}"


def test_core_floors_cover_the_apis_used():
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in _pyproject()["project"]["dependencies"]}
    # safetensors: bagnet's own model format (model.safetensors), no pickle.
    assert set(deps) == {"torch", "torchvision", "numpy", "pillow", "safetensors"}, "the core install is these"
    # torch.amp.GradScaler(device) (training) appeared in torch 2.3; torchvision 0.18 is its pair.
    assert deps["torch"] == "torch>=2.3" and deps["torchvision"] == "torchvision>=0.18"
    assert hasattr(torch.amp, "GradScaler")


def test_every_extra_the_code_names_exists():
    from bagnet._extras import _PACKAGES

    extras = _pyproject()["project"]["optional-dependencies"]
    for module, (dist, extra) in _PACKAGES.items():
        assert any(d.startswith(dist) for d in extras[extra]), f"{module}: [{extra}] does not install {dist}"
    assert "bagnet[all" in " ".join(extras["dev"]), "the test install must pull every extra"


def test_package_model_keeps_the_weights_and_drops_metrics_and_local_keys(tmp_path, capsys):
    """A shipped file's accuracy lives in weights/metrics.json only (tools/record_metrics.py),
    so the packaged file keeps no metrics that could disagree with it."""
    import runpy

    main = runpy.run_path(str(ROOT / "tools" / "package_model.py"))["main"]
    src = tmp_path / "m.pt"
    meta = {"img_size": 160, "metrics": {"top1": 84.4, "top5": 98.5, "epoch": 14}, "classes": ["a", "b"],
            "local_run": "dropped"}
    torch.save({"format": "bagnet-model/1", "model": "bagnet9_slim", "model_args": {"num_classes": 2},
                "state_dict": {"w": torch.ones(2)}, "meta": meta}, src)
    assert main([str(src), "--out", str(tmp_path / "a.pt"), "--img-size", "192"]) == 0
    out = torch.load(tmp_path / "a.pt", map_location="cpu", weights_only=True)
    assert out["meta"]["img_size"] == 192 and out["meta"]["train_img_size"] == 160
    assert "metrics" not in out["meta"] and "local_run" not in out["meta"]
    assert torch.equal(out["state_dict"]["w"], torch.ones(2))
    # packaging the served copy again keeps the size it was trained at
    assert main([str(tmp_path / "a.pt"), "--out", str(tmp_path / "b.pt"), "--img-size", "192"]) == 0
    assert torch.load(tmp_path / "b.pt", weights_only=True)["meta"]["train_img_size"] == 160
    # a path of this machine in the metadata is refused
    torch.save({"format": "bagnet-model/1", "model": "bagnet9_slim", "model_args": {}, "state_dict": {},
                "meta": {"command": "bagnet train --data /work/x"}}, src)
    assert main([str(src), "--out", str(tmp_path / "c.pt")]) == 1 and "absolute paths" in capsys.readouterr().err


def test_package_model_keeps_research_weights_in_float16_from_a_training_checkpoint(tmp_path):
    """--half: research weights under benchmarks/ in float16; a last.pt gives its EMA weights."""
    import runpy

    import bagnet
    from bagnet.testing import make_image_folder
    from bagnet.train import train
    from bagnet.train.config import TrainConfig

    main = runpy.run_path(str(ROOT / "tools" / "package_model.py"))["main"]
    data = make_image_folder(tmp_path / "data", per_class=3, size=32)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), model="bagnet_tiny", img_size=32, epochs=1, batch_size=4,
                      workers=0, ema=True, ema_decay=0.5, progress=False))
    out = tmp_path / "w.pt"
    assert main([str(run / "last.pt"), "--half", "--dataset", "shapes", "--out", str(out)]) == 0
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())
    assert saved["meta"]["crop_pct"] is None and saved["meta"]["img_size"] == 32
    ema = bagnet.load_model(run / "last.pt")  # the EMA weights, as the run evaluated them
    loaded = bagnet.load_model(out)
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(loaded.state_dict()[k], v.half().float())
