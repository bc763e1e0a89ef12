"""One table of certified patch robustness: every defence on the same images, the same
sticker sizes in pixels and the same attack (issue 25).

    python benchmarks/robustness_table.py --data ../shared/data/imagenette --max-images 500 \\
        --patch 20,28,34 --out docs/robustness/table \\
        --row "BagNet-17 mask=bagnet17_w25@benchmarks/models/bagnet17_w25_clip-imagenette.pt:mask" \\
        --row "BagNet-33 mask=imagenette:mask" \\
        --row "ResNet-18 + PatchCleanser=resnet18@benchmarks/models/resnet18-imagenette.pt:cleanser"

Each ``--row LABEL=SPEC:DEFENSE`` runs ``bagnet certify --attack`` on the seeded,
class-stratified ``--max-images`` subset of val (the same images for every row), with the
stickers given in pixels (the same for every row: all models here see 192 x 192 inputs),
and the same attack settings. It prints and writes ``table.md`` and ``table.json``: clean,
certified and attacked accuracy per row and sticker, whether certified <= attacked <= clean
held and no certified image was flipped, and the cost of each defence (forward passes per
image and seconds per image of the certificate alone, measured by a second, attack-free
run in this process's CPU time on the first ``--cost-images`` of the same images, less a
one-image run, so that starting the process and loading the model are not counted: the
nested subset, so the certificates are not all computed twice, which for PatchCleanser's
666 passes per image would double the run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(args: list[str]) -> tuple[float, float]:
    """Run ``bagnet ARGS``; (wall seconds, CPU seconds of the child)."""
    cmd = [sys.executable, "-m", "bagnet", *args]
    print("+", " ".join(cmd), flush=True)
    wall, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - wall, _children_cpu() - cpu


def parse_row(text: str) -> dict:
    label, sep, rest = text.partition("=")
    spec, sep2, defense = rest.rpartition(":")
    if not (sep and sep2 and label.strip() and spec.strip() and defense.strip()):
        raise SystemExit(f"robustness_table: --row {text!r} must be LABEL=SPEC:DEFENSE (e.g. 'R18=resnet18@w.pt:cleanser')")
    return {"label": label.strip(), "spec": spec.strip(), "defense": defense.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data set folder (its val/ is used)")
    p.add_argument("--row", action="append", required=True, help="LABEL=SPEC:DEFENSE (repeat)")
    p.add_argument("--patch", default="20,28,34", help="sticker sides in pixels (default: 20,28,34)")
    p.add_argument("--max-images", type=int, default=500, help="images (the one stratified subset; default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the attack (default: 0)")
    p.add_argument("--attack", default="--attack-steps 10 --attack-positions 4 --attack-search-steps 2 "
                                       "--attack-refine 2", help="attack options, the same for every row")
    p.add_argument("--cost-images", type=int, default=50,
                   help="images of the attack-free run that times the certificate (default: 50, at least 2, at most "
                        "--max-images)")
    p.add_argument("--extra", default="", help="more options for every bagnet certify run (e.g. --workers 1)")
    p.add_argument("--out", required=True, help="folder for the runs, table.md and table.json")
    args = p.parse_args(argv)
    if not 2 <= args.cost_images <= args.max_images:
        p.error(f"--cost-images must lie in 2..--max-images ({args.max_images}), got {args.cost_images}")
    rows = [parse_row(r) for r in args.row]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", args.data, "--seed", str(args.seed),
              "--patch", args.patch, *args.extra.split()]
    results = []
    for i, row in enumerate(rows):
        folder = out / f"row{i}"
        model = ["--model", row["spec"]] if "@" in row["spec"] or "/" not in row["spec"] else ["--weights", row["spec"]]
        cost_dir = out / f"row{i}-cost"
        timed = {}  # images certified -> (wall, CPU) seconds of the whole run
        for n in (1, args.cost_images):
            wall, cpu = _run(["certify", *common, "--max-images", str(n), *model, "--defense", row["defense"],
                              "--out", str(cost_dir / str(n))])
            timed[json.loads((cost_dir / str(n) / "summary.json").read_text())["images"]] = (wall, cpu)
        if len(timed) < 2:
            raise SystemExit(f"robustness_table: the timing runs of {row['label']} certified the same number of "
                             "images (unreadable ones skipped?); raise --cost-images")
        (n1, (wall1, cpu1)), (n2, (wall2, cpu2)) = sorted(timed.items())
        cost_images = n2 - n1
        _run(["certify", *common, "--max-images", str(args.max_images), *model, "--defense", row["defense"],
              "--attack", *args.attack.split(), "--out", str(folder)])
        summary = json.loads((folder / "summary.json").read_text())
        images = summary["images"]
        for s in summary["results"]:
            ok = s["certified"] is None or s["attacked"] is None or s["certified"] <= s["attacked"] <= s["clean"]
            results.append({**row, "patch_px": s["patch_px"], "images": images, "clean": s["clean"],
                            "certified": s["certified"], "attacked": s["attacked"],
                            "certified_but_flipped": s.get("certified_but_flipped", 0), "order_holds": ok,
                            "passes": s.get("passes"), "seconds_per_image": (cpu2 - cpu1) / cost_images,
                            "wall_seconds_per_image": (wall2 - wall1) / cost_images, "cost_images": n2})
    lines = [f"{results[0]['images'] if results else 0} val images (--max-images {args.max_images}, "
             f"--seed {args.seed}); attack: {args.attack}", "",
             "| defence | sticker | clean | certified | attacked | passes / image | CPU s / image (certificates of all stickers) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    for r in results:
        flag = "" if r["order_holds"] and not r["certified_but_flipped"] else " **(check failed)**"
        lines.append(f"| {r['label']} | {r['patch_px']} px | {pct(r['clean'])} | {pct(r['certified'])} | "
                     f"{pct(r['attacked'])}{flag} | {r['passes'] if r['passes'] is not None else '-'} | "
                     f"{r['seconds_per_image']:.3g} |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "table.json").write_text(json.dumps({"rows": results, "command": sys.argv}, indent=2) + "\n")
    print("\n".join(lines))
    bad = [r for r in results if not r["order_holds"] or r["certified_but_flipped"]]
    if bad:
        print(f"robustness_table: {len(bad)} rows break certified <= attacked <= clean or flip a certified image",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
