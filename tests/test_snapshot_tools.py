"""tools/snapshot_run.sh and tools/restore_run.sh: a training's progress kept in git survives
the loss of runs/ whole, with a log that matches the checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str, *args: str, training: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINING": str(training), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "tools" / name), *args], env=env, capture_output=True, text=True)


def _run(folder: Path, epoch: int, logged: int, floats: int) -> dict:
    folder.mkdir(parents=True)
    ckpt = {"epoch": epoch, "weights": torch.arange(floats, dtype=torch.float32)}
    torch.save(ckpt, folder / "last.pt")
    (folder / "config.json").write_text(json.dumps({"epochs": 9}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "val_top1": 10.0 * e}) + "\n"
                                              for e in range(1, logged + 1)))
    return ckpt


@pytest.mark.parametrize("floats, parts", [(1000, 0), (6_000_000, 2)])  # 4 kB, and 24 MB in 19 MB parts
def test_snapshot_then_restore_gives_the_checkpoint_and_its_log(tmp_path, floats, parts):
    run, training = tmp_path / "runs" / "net", tmp_path / "training"
    # An epoch ended after last.pt was copied: the log has epoch 3, the checkpoint epoch 2.
    ckpt = _run(run, epoch=2, logged=3, floats=floats)
    done = _tool("snapshot_run.sh", str(run), training=training)
    assert done.returncode == 0, done.stderr
    snap = training / "net"
    assert len(list(snap.glob("last.pt.part-*"))) == parts
    assert all(p.stat().st_size <= 19 * 2**20 for p in snap.iterdir())
    assert [json.loads(line)["epoch"] for line in (snap / "log.jsonl").read_text().splitlines()] == [1, 2]
    # runs/ is lost with its machine; the training script restores it before --resume
    lost = tmp_path / "later" / "net"
    done = _tool("restore_run.sh", str(lost), training=training)
    assert done.returncode == 0 and "restored" in done.stdout, done.stderr
    back = torch.load(lost / "last.pt", weights_only=False)
    assert back["epoch"] == 2 and torch.equal(back["weights"], ckpt["weights"])
    assert (lost / "log.jsonl").read_text() == (snap / "log.jsonl").read_text()
    # a run folder that has its last.pt is left alone
    (lost / "log.jsonl").write_text("mine\n")
    assert _tool("restore_run.sh", str(lost), training=training).returncode == 0
    assert (lost / "log.jsonl").read_text() == "mine\n"


def test_restore_refuses_parts_that_do_not_join_to_the_checkpoint(tmp_path):
    run, training = tmp_path / "runs" / "net", tmp_path / "training"
    _run(run, epoch=1, logged=1, floats=6_000_000)
    assert _tool("snapshot_run.sh", str(run), training=training).returncode == 0
    part = sorted((training / "net").glob("last.pt.part-*"))[-1]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    lost = tmp_path / "later" / "net"
    done = _tool("restore_run.sh", str(lost), training=training)
    assert done.returncode == 1 and "do not join to the recorded last.pt" in done.stderr
    assert not (lost / "last.pt").exists()
