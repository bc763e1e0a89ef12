"""Split a folder of category folders into two folders of symlinks, alternating categories.

Used for outlier exposure: the shipped model trains on the outliers of one half of the
categories (``OUT/train``) and its "none of these classes" flag is calibrated and measured
on the other half (``OUT/held_out``), categories it never saw. Sorted category names go
alternately to ``train`` and ``held_out``, so the split is the same on every machine.

    python tools/split_categories.py ../shared/data/caltech101-ood runs/caltech-split
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder of category folders")
    p.add_argument("out", help="gets train/ and held_out/ with a symlink per category")
    args = p.parse_args(argv)
    src, out = Path(args.source).resolve(), Path(args.out)
    if not src.is_dir():
        print(f"split_categories: error: {src} is not a folder", file=sys.stderr)
        return 1
    cats = sorted(e.name for e in os.scandir(src) if e.is_dir() and not e.name.startswith("."))
    if len(cats) < 2:
        print(f"split_categories: error: {src} has {len(cats)} category folder(s); need 2 or more", file=sys.stderr)
        return 1
    for i, cat in enumerate(cats):
        part = out / ("train" if i % 2 == 0 else "held_out")
        part.mkdir(parents=True, exist_ok=True)
        link = part / cat
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src / cat, target_is_directory=True)
    print(f"{len(cats[0::2])} categories in {out / 'train'}, {len(cats[1::2])} in {out / 'held_out'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
