"""How much the shipped default model's output changes when its input moves by 0..8 pixels.

The model's patches lie on a grid with a stride of 8 px (strided convolutions), so moving
the image by less than a stride shows the model other patches than the ones it was trained
to average. A shift-stable model would change little; the full-resolution evidence map of
the explorer (exact, one value per pixel) shows a fine dot lattice with a period of 8 px
where it is not. This script measures both on Imagenette validation images:

* shifts: each image is resized so its short side is ``img_size + 8``, centre-cropped to a
  square, and the model sees the ``img_size`` square at offset ``(dy, dx)``, for shifts
  of 0..8 px right, down and diagonally. Reported per shift: the mean absolute change of
  the true class's logit and of the top-1 probability (of the class predicted at shift 0),
  the share of top-1 predictions that differ from shift 0, and the accuracy. A shift of 8
  px realigns the grid: what changes there comes from content entering and leaving at the
  borders, the baseline for the smaller shifts.
* patches: for the first ``--map-images`` images, the full-resolution map of the true
  class (unpadded: entry (i, j) is the patch whose corner is pixel (i, j)): how much the
  evidence of two patches 1..8 px apart differs (mean absolute difference, correlation),
  next to the map's spread. Patches 1 px apart share 97% of their pixels (q = 33), so a
  shift-stable model would give them nearly the same evidence; the fine dots of the
  explorer's full-resolution view are these differences.

Prints a table and writes docs/shift_sensitivity.png. Run with one thread, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shift_sensitivity.py --images 50
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import bagnet
from bagnet.explain import EvidenceMapper

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenette" / "val"
DIRECTIONS = {"right": (0, 1), "down": (1, 0), "diagonal": (1, 1)}


def pick_images(root: Path, classes: list[str], n: int) -> list[tuple[Path, int]]:
    """``n`` images spread evenly over the classes (the first of each folder, in name order)."""
    per_class = [sorted(p for p in (root / c).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
                 for c in classes if (root / c).is_dir()]
    if len(per_class) != len(classes):
        raise SystemExit(f"{root} does not hold a folder for each of the model's {len(classes)} classes")
    picked = []
    for k in range(n):
        c = k % len(classes)
        picked.append((per_class[c][k // len(classes)], c))
    return picked


def load(path: Path, side: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The normalized ``side x side`` centre of the image resized to a short side of ``side``."""
    with Image.open(path) as img:
        t = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    h, w = t.shape[1:]
    nh, nw = (side, round(side * w / h)) if h <= w else (round(side * h / w), side)
    t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (nh - side) // 2, (nw - side) // 2
    return (t[:, top : top + side, left : left + side] - mean) / std


