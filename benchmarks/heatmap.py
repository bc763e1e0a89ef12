"""One-pass evidence map vs the crop-by-crop reference, in one process.

    python benchmarks/heatmap.py                       # BagNet-33, 224 x 224, all 1000 classes
    python benchmarks/heatmap.py --ablations           # also: what makes the fast path fast
    python benchmarks/heatmap.py --large 1024          # memory-bounded tiles on a large image
    python benchmarks/heatmap.py --dtypes float32,bfloat16 --bf16-ablations   # reduced precision

``--dtypes`` (default ``float32,bfloat16``) times the one-pass map in each dtype against the
same reference, and compares each reduced-precision map with the float32 one over the whole
map (largest difference relative to the largest |value|, correlation).

The full reference pushes all H*W crops through the network (about 8 minutes at 224 px on
a 2-core CPU), so by default it is timed on ``--sample`` random pixels, batched exactly as
the full reference batches them, and extrapolated linearly to H*W crops (the crops are
independent and equally sized, so the cost is linear in their number). The maximum
difference is checked on those pixels. ``--sample 0`` runs the full reference.

Both wall time and process CPU time are printed: on a machine shared with other jobs,
the CPU-time ratio is the steadier of the two. Weights are random (seeded); speed and
exactness do not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import time
import types

import torch
import torch.nn.functional as F

import bagnet
from bagnet.explain import EvidenceMapper, _maps, evidence_map_reference
from bagnet.testing.models import randomize_batchnorm


def timed(fn, repeats=1):
    """(result, best wall seconds, CPU seconds of that run) over ``repeats`` runs."""
    best, out = None, None
    for _ in range(repeats):
        out = None  # free the previous result before the next run
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        run = (time.perf_counter() - w, time.process_time() - c)
        if best is None or run[0] < best[0]:
            best = run
    return out, best[0], best[1]


def dilated_copy(model):
    """The textbook rewrite: a deep copy with every strided conv at stride 1 and every
    later 3x3 conv dilated, run through the model's own forward (NCHW, BatchNorm unfolded,
    classifier over all classes)."""
    m = copy.deepcopy(model)
    d = 1
    for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
        for block in stage:
            s = block.conv2.stride[0]
            block.conv2.dilation = (d, d)
            block.conv2.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            d *= s
    return m


def no_channels_last():
    """_maps with channels-last swapped for the default layout (a benchmark-only switch)."""
    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    proxy.channels_last = torch.contiguous_format
    return proxy


def line(name, wall, cpu, ref_wall=None, ref_cpu=None, diff=None):
    extra = ""
    if ref_wall is not None:
        extra = f"  x{ref_wall / wall:6.1f} wall  x{ref_cpu / cpu:6.1f} cpu"
    if diff is not None:
        extra += f"  max|diff| {diff:.2e}"
    print(f"  {name:<44} {wall:8.2f} s wall {cpu:8.2f} s cpu{extra}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bagnet33")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=None, help="first N classes only (default: all)")
    p.add_argument("--sample", type=int, default=512, help="reference crops to time (0: all H*W)")
    p.add_argument("--batch-size", type=int, default=256, help="reference crops per forward pass")
    p.add_argument("--repeats", type=int, default=1, help="fast-path runs; the best is reported")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ablations", action="store_true", help="also time variants of the fast path")
    p.add_argument("--large", type=int, default=None, metavar="N",
                   help="only time an N x N map under the memory bound and report peak memory")
    p.add_argument("--max-memory", type=float, default=None, help="GiB for --large (default: the library's)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="dtypes of the one-pass map, float32 first")
    p.add_argument("--bf16-ablations", action="store_true", help="also time variants of the bfloat16 map")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = randomize_batchnorm(bagnet.create_model(args.model), seed=0)
    classes = None if args.classes is None else list(range(args.classes))
    k = model.num_classes if classes is None else len(classes)
    q = model.receptive_field
    print(f"{args.model} (q = {q}), {k} classes, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f}")

    if args.large:
        n = args.large
        x = torch.randn(1, 3, n, n)
        mem = None if args.max_memory is None else int(args.max_memory * 2**30)
        mapper = EvidenceMapper(model, max_memory=mem)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, wall, cpu = timed(lambda: mapper(x, classes))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"{n} x {n} full-resolution map {tuple(out.shape)}: {wall:.1f} s wall, {cpu:.1f} s cpu, "
              f"peak RSS {peak / 2**20:.2f} GiB (before: {before / 2**20:.2f} GiB, output "
              f"{out.numel() * 4 / 2**30:.2f} GiB), memory bound {mapper.max_memory / 2**30:.2f} GiB")
        return

    x = torch.randn(1, 3, args.size, args.size)
    h = w = args.size
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or dtypes[0] != "float32":
        p.error("--dtypes must start with float32 (the reduced ones are compared with it)")
    runs = {}
    for name in dtypes:
        m = EvidenceMapper(model, dtype=name)
        m(torch.randn(1, 3, 40, 40), classes)  # warm up oneDNN's primitive cache on small shapes
        runs[name] = (m, *timed(lambda: m(x, classes), args.repeats))  # noqa: B023 (called at once)
    mapper, fast, fast_wall, fast_cpu = runs["float32"]

    n = h * w if args.sample <= 0 else min(args.sample, h * w)
    pixels = torch.randperm(h * w, generator=torch.Generator().manual_seed(1))[:n]
    pixels = torch.stack([pixels // w, pixels % w], 1)
    ref, ref_wall, ref_cpu = timed(lambda: evidence_map_reference(model, x, classes=classes, pixels=pixels,
                                                                  batch_size=args.batch_size))
    scale = h * w / n
    ref_wall, ref_cpu = ref_wall * scale, ref_cpu * scale
    got = fast[0][:, pixels[:, 0], pixels[:, 1]]
    diff = (got - ref[0]).abs().max().item()
    top = ref.abs().max().item()
    how = "all" if n == h * w else f"{n} random crops, extrapolated x{scale:.1f}"
    print(f"full-resolution {h} x {w} map, {k} classes")
    line(f"reference ({how})", ref_wall, ref_cpu)
    line("one pass (evidence_map)", fast_wall, fast_cpu, ref_wall, ref_cpu, diff)
    print(f"  max |diff| / max |logit| = {diff / top:.1e} (tolerance 1e-4)")
    for name in dtypes[1:]:
        _, low, low_wall, low_cpu = runs[name]
        d = (low[0][:, pixels[:, 0], pixels[:, 1]] - ref[0]).abs().max().item()
        line(f"one pass in {name}", low_wall, low_cpu, ref_wall, ref_cpu, d)
        whole = (low - fast).abs().max().item() / fast.abs().max().item()
        corr = torch.corrcoef(torch.stack([low.flatten().double(), fast.flatten().double()]))[0, 1].item()
        print(f"    vs float32: x{fast_wall / low_wall:.2f} wall, x{fast_cpu / low_cpu:.2f} cpu; whole map: "
              f"max |diff| / max |float32| = {whole:.2e}, correlation {corr:.6f}; on the sampled pixels "
              f"max |diff| / max |logit| = {d / top:.2e}", flush=True)
    runs = low = None  # free the maps (800 MB each for all classes) before the ablations
    if args.bf16_ablations:
        bf16_ablations(model, x, classes, fast, args.repeats)

    if not args.ablations:
        return
    print("ablations (each checked on the same pixels)")
    padded = F.pad(x, ((q - 1) // 2,) * 4)
    idx = torch.arange(k) if classes is None else torch.tensor(classes)

    def check(out):
        return (out[0][:, pixels[:, 0], pixels[:, 1]] - ref[0]).abs().max().item()

    # Every variant is built before its clock starts (folding the weights takes ~1 s).
    naive = dilated_copy(model).eval()
    with torch.no_grad():
        out, wl, cp = timed(lambda: naive.patch_logits(padded)[:, idx])
        line("dilated deep copy (NCHW, BN unfolded)", wl, cp, ref_wall, ref_cpu, check(out))
        naive = naive.to(memory_format=torch.channels_last)
        padded_cl = padded.contiguous(memory_format=torch.channels_last)
        out, wl, cp = timed(lambda: naive.patch_logits(padded_cl)[:, idx])
        line("  + channels_last", wl, cp, ref_wall, ref_cpu, check(out))
    naive = None
    variants = [("folded, dilated convs (no space-to-batch)", EvidenceMapper(model, _layout="dilated"), classes)]
    real_torch = _maps.torch
    _maps.torch = no_channels_last()
    try:
        nchw = EvidenceMapper(model)
        out, wl, cp = timed(lambda: nchw(x, classes))
    finally:
        _maps.torch = real_torch
    line("folded, space-to-batch, NCHW", wl, cp, ref_wall, ref_cpu, check(out))
    variants += [(f"default, in tiles of {t} x {t}", EvidenceMapper(model, tile_size=t), classes) for t in (112, 64)]
    for name, variant, cls in variants:
        out, wl, cp = timed(lambda: variant(x, cls))  # noqa: B023 (called at once)
        line(name, wl, cp, ref_wall, ref_cpu, check(out))
    out, wl, cp = timed(lambda: mapper(x, list(range(10))))
    line("default, 10 classes instead of all", wl, cp)
    native = EvidenceMapper(model, stride="native")
    out, wl, cp = timed(lambda: native(x, classes))
    line("default, native stride (8)", wl, cp)

def bf16_ablations(model, x, classes, f32, repeats):
    """Variants of the bfloat16 map, each timed and compared with the float32 map ``f32``."""
    print("bfloat16 ablations (max |diff| against the float32 map)")

    def report(name, fn):
        out, wl, cp = timed(fn, repeats)
        line(name, wl, cp, diff=(out - f32).abs().max().item())

    default = EvidenceMapper(model, dtype=torch.bfloat16)
    report("bfloat16, channels_last, space-to-batch (default)", lambda: default(x, classes))
    report("bfloat16, dilated convolutions (no phase interleaving)",
           lambda: EvidenceMapper(model, dtype=torch.bfloat16, _layout="dilated")(x, classes))
    real_torch = _maps.torch
    _maps.torch = no_channels_last()
    try:
        nchw = EvidenceMapper(model, dtype=torch.bfloat16)
        report("bfloat16, space-to-batch, NCHW", lambda: nchw(x, classes))
    finally:
        _maps.torch = real_torch
    # Where the time goes: the profiler's self CPU time per operator, one run.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        default(x, classes)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("  bfloat16 default, self CPU time per operator (profiler):")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"    {e.key:<36} {e.self_cpu_time_total / 1e6:7.2f} s  {100 * e.self_cpu_time_total / total:5.1f}%"
              f"  ({e.count} calls)")


if __name__ == "__main__":
    main()
