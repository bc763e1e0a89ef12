"""A compact copy of an image-folder data set that travels to a lent GPU machine (<= 64 MiB).

    python benchmarks/gpu_data.py ../shared/data/imagenette gpu-data            # 128 px, all of train, 1000 val
    python benchmarks/gpu_data.py DATA gpu-data --tiny                          # a generated 3-class folder

Every train image is resized so its short side is ``--size`` px and saved as a JPEG of
``--quality``; val keeps a class-stratified subset of ``--val-images`` (the one
``--max-images`` subset of bagnet). ``classes.tsv`` comes along. ``gpu-data/`` is git-ignored
and carried by the device tool (``carry: ["gpu-data"]``); it is never committed.
``--tiny`` writes a small generated folder instead (for the CPU dry run of benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder with train/<class>/ and val/<class>/ (ignored with --tiny)")
    p.add_argument("out", help="new folder to write")
    p.add_argument("--size", type=int, default=128, help="short side in pixels (default: 128)")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality (default: 80)")
    p.add_argument("--val-images", type=int, default=1000, help="val images kept (default: 1000)")
    p.add_argument("--tiny", action="store_true", help="a generated 3-class folder instead")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"gpu_data: error: {out} exists; remove it first", file=sys.stderr)
        return 1
    if args.tiny:
        from bagnet.testing import make_image_folder

        make_image_folder(out, per_class=8, size=64, splits=("train", "val"))
        classes = sorted(d.name for d in (out / "train").iterdir())
        (out / "classes.tsv").write_text("".join(f"{c}\t{i}\t{c}\n" for i, c in enumerate(classes)))
        print(f"wrote a generated folder to {out}")
        return 0

    from PIL import Image

    from bagnet.data.folder import ImageFolder, subset_indices
    from bagnet.data.images import load_image

    src = Path(args.data)
    total = 0
    for split, limit in (("train", None), ("val", args.val_images)):
        ds = ImageFolder(src / split)
        for i in subset_indices(ds.targets, limit):
            path, target = ds.samples[i]
            img = load_image(path)
            scale = args.size / min(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
            dst = out / split / ds.classes[target] / (Path(path).stem + ".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            img.save(dst, "JPEG", quality=args.quality)
            total += dst.stat().st_size
    if (src / "classes.tsv").is_file():
        shutil.copy(src / "classes.tsv", out / "classes.tsv")
    print(f"wrote {out}: {total / 2**20:.1f} MiB of images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
