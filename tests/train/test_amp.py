"""`--amp auto` picks the precision the machine is fast in; a resumed run may change it.

bfloat16 autocast on a CPU without AMX or AVX-512 BF16 is emulated: a ResNet-18 training
step ran about 13 times slower than float32 on an AVX2-only CPU. `auto` must therefore
follow the machine's bfloat16 units, an explicit `bf16` where they are missing must warn,
and a run started on one machine must be able to resume on another in its fast precision.
"""

import json
import logging

import pytest
import torch

import bagnet._device as device_mod
from bagnet._device import resolve_amp
from bagnet.cli.main import main


@pytest.mark.parametrize("units,expected", [(None, "none"), ("this CPU has AMX bfloat16 tiles", "bf16")])
def test_auto_follows_the_machines_bfloat16_units(monkeypatch, units, expected):
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": units)
    amp, note = resolve_amp("auto", torch.device("cpu"))
    assert amp == expected and note.startswith("--amp auto: ")
    assert ("float32" in note) == (expected == "none")


def test_explicit_bf16_without_bfloat16_units_is_kept_with_a_warning(monkeypatch):
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": None)
    amp, note = resolve_amp("bf16", "cpu")
    assert amp == "bf16" and "emulated" in note and "--amp auto" in note
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": "this CPU has AVX-512 BF16 instructions")
    assert resolve_amp("bf16", "cpu") == ("bf16", None)
    assert resolve_amp("none", "cpu") == ("none", None)


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_a_run_resumes_in_another_precision(tiny_data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "r"
    base = ["train", "--data", str(tiny_data), "--model", "bagnet_tiny", "--img-size", "32", "--epochs", "2",
            "--batch-size", "6", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]
    # the first sitting on a machine with bfloat16 units: auto trains in bf16
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": "this CPU has AMX bfloat16 tiles")
    with caplog.at_level(logging.INFO, logger="bagnet"):
        assert main([*base, "--amp", "auto", "--stop-after", "1"]) == 0
    assert "--amp auto: bf16 (this CPU has AMX bfloat16 tiles)" in caplog.text
    # the second on one without: float32 typed on resume is accepted, not refused
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bagnet"):
        assert main(["train", "--out", str(out), "--resume", "--amp", "none", "--workers", "0"]) == 0
    assert "cannot change" not in caplog.text
    log = _log(out)
    assert [(r["epoch"], r["amp"]) for r in log] == [(1, "bf16"), (2, "none")]
    assert json.loads((out / "config.json").read_text())["amp"] == "none"


def test_bf16_typed_on_a_cpu_without_units_warns_before_training(tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "fast_bfloat16", lambda device="cpu": None)
    with caplog.at_level(logging.WARNING, logger="bagnet"):
        assert main(["train", "--data", str(tiny_data), "--model", "bagnet_tiny", "--img-size", "32", "--epochs",
                     "1", "--batch-size", "6", "--workers", "0", "--device", "cpu", "--no-progress", "--amp", "bf16",
                     "--out", str(tmp_path / "b")]) == 0
    assert "bfloat16 is emulated" in caplog.text
