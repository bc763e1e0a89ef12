"""What a `bagnet serve` user waits for, per image: the upload, the first full-resolution
view, and switching to other classes at full resolution afterwards.

    python benchmarks/explorer.py [--model NAME | --weights FILE] [--images N] [--switches N] [--threads N]

Without --model/--weights it times the shipped default model (its own input size); with
--model it times that architecture with random weights (timing does not depend on the
weights; ``--model bagnet33`` is the published-size ImageNet BagNet-33, 1000 classes,
224 px). Runs on the first N demo photos in one process and prints the median times, the
ratio "first full-resolution view / class switch" and the explorer's cache use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a bagnet model file")
    p.add_argument("--model", default=None, help="architecture with random weights (ImageNet's 1000 classes)")
    p.add_argument("--img-size", type=int, default=None, help="short side (default: the model's, else 224)")
    p.add_argument("--images", type=int, default=None, help="demo images to time (default: all)")
    p.add_argument("--switches", type=int, default=3,
                   help="class switches per photo, to the classes ranked after the top 5 (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import bagnet
    from bagnet.app import SAMPLE_NAMES, Explorer, sample_image
    from bagnet.models import default_model

    torch.manual_seed(0)
    if args.weights:
        model = bagnet.load_model(args.weights)
    elif args.model:
        model = bagnet.create_model(args.model)
    else:
        model = default_model(prefer_downloaded=False)[0]
    explorer = Explorer(model, img_size=args.img_size)
    images = [sample_image(n) for n in SAMPLE_NAMES[: args.images or len(SAMPLE_NAMES)]]
    explorer.explore(images[0])  # warm-up: first-call allocations

    # Wall and CPU seconds of each step: the machine is shared, and CPU time (this
    # process's, all threads) is what the step costs whatever else runs.
    times: dict[str, list[tuple[float, float]]] = {"upload": [], "first": [], "switch": [], "figure": []}

    def timed(step, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        times[step].append((time.perf_counter() - w, time.process_time() - c))
        return out

    for image in images:
        analysis = timed("upload", explorer.explore, image)
        # The classes switched to are ranked below the top_k (the explorer's first view may
        # compute the top ones along with the top class): the click that used to cost a pass.
        ranked = analysis.ranking()
        top, others = ranked[0], ranked[explorer.top_k : explorer.top_k + args.switches]
        timed("first", analysis.view, top, "full")
        for c in others:
            timed("switch", analysis.view, c, "full")
        timed("figure", analysis.figure_png, others[-1], "full")
    med = statistics.median
    print(f"{explorer.model_name}, {explorer.num_classes} classes, short side {explorer.img_size} px, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}, median of {len(images)} photos "
          f"({len(times['switch'])} switches); wall s / CPU s")
    labels = {"upload": "upload (logits + native maps of all classes)", "first": "first full-resolution view",
              "switch": "switch class at full resolution", "figure": "figure download (PNG)"}
    for step, label in labels.items():
        wall, cpu = med(t[0] for t in times[step]), med(t[1] for t in times[step])
        print(f"{label + ':':46s} {wall:8.3f} s wall {cpu:8.3f} s CPU (max {max(t[0] for t in times[step]):.3f} s wall)")
    first, switch = med(t[0] for t in times["first"]), med(t[0] for t in times["switch"])
    print(f"first view / switch (wall): {first / switch:.1f}x")
    cache = getattr(explorer, "cache_info", None)
    if cache is not None:
        print(f"cache: {cache()}")


if __name__ == "__main__":
    main()
