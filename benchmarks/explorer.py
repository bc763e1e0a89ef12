"""What a `bagnet serve` user waits for, per image: the upload, the first full-resolution
map, and switching to another class afterwards (served from the upload's cache).

    python benchmarks/explorer.py [--weights FILE | --model NAME] [--img-size N] [--threads N]

Runs both sides in one process on the six demo photos and prints the median times and the
ratio "first full-resolution view / class switch". Without --weights it times a randomly
initialized model (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a bagnet model file")
    p.add_argument("--model", default="bagnet17_slim", help="used without --weights (10 classes)")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import bagnet
    from bagnet.app import SAMPLE_NAMES, Explorer, sample_image

    torch.manual_seed(0)
    model = bagnet.load_model(args.weights) if args.weights else bagnet.create_model(args.model, num_classes=10)
    explorer = Explorer(model, img_size=args.img_size)
    images = [sample_image(n) for n in SAMPLE_NAMES]
    explorer.explore(images[0])  # warm-up: first-call allocations

    upload, first, switch, figure = [], [], [], []
    for image in images:
        t0 = time.perf_counter()
        analysis = explorer.explore(image)
        t1 = time.perf_counter()
        a, b = analysis.ranking(2)
        analysis.view(a, "full")
        t2 = time.perf_counter()
        analysis.view(b, "full")
        t3 = time.perf_counter()
        analysis.figure_png(b, "full")
        t4 = time.perf_counter()
        upload.append(t1 - t0)
        first.append(t2 - t1)
        switch.append(t3 - t2)
        figure.append(t4 - t3)
    med = statistics.median
    print(f"{explorer.model_name}, {explorer.num_classes} classes, short side {explorer.img_size} px, "
          f"{torch.get_num_threads()} threads, median of {len(images)} photos")
    print(f"upload (logits + native maps of all classes): {med(upload):.3f} s")
    print(f"first full-resolution view (maps of all classes): {med(first):.3f} s")
    print(f"switch class at full resolution (cached):       {med(switch):.3f} s")
    print(f"figure download (PNG):                           {med(figure):.3f} s")
    print(f"first view / switch: {med(first) / med(switch):.1f}x")


if __name__ == "__main__":
    main()
