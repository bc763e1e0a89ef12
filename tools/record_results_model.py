"""List a model that docs/RESULTS.md or docs/ROBUSTNESS.md uses in ``docs/results/models.json``.

    bagnet eval --data ../shared/data/imagenette --weights benchmarks/models/bagnet17_w25-imagenette.pt \\
        --json runs/b17.eval.json
    python tools/record_results_model.py bagnet17_w25 --path benchmarks/models/bagnet17_w25-imagenette.pt \\
        --eval-json runs/b17.eval.json

``models.json`` maps each name to ``{"path": ..., "top1": ..., "top5": ..., "eval": ...}``: ``path``
is a registered tag or a committed file that ``bagnet.load_model(path)`` loads with its
classes, mean/std, image size and crop; ``top1``/``top5`` are what ``bagnet eval`` printed for
it on Imagenette val, whose report is copied to ``docs/results/evals/NAME.eval.json``.
Refuses a report of another model or file, of a subset, at another size than the file is
served at, or without the preprocessing (`bagnet.cli.eval.read_report`, as record_metrics.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _error(message: str) -> int:
    print(f"record_results_model: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the name RESULTS.md uses, e.g. bagnet17_w25 or resnet18")
    p.add_argument("--path", required=True, help="a registered tag or a committed model file")
    p.add_argument("--eval-json", required=True, help="bagnet eval --json report of that path on the full val split")
    p.add_argument("--note", default=None, help="one line: what the model is (recipe, stage)")
    p.add_argument("--results", default=str(RESULTS), help=f"folder of models.json (default: {RESULTS})")
    args = p.parse_args(argv)

    import bagnet
    from bagnet._io import write_text

    model = bagnet.load_model(args.path)
    from bagnet.cli.eval import read_report

    try:
        report = read_report(args.eval_json, model=model.model_name, img_size=model.pretrained_cfg.get("img_size"),
                             weights=args.path)
    except ValueError as e:
        return _error(str(e))
    top1, top5 = float(report["top1"]), float(report["top5"])
    results = Path(args.results)
    (results / "evals").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.eval_json, results / "evals" / f"{args.name}.eval.json")
    path = results / "models.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[args.name] = {"path": args.path, "model": model.model_name, "top1": round(top1, 2), "top5": round(top5, 2),
                        "eval": f"evals/{args.name}.eval.json", **({"note": args.note} if args.note else {})}
    write_text(path, json.dumps(dict(sorted(table.items())), indent=2) + "\n")
    print(f"{path}: {args.name} = {args.path}, top-1 {top1:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
