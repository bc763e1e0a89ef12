"""A training run's accuracy per epoch as a Markdown table, from its ``log.jsonl``.

The default model's recipe (``tools/train_default_model.sh``, then
``tools/finetune_default_model.sh``) is recorded this way in
``benchmarks/README.md`` ("Default model: accuracy per epoch"):

    .venv/bin/python benchmarks/training_curve.py runs/bagnet33_w25      # stage 1
    .venv/bin/python benchmarks/training_curve.py runs/bagnet33_w25_ft   # stage 2 (with EMA columns)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(rows: list[dict]) -> str:
    """One row per epoch; runs with ``--ema`` get the EMA's val columns too (it is what ships).

    The ``lr`` column is the rate of the epoch's first step, as ``log.jsonl`` records it.
    """
    ema = any("ema_val_top1" in r for r in rows)
    head = ["epoch", "lr", "train loss", "train top-1", "val top-1", "val top-5"]
    head += ["EMA val top-1", "EMA val top-5"] if ema else []
    head += ["img/s", "s"]
    out = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        cells = [str(r["epoch"]), f"{r['lr']:.4g}", f"{r['train_loss']:.3f}", f"{r['train_top1']:.2f}",
                 f"{r['val_top1']:.2f}", f"{r['val_top5']:.2f}"]
        if ema:
            cells += [f"{r['ema_val_top1']:.2f}", f"{r['ema_val_top5']:.2f}"] if "ema_val_top1" in r else ["", ""]
        cells += [f"{r['train_img_s']:.0f}", f"{r['time']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a bagnet train output folder (holds log.jsonl)")
    args = p.parse_args(argv)
    log = Path(args.run) / "log.jsonl"
    if not log.is_file():
        print(f"training_curve: error: {log} does not exist (is {args.run} a bagnet train output folder?)", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val_top1" in r]
    if not rows:
        print(f"training_curve: error: {log} holds no finished epoch yet", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
