"""How close bfloat16 (and float16) evidence maps are to float32 ones, on real images.

    python benchmarks/precision.py                                   # both models below
    python benchmarks/precision.py --images 40 --bagnet33-images 3 --json benchmarks/results/precision.json

Two models, both through ``bagnet.explain.EvidenceMapper`` at full resolution (stride 1,
the paper's padded map), every class:

* the shipped ``bagnet17_slim`` Imagenette model on Imagenette validation images (the
  first images of each class folder in sorted order, spread over the classes), at its
  training size (112 px short side);
* the published BagNet-33 architecture (1000 classes) with random weights and random
  BatchNorm statistics (``bagnet.testing.models.randomize_batchnorm``) on a few of the same
  images at 224 px (its ImageNet weights are not downloaded here).

For every image and reduced dtype it reports, against the float32 map of the same image:
the largest and the mean absolute difference relative to the float32 map's largest
|value|, the Pearson correlation, how many of the top-k map entries (patch centres) of
each class are the same (k = 1, 5, 20; for BagNet-33 the classes are the image's 10 most
probable), whether the non-overlapping top-5 patches that ``bagnet explain`` outlines are
the same, and whether the map-derived logits (``EvidenceMapper.logits``) give the same
top-1 class, with the float32 margin between the top two classes where they do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import bagnet
from bagnet.explain import EvidenceMapper, preprocess, top_patches
from bagnet.explain._explain import model_config
from bagnet.testing.models import randomize_batchnorm

DATA = "../shared/data/imagenette/val"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def val_images(root: Path, n: int) -> list[Path]:
    """The first images of each class folder (sorted), taken round-robin: ``n`` in all."""
    folders = [sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(root.iterdir()) if d.is_dir()]
    out, i = [], 0
    while len(out) < n and any(i < len(f) for f in folders):
        out += [f[i] for f in folders if i < len(f)][: n - len(out)]
        i += 1
    return out


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean over classes of |top-k entries of a ∩ top-k entries of b| / k, maps ``[K, h, w]``."""
    ia, ib = a.flatten(1).topk(k, dim=1).indices, b.flatten(1).topk(k, dim=1).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ia, ib)) / (k * len(ia))


def compare(ref_map, ref_logits, got_map, got_logits, geometry, classes) -> dict:
    scale = ref_map.abs().max()
    diff = (got_map - ref_map).abs()
    corr = torch.corrcoef(torch.stack([got_map.flatten().double(), ref_map.flatten().double()]))[0, 1]
    top = [[p.center for p in ps] for ps in top_patches(ref_map, geometry, k=5, non_overlapping=True)]
    top_got = [[p.center for p in ps] for ps in top_patches(got_map, geometry, k=5, non_overlapping=True)]
    r = ref_logits.topk(2).values
    # How far apart the 1st/2nd and 5th/6th best entries of each class's float32 map are:
    # ranks can only swap where such gaps are below the reduced-precision error.
    best = ref_map.flatten(1).topk(6, dim=1).values
    return {
        "max_rel": (diff.max() / scale).item(),
        "mean_rel": (diff.mean() / scale).item(),
        "corr": corr.item(),
        "top1": topk_overlap(ref_map, got_map, 1),
        "top5": topk_overlap(ref_map, got_map, 5),
        "top20": topk_overlap(ref_map, got_map, 20),
        "explain_top5_same": sum(a == b for a, b in zip(top, top_got)) / len(top),
        "logit_top1_same": bool(ref_logits.argmax() == got_logits.argmax()),
        "logit_max_abs": (got_logits - ref_logits).abs().max().item(),
        "logit_max_rel": ((got_logits - ref_logits).abs().max() / ref_logits.abs().max()).item(),
        "margin": (r[0] - r[1]).item(),
        "gap12": ((best[:, 0] - best[:, 1]) / scale).median().item(),
        "gap56": ((best[:, 4] - best[:, 5]) / scale).median().item(),
        "classes": ref_map.shape[0],
    }


