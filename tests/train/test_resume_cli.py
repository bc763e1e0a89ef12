"""`bagnet train --resume` from the command line: what the user typed decides, not the values.

Options typed again with the run's own values are accepted (a resume that repeats the
whole original command line, as a script does); a typed option that would change what the
run computes is refused, also when its value happens to be the default; `--epochs` may
grow, and the extended schedule continues at the rate a run planned for that length has.
"""

import json
import math

import pytest

from bagnet.cli.main import main
from bagnet.train import load_checkpoint

LR, WARMUP = 0.2, 1


def _base(data, out):
    # lr and batch size differ from the defaults (0.1, 32), which the refusals below type
    return ["train", "--data", str(data), "--model", "bagnet_tiny", "--img-size", "32", "--epochs", "2",
            "--batch-size", "6", "--lr", str(LR), "--warmup-epochs", str(WARMUP), "--workers", "0",
            "--device", "cpu", "--no-progress", "--deterministic", "--out", str(out)]


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _cosine(step, total, warmup):
    """The lr multiplier of a warmup + cosine schedule at ``step``, written out by hand."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """A 2-epoch run, trained in two sittings; the second repeats every option."""
    out = tmp_path_factory.mktemp("resume-cli") / "r"
    assert main([*_base(tiny_data, out), "--stop-after", "1"]) == 0
    assert main([*_base(tiny_data, out), "--resume"]) == 0  # the same options again: accepted
    assert [r["epoch"] for r in _log(out)] == [1, 2]
    return out


@pytest.mark.parametrize("typed,message", [
    (["--lr", "0.1"], "cannot change --lr 0.1 (run has 0.2)"),  # 0.1 is the default
    (["--batch-size", "32"], "cannot change --batch-size 32 (run has 6)"),  # the default too
    (["--lr", "0.1", "--seed", "3"], "cannot change --lr 0.1 (run has 0.2), --seed 3 (run has 0)"),
    (["--label-smoothing", "0.1"], "cannot change --label-smoothing 0.1 (run has 0.0)"),
])
def test_typed_options_that_change_the_run_are_refused(finished, tmp_path, capsys, typed, message):
    before = (finished / "last.pt").read_bytes()
    assert main(["train", "--out", str(finished), "--resume", "--epochs", "3", *typed]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (finished / "last.pt").read_bytes() == before


def test_a_finished_run_extended_with_epochs_continues_at_the_replanned_rate(finished, tiny_data, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    steps = load_checkpoint(out / "last.pt")["lr_scheduler"]["last_epoch"] // 2  # optimizer steps per epoch
    # --epochs 90 is the default: typed, it is obeyed (not mistaken for "not given")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "90", "--stop-after", "3", "--workers", "0"]) == 0
    log = _log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    # the first step of epoch 3 ran at the 90-epoch plan's rate for step 2 * steps, not at 0
    assert log[2]["lr"] == pytest.approx(LR * _cosine(2 * steps, 90 * steps, WARMUP * steps), rel=1e-9)
    assert log[2]["lr"] > 0.9 * LR
    assert load_checkpoint(out / "last.pt")["config"]["epochs"] == 90
    # the epochs before are untouched: the old plan ended at lr 0 after epoch 2
    assert log[1]["lr"] == pytest.approx(LR * _cosine(steps, 2 * steps, WARMUP * steps), rel=1e-9)


def test_a_finished_run_without_more_epochs_says_so(finished, capsys):
    assert main(["train", "--out", str(finished), "--resume"]) == 1
    assert "already finished epoch 2 of --epochs 2; raise --epochs" in capsys.readouterr().err
