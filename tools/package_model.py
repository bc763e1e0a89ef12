"""Copy a model file into the package as ``src/bagnet/weights/NAME-<sha8>.pt``.

Keeps the weights exactly and only the metadata a user of the shipped file needs (the
preprocessing, the classes, the training command, the calibrated "none of these classes"
threshold and a human-readable data set name); drops the rest (local run configuration,
and the training-time metrics: a shipped file's accuracy lives in one place,
``src/bagnet/weights/metrics.json``, written by ``tools/record_metrics.py`` from a
``bagnet eval --json`` report of the shipped file). Refuses metadata holding an absolute
path, which would leak this machine's layout into the package, and files over 10 MB.

    python tools/package_model.py runs/bagnet33_w25_ft-imagenette.pt --name bagnet33_w25-imagenette \
        --dataset "imagenette (224 px copy, 10 classes)"

``--img-size`` sets the input size the file is served at when it differs from the
training size (a network trained on random-resized crops sees objects larger than a
centre crop of the same size shows them, so it can score better on larger test images:
Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019); the training
size is kept as ``train_img_size``.

Prints the written path; register it in ``src/bagnet/models/_weights.py`` (its file name
carries the SHA-256 prefix), then record its accuracy with ``tools/record_metrics.py``.

Research weights that are not shipped go under ``benchmarks/models/`` in float16
(``--half``, at most 25 MB): a training checkpoint (``last.pt``: its EMA weights where the
run kept an EMA) is accepted too, so a run's last epoch can be kept without a choice::

    python tools/package_model.py runs/bagnet17_w25_ft/last.pt --half --out benchmarks/models/bagnet17_w25-imagenette.pt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import torch

from bagnet._io import atomic_path

KEEP = ("mean", "std", "img_size", "crop_pct", "dataset", "command", "classes", "class_names", "unknown",
        "train_evidence", "train_img_size", "val_split")
LIMIT = 10 * 1024 * 1024  # a file shipped in the package
HALF_LIMIT = 25 * 1024 * 1024  # research weights under benchmarks/, in float16


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
    p.add_argument("--name", default=None, help="file name stem, e.g. bagnet33_w25-imagenette (or --out)")
    p.add_argument("--dataset", default=None, help="human-readable data set name stored as meta 'dataset'")
    p.add_argument("--img-size", type=int, default=None,
                   help="input size to serve the model at, if not its training size (meta img_size)")
    p.add_argument("--out-dir", default="src/bagnet/weights", help="where to write (default: src/bagnet/weights)")
    p.add_argument("--out", default=None, help="write exactly this file instead (no hash in the name)")
    p.add_argument("--half", action="store_true",
                   help="store floating-point weights in float16 (research weights under benchmarks/, <= 25 MB)")
    args = p.parse_args(argv)
    if not args.name and not args.out:
        p.error("give --name (written to --out-dir as NAME-<sha8>.pt) or --out")

    obj = torch.load(args.model_file, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == "bagnet-train/1":
        import bagnet  # the loader picks the EMA weights of a run that kept one

        model = bagnet.load_model(args.model_file)
        obj = {"format": "bagnet-model/1", "model": model.model_name, "model_args": dict(model.model_args),
               "state_dict": model.state_dict(), "meta": {**(obj.get("meta") or {}), **model.pretrained_cfg}}
    if not isinstance(obj, dict) or obj.get("format") != "bagnet-model/1":
        print(f"package_model: error: {args.model_file} is not a bagnet model file or training checkpoint",
              file=sys.stderr)
        return 1
    if args.half:
        obj = {**obj, "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}}
    meta = {k: v for k, v in obj["meta"].items() if k in KEEP}
    meta.setdefault("crop_pct", None)  # the whole image: say so, rather than leave it to a default
    if args.dataset:
        meta["dataset"] = args.dataset
    if args.img_size is not None:
        if args.img_size < 32:
            print(f"package_model: error: --img-size {args.img_size} is too small (at least 32 px)", file=sys.stderr)
            return 1
        trained = meta.get("train_img_size", meta.get("img_size"))
        if trained is not None and int(trained) != args.img_size:
            meta["train_img_size"] = int(trained)
        meta["img_size"] = args.img_size
    leaks = _absolute_paths(meta)
    if leaks:
        print("package_model: error: absolute paths in the metadata:\n  " + "\n  ".join(leaks), file=sys.stderr)
        return 1
    buf = io.BytesIO()
    torch.save({**obj, "meta": meta}, buf)
    data = buf.getvalue()
    limit = HALF_LIMIT if args.half else LIMIT
    if len(data) > limit:
        what = "research weights in float16" if args.half else "a shipped file"
        print(f"package_model: error: {len(data) / 1e6:.1f} MB is over the {limit // 2**20} MB {what} may have",
              file=sys.stderr)
        return 1
    sha = hashlib.sha256(data).hexdigest()
    path = Path(args.out) if args.out else Path(args.out_dir) / f"{args.name}-{sha[:8]}.pt"
    with atomic_path(path) as tmp:  # whole or not at all, readable by all (0644)
        tmp.write_bytes(data)
    print(f"{path} ({len(data) / 1e6:.2f} MB, sha256 {sha})")
    print("dropped meta keys:", ", ".join(sorted(set(obj["meta"]) - set(meta))) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
