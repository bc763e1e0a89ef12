"""torchrun with two CPU processes (gloo): DDP trains, only rank 0 writes."""

import json
import os
import subprocess
import sys

import torch

import bagnet
from bagnet.train import load_checkpoint


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "bagnet", "train", "--data", str(tiny_data), "--model", "bagnet_tiny", "--out", str(out),
        "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--lr", "0.1", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed: 2 processes, backend gloo" in done.stderr
    # one log line per epoch (rank 0 alone writes), the whole data set seen once
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1
    assert log[0]["train_images"] == 24 and log[0]["val_images"] == 12
    assert done.stderr.count("epoch 1/1: loss") == 1
    ckpt = load_checkpoint(out / "last.pt")
    assert len(ckpt["rng"]) == 2  # each rank's generators, to resume both
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    model = bagnet.load_model(out / "model.pt")
    assert model.num_classes == 3 and not any(k.startswith("module.") for k in model.state_dict())
