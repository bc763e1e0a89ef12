"""Copy a model file into the package as ``src/bagnet/weights/NAME-<sha8>.pt``.

Keeps the weights exactly and only the metadata a user of the shipped file needs (the
preprocessing, the classes, the metrics, the training command, the calibrated
"none of these classes" threshold and a human-readable data set name); drops the rest
(local run configuration). Refuses metadata holding an absolute path, which would leak
this machine's layout into the package, and files over 10 MB.

    python tools/package_model.py runs/bagnet33_w25_ft-imagenette.pt --name bagnet33_w25-imagenette \
        --dataset "imagenette (224 px copy, 10 classes)"

Prints the written path; register it in ``src/bagnet/models/_weights.py`` with the
printed SHA-256 prefix.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import torch

from bagnet._io import atomic_path

KEEP = ("mean", "std", "img_size", "dataset", "metrics", "command", "classes", "class_names", "unknown", "source",
        "train_evidence")
LIMIT = 10 * 1024 * 1024


def _absolute_paths(value, where: str = "meta") -> list[str]:
    if isinstance(value, str):
        return [f"{where}: {value}"] if value.startswith("/") or " /" in value or "=/" in value else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _absolute_paths(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _absolute_paths(v, f"{where}[{i}]")]
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_file", help="a bagnet model file (bagnet train's model.pt, bagnet calibrate's --out)")
    p.add_argument("--name", required=True, help="file name stem, e.g. bagnet33_w25-imagenette")
    p.add_argument("--dataset", default=None, help="human-readable data set name stored as meta 'dataset'")
    p.add_argument("--out-dir", default="src/bagnet/weights", help="where to write (default: src/bagnet/weights)")
    args = p.parse_args(argv)

    obj = torch.load(args.model_file, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != "bagnet-model/1":
        print(f"package_model: error: {args.model_file} is not a bagnet model file", file=sys.stderr)
        return 1
    meta = {k: v for k, v in obj["meta"].items() if k in KEEP}
    if args.dataset:
        meta["dataset"] = args.dataset
    leaks = _absolute_paths(meta)
    if leaks:
        print("package_model: error: absolute paths in the metadata:\n  " + "\n  ".join(leaks), file=sys.stderr)
        return 1
    buf = io.BytesIO()
    torch.save({**obj, "meta": meta}, buf)
    data = buf.getvalue()
    if len(data) > LIMIT:
        print(f"package_model: error: {len(data) / 1e6:.1f} MB is over the 10 MB a shipped file may have", file=sys.stderr)
        return 1
    sha = hashlib.sha256(data).hexdigest()
    path = Path(args.out_dir) / f"{args.name}-{sha[:8]}.pt"
    with atomic_path(path) as tmp:  # whole or not at all, readable by all (0644)
        tmp.write_bytes(data)
    print(f"{path} ({len(data) / 1e6:.2f} MB, sha256 {sha})")
    print("dropped meta keys:", ", ".join(sorted(set(obj["meta"]) - set(meta))) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
