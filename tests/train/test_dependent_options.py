"""Options that only act under another setting (--ema-decay without --ema, --gamma without
--schedule step, ...) are refused instead of being silently ignored."""

import json

import pytest

from bagnet.cli.main import main
from bagnet.train import train

from .conftest import tiny_config

BASE = ["--model", "bagnet_tiny", "--img-size", "32", "--batch-size", "6", "--workers", "0", "--device", "cpu",
        "--no-progress"]


@pytest.mark.parametrize("extra,message", [
    (["--ema-decay", "0.9"], "--ema-decay 0.9 only acts with --ema; add --ema or drop --ema-decay"),
    (["--ema-steps", "2"], "--ema-steps 2 only acts with --ema"),
    (["--schedule", "step", "--min-lr", "0.01"], "--min-lr 0.01 only acts with --schedule cosine"),
    (["--gamma", "0.5"], "--gamma 0.5 only acts with --schedule step"),
    (["--step-size", "3"], "--step-size 3 only acts with --schedule step"),
    (["--mask-sticker", "4"], "--mask-sticker 4 only acts with --mask-patches N"),
    (["--cleanser-masks", "3"], "--cleanser-masks 3 only acts with --mask-patches N"),
])
def test_an_option_that_would_not_act_is_refused(tiny_data, tmp_path, capsys, extra, message):
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--epochs", "1", *BASE, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_the_same_options_with_their_switch_are_taken(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", *BASE, "--ema",
               "--ema-decay", "0.9", "--schedule", "step", "--gamma", "0.5", "--step-size", "3"])
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert (config["ema"], config["ema_decay"], config["gamma"], config["step_size"]) == (True, 0.9, 0.5, 3)


def test_a_resumed_run_supplies_the_switch(tiny_data, tmp_path, capsys):
    """On resume, --ema comes from the stored run: its own --ema-decay typed again is no error,
    and an --ema-steps on a run without EMA is, even at the run's own value."""
    ema, plain = tmp_path / "ema", tmp_path / "plain"
    for out, switch in ((ema, ["--ema", "--ema-decay", "0.9"]), (plain, [])):
        rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--stop-after", "1",
                   *BASE, *switch])
        assert rc == 0, capsys.readouterr().err
    assert main(["train", "--data", str(tiny_data), "--out", str(ema), "--resume", "--ema-decay", "0.9",
                 "--no-progress", "--workers", "0", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (ema / "log.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    rc = main(["train", "--data", str(tiny_data), "--out", str(plain), "--resume", "--ema-steps", "1",
               "--no-progress", "--workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "--ema-steps 1 only acts with --ema" in err, err


def test_the_python_api_refuses_them_too(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="--gamma 0.5 only acts with --schedule step"):
        train(tiny_config(tiny_data, tmp_path / "r", epochs=1, gamma=0.5))
    with pytest.raises(ValueError, match="--mask-sticker 4 only acts with --mask-patches N"):
        train(tiny_config(tiny_data, tmp_path / "r", epochs=1, mask_sticker="4"))
