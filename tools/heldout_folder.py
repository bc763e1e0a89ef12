"""A folder of symlinks to the images a run held out with ``--val-split``.

    python tools/heldout_folder.py ../shared/data/imagenette/train runs/fixres-held-out --fraction 0.1 --seed 2

Reproduces the split exactly as ``bagnet train`` made it (``bagnet.data.folder.split_indices``
over the folder's images in ``ImageFolder`` order), so commands that take a folder
(``bagnet calibrate --data``, ``bagnet eval``) can use the held-out images without copying
them. The layout is ``OUT/<class>/<image>``; an existing OUT is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the folder of class folders the run split (its train/)")
    p.add_argument("out", help="new folder to fill with symlinks")
    p.add_argument("--fraction", type=float, required=True, help="the run's --val-split")
    p.add_argument("--seed", type=int, required=True, help="the run's --seed")
    args = p.parse_args(argv)

    from bagnet.data.folder import ImageFolder, split_indices

    out = Path(args.out)
    if out.exists():
        print(f"heldout_folder: error: {out} exists; remove it or choose another folder", file=sys.stderr)
        return 1
    data = ImageFolder(args.folder)
    _, held = split_indices(data.targets, args.fraction, seed=args.seed)
    for i in held:
        path = Path(data.samples[i][0]).resolve()
        link = out / data.classes[data.samples[i][1]] / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    print(f"{len(held)} of {len(data)} images of {args.folder} linked into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
