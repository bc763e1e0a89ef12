"""Training images/s of BagNets and reference networks next to ResNet-18, in one process.

Every model trains on the same pre-decoded, augmented batches (Imagenette's train split
if it is there, else generated images) through ``bagnet.train.train_one_epoch`` (SGD,
label smoothing, optional bf16 autocast), so data loading is left out and only the
training step is timed. Models are timed in interleaved rounds (order reversed every
other round) so load from other processes hits all of them alike; printed are the median
images/s per model and its ratio to ResNet-18 (median of per-round ratios).

    .venv/bin/python benchmarks/train.py                                  # 112 px, batch 32
    .venv/bin/python benchmarks/train.py --amp bf16 --threads 1 --rounds 5
    # which reference network this CPU can train, and whether channels_last pays:
    .venv/bin/python benchmarks/train.py --img-size 160 --amp bf16 --threads 1 \
        --models bagnet17_w25,densenet121,vgg11_bn,resnet50 --memory-format both
    # is bf16 autocast fast here (AMX / AVX-512 BF16) or emulated (AVX2)?
    .venv/bin/python benchmarks/train.py --img-size 160 --amp both --threads 1 --models "" --steps 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

import bagnet
from bagnet._device import fast_bfloat16
from bagnet.data.folder import ImageFolder, collate_skip, train_transform
from bagnet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from bagnet.models._profile import count_macs, count_params
from bagnet.train import train_one_epoch

IMAGENETTE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenette"
MODELS = ("bagnet9_slim", "bagnet17_slim", "bagnet33_slim")


def _batches(args) -> tuple[list, str]:
    root = Path(args.data) / "train"
    if root.is_dir():
        ds = ImageFolder(root, transform=train_transform(args.img_size, IMAGENET_MEAN, IMAGENET_STD))
        loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_skip,
                            sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(0)))
        it = iter(loader)
        return [next(it) for _ in range(args.steps)], f"{root} ({len(ds)} images)"
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g),
         torch.randint(0, 10, (args.batch_size,), generator=g), 0)
        for _ in range(args.steps)
    ]
    return batches, "generated images (no Imagenette found)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(IMAGENETTE))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per model and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amp", choices=("none", "bf16", "both"), default="none",
                   help="none, bf16, or both: every model in float32 and in bf16 autocast (is bf16 fast on this CPU?)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated BagNets or torchvision classifiers timed beside resnet18 (\"\" for resnet18 alone)")
    p.add_argument("--memory-format", choices=("contiguous", "channels_last", "both"), default="contiguous",
                   help="'both' times every model in each format (as bagnet train --channels-last does)")
    args = p.parse_args()
    amps = ("none", "bf16") if args.amp == "both" else (args.amp,)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches, source = _batches(args)
    formats = ("contiguous", "channels_last") if args.memory_format == "both" else (args.memory_format,)
    archs = ["resnet18", *(m for m in args.models.split(",") if m and m != "resnet18")]
    # one variant per model, memory format and precision: (model, channels_last, amp)
    variants: dict[str, tuple[nn.Module, bool, str]] = {}
    for a in archs:
        for f in formats:
            for amp in amps:
                label = a + (f":{f[:2]}" if len(formats) > 1 else "") + (f":{amp}" if len(amps) > 1 else "")
                m = bagnet.create_model(a, num_classes=10)  # BagNets and torchvision classifiers alike
                variants[label] = (m.to(memory_format=torch.channels_last) if f == "channels_last" else m,
                                   f == "channels_last", amp)
    names = list(variants)
    base = names[0]
    opts = {n: torch.optim.SGD(v[0].parameters(), lr=0.01, momentum=0.9) for n, v in variants.items()}
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    cpu = torch.device("cpu")
    print(f"data: {source}; {args.img_size} px, batch {args.batch_size}, amp {'/'.join(amps)}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; bfloat16 units: "
          f"{fast_bfloat16(cpu) or 'none (bf16 is emulated)'}")

    def step(n: str, data: list) -> None:
        model, channels_last, amp = variants[n]
        train_one_epoch(model, crit, opts[n], data, cpu, amp=amp, channels_last=channels_last, progress=False)

    for n in names:  # warm-up: oneDNN builds its kernels for each new shape once
        step(n, batches[:1])
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            step(n, batches)
            rates[n].append(len(batches) * args.batch_size / (time.perf_counter() - start))
    width = max(18, *(len(n) + 2 for n in names))
    print(f"\n{'model':<{width}}{'params':>9}{'GMACs':>8}{'img/s':>9}{'vs ' + base:>{len(base) + 6}}")
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(rates[n], rates[base]))
        macs = count_macs(variants[n][0], args.img_size) / 1e9
        print(f"{n:<{width}}{count_params(variants[n][0]) / 1e6:>8.2f}M{macs:>8.2f}{statistics.median(rates[n]):>9.1f}"
              f"{ratio:>{len(base) + 5}.2f}x")
    print(f"\nload {os.getloadavg()[0]:.1f} at the end (2 cores shared: compare ratios, not absolute img/s)")


if __name__ == "__main__":
    main()
