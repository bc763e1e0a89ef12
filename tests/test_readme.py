"""The README, a newcomer's first page: short, its Python example runs as written (offline,
in a temporary folder) and computes what it says, and its links lead somewhere."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    commands = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)[0].splitlines()
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[all]' && .venv/bin/bagnet demo",
        ".venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest",
    ]
    # .ci/run runs the same test command
    assert ".venv/bin/python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_lead_to_files():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert targets and not missing, missing


@pytest.mark.slow  # a full-resolution map and an explanation with the shipped model: ~10 s
def test_python_example_runs_and_computes_what_it_says(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.chdir(tmp_path)
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    assert ns["evidence"].shape == (1, 10, 20, 20) and ns["heat"].shape == (1, 2, 192, 192)
    torch.testing.assert_close(ns["logits"], ns["evidence"].mean((2, 3)))
    assert ns["result"].predictions[0].name in ns["model"].pretrained_cfg["class_names"]
