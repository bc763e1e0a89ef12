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
