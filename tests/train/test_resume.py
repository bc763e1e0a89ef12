"""A stopped or killed run, resumed, ends where an uninterrupted one does (deterministic mode)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bagnet.train import TrainConfig, train

from .conftest import assert_same_tensors, load_last, make_train_val, tiny_config

# Enough batches that an epoch lasts about a second, so a kill lands inside one.
EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_val(tmp_path_factory.mktemp("resume-data"), 30)


def _config(data, out, **kw):
    # One worker process: worker seeding and the loader generator are part of what resumes.
    # EMA every second step: its step counter must survive the resume too.
    return tiny_config(data, out, epochs=EPOCHS, batch_size=4, workers=1, ema=True, ema_decay=0.9, ema_steps=2, **kw)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses below run with OMP_NUM_THREADS=1
    try:
        train(_config(data, out))
    finally:
        torch.set_num_threads(threads)
    return out


def _assert_same_run(a, b):
    ca, cb = load_last(a), load_last(b)
    assert ca["epoch"] == cb["epoch"] == EPOCHS
    assert_same_tensors(ca["model"], cb["model"])
    assert_same_tensors(ca["ema"], cb["ema"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert ca["lr_scheduler"]["last_epoch"] == cb["lr_scheduler"]["last_epoch"]
    la = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "log.jsonl").read_text().splitlines()]
    drop = ("time", "train_img_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == [
        {k: v for k, v in r.items() if k not in drop} for r in lb
    ]


def test_stopped_and_resumed_run_ends_at_the_same_weights(data, uninterrupted, tmp_path):
    out = tmp_path / "parts"
    torch.set_num_threads(1)
    train(_config(data, out, stop_after=1))
    assert load_last(out)["epoch"] == 1
    # Resume as a user would: only --out and --resume; the rest comes from the checkpoint.
    train(TrainConfig(out=str(out), resume="last", progress=False), explicit={"out", "resume"})
    _assert_same_run(uninterrupted, out)


def _cli(data, out, *extra):
    cfg = _config(data, out)
    return [
        sys.executable, "-m", "bagnet", "train", "--data", str(data), "--out", str(out), "--model", cfg.model,
        "--img-size", str(cfg.img_size), "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
        "--lr", str(cfg.lr), "--warmup-epochs", str(cfg.warmup_epochs), "--label-smoothing",
        str(cfg.label_smoothing), "--workers", "1", "--ema", "--ema-decay", "0.9", "--ema-steps", "2",
        "--deterministic", "--device", "cpu", *extra,
    ]


def test_sigkill_mid_epoch_then_resume(data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.pt").exists():  # appears atomically once epoch 1 is saved
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.005)
        first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        # into epoch 2, but well before its end also on a fast machine
        time.sleep(min(0.2, 0.2 * first["train_images"] / first["train_img_s"]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1, "the kill must land inside epoch 2 for this test to mean anything"
    assert load_last(out)["epoch"] == 1  # intact, not half-written

    done = subprocess.run(_cli(data, out, "--resume"), check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _assert_same_run(uninterrupted, out)
    assert (out / "model.pt").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