def run_model(label, model, files, img_size, classes_of, dtypes) -> dict:
    cfg = model_config(model)
    mappers = {"float32": EvidenceMapper(model)} | {n: EvidenceMapper(model, dtype=DTYPES[n]) for n in dtypes}
    rows: dict[str, list[dict]] = {n: [] for n in dtypes}
    seconds = dict.fromkeys(mappers, 0.0)
    for i, f in enumerate(files):
        x, _ = preprocess(f, cfg, img_size=img_size)
        logits = mappers["float32"].logits(x)
        classes = classes_of(logits)
        maps = {}
        for n, m in mappers.items():
            t = time.perf_counter()
            maps[n] = (m(x, classes), m.logits(x))
            seconds[n] += time.perf_counter() - t
        geometry = mappers["float32"].geometry(tuple(x.shape[-2:]))
        for n in dtypes:
            rows[n].append(compare(*maps["float32"], *maps[n], geometry, classes))
        print(f"  {label} {i + 1}/{len(files)} {f.name} {tuple(x.shape[-2:])}: "
              + ", ".join(f"{n} max {rows[n][-1]['max_rel']:.2e} corr {rows[n][-1]['corr']:.6f}" for n in dtypes),
              flush=True)
    summary = {}
    for n, rs in rows.items():
        wrong = [r for r in rs if not r["logit_top1_same"]]
        summary[n] = {
            "images": len(rs),
            "max_rel_max": max(r["max_rel"] for r in rs),
            "max_rel_median": statistics.median(r["max_rel"] for r in rs),
            "mean_rel_mean": statistics.fmean(r["mean_rel"] for r in rs),
            "corr_min": min(r["corr"] for r in rs),
            **{k: statistics.fmean(r[k] for r in rs) for k in ("top1", "top5", "top20", "explain_top5_same")},
            "logit_top1_agreement": 1 - len(wrong) / len(rs),
            "logit_max_abs": max(r["logit_max_abs"] for r in rs),
            "logit_max_rel": max(r["logit_max_rel"] for r in rs),
            "margins_where_top1_differs": [round(r["margin"], 5) for r in wrong],
            "median_margin": statistics.median(r["margin"] for r in rs),
            "median_gap12": statistics.median(r["gap12"] for r in rs),
            "median_gap56": statistics.median(r["gap56"] for r in rs),
            "seconds_per_image": seconds[n] / len(rs),
        }
    summary["float32"] = {"images": len(files), "seconds_per_image": seconds["float32"] / len(files)}
    return {"label": label, "img_size": img_size, "summary": summary, "images": [f.name for f in files],
            "per_image": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA, help="Imagenette val folder")
    p.add_argument("--images", type=int, default=40, help="images for the shipped model (0: skip)")
    p.add_argument("--bagnet33-images", type=int, default=3, help="images for BagNet-33 at 224 px (0: skip)")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--bagnet33-dtypes", default="bfloat16",
                   help="float16 convolutions are slow on CPUs without float16 units: not by default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    files = val_images(Path(args.data), max(args.images, args.bagnet33_images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    results = []
    if args.images:
        slim = bagnet.create_model("bagnet17_slim", pretrained="imagenette").eval()
        results.append(run_model("bagnet17_slim imagenette (shipped)", slim, files[: args.images], None,
                                 lambda logits: None, dtypes))
    if args.bagnet33_images:
        torch.manual_seed(0)
        b33 = randomize_batchnorm(bagnet.create_model("bagnet33"), seed=0)
        results.append(run_model("bagnet33, random weights and BatchNorm statistics", b33,
                                 files[: args.bagnet33_images], 224,
                                 lambda logits: logits.topk(10).indices.tolist(),
                                 [d.strip() for d in args.bagnet33_dtypes.split(",") if d.strip()]))
    for r in results:
        print(f"\n{r['label']}, {r['summary']['float32']['images']} images")
        for n in (n for n in r["summary"] if n != "float32"):
            s = r["summary"][n]
            print(f"  {n}: max|diff|/max|f32| {s['max_rel_max']:.2e} (median image {s['max_rel_median']:.2e}), "
                  f"mean {s['mean_rel_mean']:.2e}, corr >= {s['corr_min']:.6f}; top-1/5/20 entries shared "
                  f"{s['top1']:.3f}/{s['top5']:.3f}/{s['top20']:.3f}, explain's top-5 patches identical "
                  f"{s['explain_top5_same']:.3f}; logits top-1 agreement {s['logit_top1_agreement']:.3f} "
                  f"(max |diff| {s['logit_max_abs']:.3g}, {s['logit_max_rel']:.2e} of the largest |logit|; disagreements at f32 margins "
                  f"{s['margins_where_top1_differs']}); median gap between the 1st/2nd and 5th/6th entries of a "
                  f"class's map {s['median_gap12']:.1e}/{s['median_gap56']:.1e} of max|f32|; "
                  f"{s['seconds_per_image']:.2f} s/image vs float32 "
                  f"{r['summary']['float32']['seconds_per_image']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
