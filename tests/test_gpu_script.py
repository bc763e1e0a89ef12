"""benchmarks/gpu.sh, the one prepared script a lent GPU runs (issue 24), in its CPU dry run:
every step runs and writes its JSON, so a GPU session spends its minutes on the GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains, evaluates, benchmarks and certifies tiny models: ~1 min on 2 cores
def test_gpu_script_dry_run_writes_every_result(tmp_path):
    # the interpreter running the tests, whichever venv it lives in (gpu.sh's default is ./.venv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    out, data = tmp_path / "out", tmp_path / "data"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--tiny", "--data",
                           str(data), "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("env", "train", "eval", "bench", "maps", "certify"):
        assert (out / f"{name}.json").is_file(), name
    assert json.loads((out / "env.json").read_text())["device"] == "cpu"
    assert len(json.loads((out / "train.json").read_text())["epochs"]) == 1
    assert json.loads((out / "eval.json").read_text())["images"] == 24
    modes = {r["mode"] for r in json.loads((out / "bench.json").read_text())["results"]}
    assert modes == {"plain", "fused", "bf16"}
    maps = json.loads((out / "maps.json").read_text())
    assert [r["dtype"] for r in maps["results"]] == ["float32", "bfloat16"]
    assert {r["defense"] for r in json.loads((out / "certify.json").read_text())["results"]} == {"mask", "clip"}
    # an unknown option is refused, naming the ones there are
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--gpu"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown option --gpu" in bad.stderr
