"""BagNet-33 against ResNet-50: images/s in one process, interleaved, and their ratio.

Each *variant* is one way of running both models (see VARIANTS); every variant's two
models are timed in the same interleaved rounds (order reversed every other round), so
load from other processes hits both alike. Printed per variant: median images/s of each
model, the ratio of the medians, and the median of the per-round ratios (the more robust
number on a shared machine), plus the load average before and after.

    .venv/bin/python benchmarks/inference.py                        # the issue's setting
    .venv/bin/python benchmarks/inference.py --variants plain,fused-cl,compile --repeats 5
    .venv/bin/python benchmarks/inference.py --bagnet bagnet33_slim --img-size 112 --batch-size 4

Weights are random (timing does not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torchvision
from torch import nn

import bagnet
from bagnet.models import prepare_for_inference
from bagnet.models._profile import count_macs


class Chunked(nn.Module):
    """Runs the batch in slices of ``size`` images: smaller feature maps stay in cache."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x):
        return torch.cat([self.model(part) for part in x.split(self.size)])


class HeapOnly(nn.Module):
    """Runs ``model`` with glibc's malloc told not to use mmap (``mallopt(M_MMAP_MAX, 0)``).

    By default every large activation is a fresh mmap, so each forward pass page-faults
    and zeroes all its activation memory again; from the heap (never trimmed: see
    ``_keep_heap``) the pages stay mapped between calls.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        _mallopt(_M_MMAP_MAX, 0)
        try:
            return self.model(x)
        finally:
            _mallopt(_M_MMAP_MAX, 65536)  # glibc's default


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _mallopt(param: int, value: int) -> None:
    import ctypes

    if not ctypes.CDLL("libc.so.6").mallopt(param, value):
        raise RuntimeError(f"mallopt({param}, {value}) failed")


def _keep_heap() -> None:
    """Never give freed heap memory back to the OS (what HeapOnly relies on)."""
    _mallopt(_M_TRIM_THRESHOLD, 2**30)


def _plain(model, channels_last=False):
    model = copy.deepcopy(model).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _jit(model, x):
    traced = torch.jit.trace(model, x, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _compile(model, x):
    import torch._inductor.config as inductor

    # Freezing turns weights into constants: inductor then folds and pre-packs them for oneDNN.
    inductor.freezing = True
    compiled = torch.compile(model)
    compiled(x)  # compile now, not in the first timed round
    return compiled


# variant -> function(model, example input) -> module to time; "fold" means BatchNorm folded
# (for BagNets by bagnet.models.fuse, which also merges the stem; for ResNet-50 by torch.fx).
VARIANTS = {
    "plain": lambda m, x: _plain(m),
    "plain-cl": lambda m, x: _plain(m, channels_last=True),
    "fold": lambda m, x: prepare_for_inference(m, channels_last=False, micro_batch=None),
    "fold-cl": lambda m, x: prepare_for_inference(m, micro_batch=None),
    "fold-cl-chunk1": lambda m, x: Chunked(prepare_for_inference(m, micro_batch=None), 1),
    "fold-cl-chunk2": lambda m, x: Chunked(prepare_for_inference(m, micro_batch=None), 2),
    "fold-cl-chunk4": lambda m, x: Chunked(prepare_for_inference(m, micro_batch=None), 4),
    "fold-cl-heap": lambda m, x: HeapOnly(prepare_for_inference(m, micro_batch=None)),
    "jit": lambda m, x: _jit(prepare_for_inference(m, micro_batch=None), x),
    "compile": lambda m, x: _compile(prepare_for_inference(m, micro_batch=None), x),
    "compile-chunk1": lambda m, x: Chunked(_compile(prepare_for_inference(m, micro_batch=None), x[:1]), 1),
    "bf16": lambda m, x: prepare_for_inference(m, dtype=torch.bfloat16, micro_batch=None),
    "bf16-chunk1": lambda m, x: Chunked(prepare_for_inference(m, dtype=torch.bfloat16, micro_batch=None), 1),
    # each model in its best exact mode as `bagnet bench --mode fused` ran it before
    # pre-packing: BagNets folded, channels-last, one image per pass; ResNet-50 folded, channels-last
    "best": lambda m, x: prepare_for_inference(m),
    # ... and with the BagNet's weights pre-packed for oneDNN, ReLU and residual add fused
    # (bagnet.models._packed; `bagnet bench --mode fused` now); ResNet-50 as in "best"
    "best-prepack": lambda m, x: prepare_for_inference(m, prepack=True),
    # the same two in bfloat16 (`bagnet bench --mode bf16` before and after)
    "bf16-best": lambda m, x: prepare_for_inference(m, dtype=torch.bfloat16),
    "bf16-prepack": lambda m, x: prepare_for_inference(m, dtype=torch.bfloat16, prepack=True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bagnet", default="bagnet33")
    p.add_argument("--reference", default="resnet50", help="torchvision model to compare with")
    p.add_argument("--variants", default="best", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="append one JSON line per variant to this file")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    if any(v.endswith("-heap") for v in variants):
        _keep_heap()
    torch.manual_seed(0)
    base = {"bagnet": bagnet.create_model(args.bagnet).eval(),
            "reference": torchvision.models.get_model(args.reference, weights=None).eval()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    runs = []  # (variant, side, module, input)
    for v in variants:
        for side, model in base.items():
            start = time.perf_counter()
            xv = x
            if v not in ("plain", "fold"):  # the channels-last variants get channels-last input
                xv = xv.contiguous(memory_format=torch.channels_last)
            module = VARIANTS[v](model, xv)
            print(f"# prepared {v} {side} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
            runs.append((v, side, module, xv))

    load_before = os.getloadavg()
    seconds = {(v, side): [] for v, side, _, _ in runs}
    cpu_seconds = {(v, side): [] for v, side, _, _ in runs}
    with torch.inference_mode():
        for _, _, module, xv in runs:  # warm-up: oneDNN primitive creation, weight re-layout
            module(xv)
        for r in range(args.repeats):
            for v, side, module, xv in runs if r % 2 == 0 else runs[::-1]:
                start, cpu = time.perf_counter(), time.process_time()
                module(xv)
                seconds[v, side].append(time.perf_counter() - start)
                cpu_seconds[v, side].append(time.process_time() - cpu)
    load_after = os.getloadavg()

    macs = {side: count_macs(m, args.img_size) / 1e9 for side, m in base.items()}
    fused_macs = count_macs(base["bagnet"].fuse(), args.img_size) / 1e9
    print(f"batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads, {args.repeats} rounds; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}; torch {torch.__version__}")
    print(f"GMACs/image: {args.bagnet} {macs['bagnet']:.2f} ({fused_macs:.2f} fused), "
          f"{args.reference} {macs['reference']:.2f}")
    # CPU ratio: the same from process CPU time, which other processes' load disturbs less
    # (it still counts OpenMP threads spinning while their partner is descheduled).
    print(f"{'variant':<16} {args.bagnet + ' img/s':>16} {args.reference + ' img/s':>16} "
          f"{'ratio':>7} {'per-round ratio':>16} {'CPU ratio':>10}")
    for v in variants:
        b, ref = seconds[v, "bagnet"], seconds[v, "reference"]
        b_rate = statistics.median(args.batch_size / s for s in b)
        r_rate = statistics.median(args.batch_size / s for s in ref)
        paired = statistics.median(rs / bs for bs, rs in zip(b, ref))
        cpu = statistics.median(cpu_seconds[v, "reference"]) / statistics.median(cpu_seconds[v, "bagnet"])
        print(f"{v:<16} {b_rate:>16.2f} {r_rate:>16.2f} {b_rate / r_rate:>7.3f} {paired:>16.3f} {cpu:>10.3f}")
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps({"variant": v, "bagnet": args.bagnet, "reference": args.reference,
                                    "batch_size": args.batch_size, "img_size": args.img_size,
                                    "threads": torch.get_num_threads(),
                                    "bagnet_seconds": b, "reference_seconds": ref,
                                    "bagnet_cpu_seconds": cpu_seconds[v, "bagnet"],
                                    "reference_cpu_seconds": cpu_seconds[v, "reference"],
                                    "loadavg": [load_before[0], load_after[0]]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
