"""Certification cost: images/s of certify (mask and clip, several patch sizes) against
plain inference of the same model on the same batches, in one process.

    python benchmarks/certify.py [--model NAME | --weights FILE] [--img-size N] [--batch-size 32]
                                 [--batches 5] [--patch 1%,2%,3%] [--threads N]

Without --model/--weights it times the shipped Imagenette bagnet17_slim at its 112 px;
``--model bagnet33 --img-size 224`` times the published-size BagNet-33 (random weights,
1000 classes). Timings are medians over interleaved rounds (inference, then each certify
setting) after a warm-up; the ratio says how many plain forward passes one certificate costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a bagnet model file or tag (default: imagenette)")
    p.add_argument("--model", default=None, help="architecture with random weights")
    p.add_argument("--img-size", type=int, default=None, help="default: the model's, else 224")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--batches", type=int, default=5, help="timed rounds (default: 5)")
    p.add_argument("--patch", default="1%,2%,3%", help="patch sizes (default: 1%%,2%%,3%%)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import bagnet
    from bagnet.robust import RobustBagNet

    torch.manual_seed(0)
    model = bagnet.create_model(args.model) if args.model else bagnet.load_model(args.weights or "imagenette")
    model.eval()
    size = args.img_size or model.pretrained_cfg.get("img_size") or 224
    x = torch.randn(args.batch_size, 3, size, size)
    settings = [(d, s) for d in ("mask", "clip") for s in args.patch.split(",")]
    robust = {k: RobustBagNet(model, k[1], k[0]).eval() for k in settings}

    def plain() -> None:
        with torch.no_grad():
            model(x)

    runs = {"inference": plain, **{k: (lambda r=r: r.certify(x)) for k, r in robust.items()}}
    for f in runs.values():  # warm-up
        f()
    times: dict = {k: [] for k in runs}
    for _ in range(args.batches):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["inference"])
    print(f"{getattr(model, 'model_name', args.model)} at {size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.batches}")
    print(f"{'run':<16} {'images/s':>9} {'x inference time':>17}")
    print(f"{'inference':<16} {args.batch_size / base:>9.1f} {1.0:>17.2f}")
    for (d, s) in settings:
        t = statistics.median(times[(d, s)])
        print(f"{'certify ' + d + ' ' + s:<16} {args.batch_size / t:>9.1f} {t / base:>17.2f}")


if __name__ == "__main__":
    main()
