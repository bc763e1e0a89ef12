"""The GPU check of issue 24, one process per step, every result as JSON in ``--out``.

Run through ``benchmarks/gpu.sh`` (which a lent GPU machine runs in one call, and this CPU
runs as a dry run with ``--device cpu --tiny``). Steps, each written as it finishes so a
cut-off run keeps what it did:

1. ``env.json``: torch, device, CUDA capability;
2. ``train.json``: ``bagnet train`` of a reference network (ResNet-18 by default) for a
   few epochs on ``--data``, its per-epoch log and images/s;
3. ``eval.json``: ``bagnet eval`` of that run on the data's val/;
4. ``bench.json``: ``bagnet bench``: BagNet-33 against ResNet-50, plain, fused and bf16;
5. ``maps.json``: one-pass full-resolution evidence maps of every class (seconds per image);
6. ``certify.json``: ``bagnet certify`` of the shipped default model (mask and clip) on val/.

``--tiny`` swaps in small models and sizes so the whole script runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def _bagnet(*args: str) -> None:
    cmd = [sys.executable, "-m", "bagnet", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _write(out: Path, name: str, data: dict) -> None:
    (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--data", required=True, help="folder with train/<class>/ and val/<class>/")
    p.add_argument("--out", required=True, help="folder for the JSON files")
    p.add_argument("--runs", default="runs/gpu", help="folder for the training run (default: runs/gpu)")
    p.add_argument("--reference", default="resnet18", help="torchvision network to train (default: resnet18)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    p.add_argument("--img-size", type=int, default=128, help="training crop size (default: 128)")
    p.add_argument("--batch-size", type=int, default=256, help="training batch (default: 256)")
    p.add_argument("--workers", type=int, default=8, help="data-loading processes (default: 8)")
    p.add_argument("--tiny", action="store_true", help="small models and sizes: a dry run of the whole script")
    args = p.parse_args(argv)

    import torch

    import bagnet
    from bagnet.explain import EvidenceMapper

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu_run: error: --device cuda but torch sees no GPU; pass --device cpu for a dry run", file=sys.stderr)
        return 1
    _write(out, "env.json", {
        "torch": torch.__version__, "bagnet": bagnet.__version__, "device": str(device),
        "name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "tiny": args.tiny, "python": platform.python_version(),
    })

    # 2-3: a reference trained for a few epochs, and evaluated
    run = Path(args.runs) / args.reference
    start = time.perf_counter()
    _bagnet("train", "--data", args.data, "--model", args.reference, "--device", args.device,
            "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--lr", "0.1" if not args.tiny else "0.01", "--warmup-epochs", "1",
            "--weight-decay", "5e-4", "--label-smoothing", "0.1", "--crop-scale", "0.25",
            "--amp", "bf16" if cuda else "none", *(["--channels-last"] if cuda else []), "--no-progress",
            "--out", str(run), *(["--resume"] if (run / "last.pt").exists() else []))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    _write(out, "train.json", {"reference": args.reference, "epochs": log, "seconds": time.perf_counter() - start})
    _bagnet("eval", "--data", args.data, "--weights", str(run / "model.pt"), "--device", args.device,
            "--workers", str(args.workers), "--json", str(out / "eval.json"))

    # 4: inference speed, BagNet-33 against ResNet-50 (random weights: timing needs no more)
    bagnet_net, ref_net, size = ("bagnet_tiny", "resnet18", 64) if args.tiny else ("bagnet33", "resnet50", 224)
    _bagnet("bench", "--models", f"{bagnet_net}@random,{ref_net}@random", "--mode", "plain,fused,bf16",
            "--device", args.device, "--batch-size", "4" if args.tiny else "64", "--img-size", str(size),
            "--repeats", "1" if args.tiny else "5", "--json", str(out / "bench.json"))

    # 5: one-pass full-resolution maps of every class
    model = bagnet.create_model(bagnet_net).eval()  # random weights: timing needs no more
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        mapper = EvidenceMapper(model, stride=1, device=device, dtype=dtype)
        x = torch.randn(1, 3, size, size, device=device)
        mapper(x)  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        n = 1 if args.tiny else 3
        for _ in range(n):
            maps = mapper(x)
        if cuda:
            torch.cuda.synchronize(device)
        results.append({"dtype": str(dtype).removeprefix("torch."), "seconds_per_image": (time.perf_counter() - t) / n,
                        "shape": list(maps.shape)})
    _write(out, "maps.json", {"model": bagnet_net, "img_size": size, "classes": int(model.num_classes),
                              "results": results})

    # 6: certification of the shipped default model on val/ (its own classes must be the data's)
    cert = out / "certify"
    _bagnet("certify", "--data", args.data, "--device", args.device, "--patch", "1%,2%,3%", "--defense", "mask,clip",
            "--workers", str(args.workers), "--out", str(cert),
            *(["--model", "bagnet_tiny@random", "--class-map", str(Path(args.data) / "classes.tsv")] if args.tiny
              else ["--weights", "imagenette"]))
    summary = json.loads((cert / "summary.json").read_text())
    _write(out, "certify.json", summary)
    print(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
