"""Record a shipped model's accuracy in ``src/bagnet/weights/metrics.json``, the one place it lives.

    bagnet eval --data ../shared/data/imagenette --weights imagenette --json runs/eval.json
    python tools/record_metrics.py bagnet33_w25-imagenette --eval-json runs/eval.json \\
        --selection "checkpoint: the last EMA of a fixed schedule; test size: ..."

The entry keeps what a reader needs to trust the number: top-1/top-5, the images and the
split they came from, the preprocessing and the scoring (as ``bagnet eval`` printed them),
the exact command, and ``--selection``: what, if anything, was chosen on that split. The
registry, ``pretrained_cfg``, ``bagnet models`` and the Hub card read it; the model card and
the README are checked against it by ``tests/models/test_metrics_source.py``.

Refuses a report of another model, one measured at another size than the file is served
at, one on a subset (``--max-images``), and one measured before ``bagnet eval`` recorded its
preprocessing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from bagnet._io import write_text

METRICS = Path(__file__).resolve().parents[1] / "src" / "bagnet" / "weights" / "metrics.json"


def _error(message: str) -> int:
    print(f"record_metrics: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="NAME-TAG of a shipped file, e.g. bagnet33_w25-imagenette")
    p.add_argument("--eval-json", required=True, help="bagnet eval --json report of the shipped file")
    p.add_argument("--selection", required=True,
                   help="what was chosen on the evaluated split (checkpoint, epochs, test size), or 'nothing'")
    p.add_argument("--metrics-file", default=str(METRICS), help=f"the file to update (default: {METRICS})")
    args = p.parse_args(argv)

    from bagnet.models._weights import pretrained_cfg

    model, _, tag = args.name.rpartition("-")
    cfg = pretrained_cfg(model, tag) if model else None
    if cfg is None or cfg.file is None:
        return _error(f"{args.name} is not a shipped model (NAME-TAG of a file in src/bagnet/weights)")
    from bagnet.cli.eval import read_report

    try:
        report = read_report(args.eval_json, model=model, img_size=cfg.img_size)
    except ValueError as e:
        return _error(str(e))
    top1, top5, images = float(report["top1"]), float(report["top5"]), int(report["images"])
    path = Path(args.metrics_file)
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[args.name] = {
        "top1": round(top1, 2),
        "top5": round(top5, 2),
        "images": images,
        "data": report.get("data"),
        "preprocessing": report["preprocessing"],
        "scoring": report.get("scoring"),
        "class_mapping": report.get("class_mapping"),
        "command": report.get("command"),
        "selection": args.selection,
        "measured": datetime.date.today().isoformat(),
    }
    write_text(path, json.dumps(dict(sorted(table.items())), indent=2) + "\n")
    print(f"{path}: {args.name} top-1 {top1:.2f}% top-5 {top5:.2f}% on {images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
