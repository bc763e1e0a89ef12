"""Batched vs one-by-one forward passes of masked image variants (bagnet analyze).

``interactions`` and ``spatial-sensitivity`` evaluate many masked copies of each image
(N + 1 and rankings x k of them). This script times both ways in one process on the same
variants and prints the ratio.

    python benchmarks/analysis_masking.py [--model resnet18] [--img-size 112] [--variants 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="torchvision classifier or registered BagNet")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--variants", type=int, default=64, help="masked copies of one image")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from bagnet.analysis import ModelSpec
    from bagnet.analysis._common import build_model
    from bagnet.analysis.spatial_sensitivity import mask_top_cells

    torch.manual_seed(0)
    model = build_model(ModelSpec(args.model, args.model), num_classes=10).eval()
    x = torch.rand(3, args.img_size, args.img_size)
    cells = args.img_size // 8
    variants = mask_top_cells(x, torch.rand(cells, cells), list(range(1, args.variants + 1)), 8)

    def one_by_one() -> torch.Tensor:
        return torch.cat([model(v[None]) for v in variants])

    def batched() -> torch.Tensor:
        return torch.cat([model(c) for c in variants.split(args.batch_size)])

    with torch.inference_mode():
        torch.testing.assert_close(one_by_one(), batched(), rtol=1e-4, atol=1e-4)
        times = {}
        for name, fn in (("one by one", one_by_one), ("batched", batched)):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name] = best
    for name, t in times.items():
        print(f"{name:>10}: {t:.3f} s for {args.variants} variants ({args.variants / t:.1f} images/s)")
    print(f"batched is {times['one by one'] / times['batched']:.2f}x faster "
          f"({args.model}, {args.img_size}px, batch {args.batch_size}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