def neighbour_profile(m: np.ndarray, lags: range) -> tuple[np.ndarray, np.ndarray]:
    """For patches ``lag`` px apart (right and down, pooled): the mean absolute difference
    of their evidence and its correlation, for each lag."""
    diffs, corrs = [], []
    for lag in lags:
        a = np.concatenate([m[:, :-lag].ravel(), m[:-lag, :].ravel()])
        b = np.concatenate([m[:, lag:].ravel(), m[lag:, :].ravel()])
        diffs.append(np.abs(a - b).mean())
        corrs.append(np.corrcoef(a, b)[0, 1])
    return np.array(diffs), np.array(corrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Imagenette val folder (class folders)")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--map-images", type=int, default=10, help="images whose full-resolution map is measured")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "shift_sensitivity.png")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no Imagenette validation images at {args.data} (give --data)")
    torch.set_grad_enabled(False)

    model = bagnet.create_model("bagnet33_w25", pretrained="imagenette").eval()
    cfg = model.pretrained_cfg
    size, stride = int(cfg["img_size"]), int(model.patch_stride)
    mean = torch.tensor(cfg["mean"])[:, None, None]
    std = torch.tensor(cfg["std"])[:, None, None]
    shifts = range(stride + 1)
    images = pick_images(args.data, list(cfg["classes"]), args.images)
    print(f"bagnet33_w25 (imagenette), {size} px inputs, patch stride {stride}; {len(images)} images from {args.data}; "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")

    start = time.perf_counter()
    logit = {d: np.zeros((len(images), len(shifts))) for d in DIRECTIONS}  # true class's logit
    prob = {d: np.zeros((len(images), len(shifts))) for d in DIRECTIONS}  # prob. of the top class at shift 0
    top1 = {d: np.zeros((len(images), len(shifts)), int) for d in DIRECTIONS}
    labels = np.array([c for _, c in images])
    profiles, spreads = [], []
    mapper = EvidenceMapper(model, stride=1, pad_value=None)
    for i, (path, label) in enumerate(images):
        x = load(path, size + stride, mean, std)
        crops, keys = [], []
        for name, (ky, kx) in DIRECTIONS.items():
            for d in shifts:
                crops.append(x[:, ky * d : ky * d + size, kx * d : kx * d + size])
                keys.append((name, d))
        out = model(torch.stack(crops))
        p = out.softmax(1)
        ref = int(out[0].argmax())  # shift 0 (every direction starts with it)
        for (name, d), o, pr in zip(keys, out, p):
            logit[name][i, d], prob[name][i, d], top1[name][i, d] = float(o[label]), float(pr[ref]), int(o.argmax())
        if i < args.map_images:
            full = mapper(x[:, :size, :size], [label])[0].numpy()
            profiles.append(neighbour_profile(full, range(1, stride + 1)))
            spreads.append(full.std())
    seconds = time.perf_counter() - start

    print(f"\n{'shift':>5} | {'mean |d logit|':>28} | {'mean |d top-1 prob|':>28} | {'top-1 changed':>22} | accuracy")
    print(f"{'px':>5} | {'right   down    diag':>28} | {'right   down    diag':>28} | {'right down  diag':>22} | right")
    rows = []
    for d in shifts:
        dl = [np.abs(logit[n][:, d] - logit[n][:, 0]).mean() for n in DIRECTIONS]
        dp = [np.abs(prob[n][:, d] - prob[n][:, 0]).mean() for n in DIRECTIONS]
        ch = [100 * (top1[n][:, d] != top1[n][:, 0]).mean() for n in DIRECTIONS]
        acc = 100 * (top1["right"][:, d] == labels).mean()
        rows.append((d, dl, dp, ch, acc))
        print(f"{d:>5} | {dl[0]:>8.3f} {dl[1]:>8.3f} {dl[2]:>8.3f} | {dp[0]:>8.3f} {dp[1]:>8.3f} {dp[2]:>8.3f} | "
              f"{ch[0]:>5.1f}% {ch[1]:>5.1f}% {ch[2]:>5.1f}% | {acc:5.1f}%")
    within = np.concatenate([logit[n][:, :stride] for n in DIRECTIONS], 1)
    spread = within.max(1) - within.min(1)
    print(f"\ntrue-class logit over shifts 0..{stride - 1} px (all directions), per image: range mean {spread.mean():.3f}, "
          f"median {np.median(spread):.3f}, max {spread.max():.3f}; mean |logit| at shift 0 "
          f"{np.abs(logit['right'][:, 0]).mean():.3f}")
    flipped = np.stack([(top1[n][:, 1:stride] != top1[n][:, :1]).any(1) for n in DIRECTIONS]).any(0)
    print(f"images whose top-1 changes for some shift of 1..{stride - 1} px (any direction): {100 * flipped.mean():.1f}%")
    if profiles:
        diffs, corrs = np.mean([p[0] for p in profiles], 0), np.mean([p[1] for p in profiles], 0)
        print(f"\nfull-resolution map of the true class ({len(profiles)} images; its std over the image: "
              f"{np.mean(spreads):.2f} on average): patches d px apart (right and down)")
        print("   d px: " + " ".join(f"{d:>6}" for d in range(1, stride + 1)))
        print("mean |d|: " + " ".join(f"{v:6.2f}" for v in diffs))
        print("   corr: " + " ".join(f"{v:6.3f}" for v in corrs))
    print(f"{seconds:.0f} s")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 3.3), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for k, name in enumerate(DIRECTIONS):
        ax1.plot(list(shifts), [r[1][k] for r in rows], marker="o", label=name)
        ax2.plot(list(shifts), [r[3][k] for r in rows], marker="o", label=name)
    ax1.set(xlabel="input shift (px)", ylabel="mean |change of the true-class logit|", xticks=list(shifts))
    ax2.set(xlabel="input shift (px)", ylabel="top-1 changed (% of images)", xticks=list(shifts))
    ax1.set_title("image logit", fontsize=9)
    ax2.set_title("prediction", fontsize=9)
    if profiles:
        ax3.plot(range(1, stride + 1), diffs, marker="o", color="C3")
        ax3.axhline(np.mean(spreads), color="0.5", lw=0.8, ls=":", label="std of the map")
        ax3.set(xlabel="distance between two patches (px)", ylabel="mean |evidence difference| (logit)",
                xticks=list(range(1, stride + 1)), ylim=(0, None))
        ax3.legend(fontsize=8)
        ax3.set_title(f"full-resolution map, {len(profiles)} images", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.axvline(stride, color="0.6", lw=0.8, ls="--")
    ax1.legend(fontsize=8)
    fig.suptitle(f"bagnet33_w25 (Imagenette), {len(images)} val images: input shifted by 0..{stride} px "
                 f"(patch stride {stride})", fontsize=9)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
