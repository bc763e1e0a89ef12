"""``bagnet models``: every registered model with its patch size, stride, size and cost."""

from __future__ import annotations

import argparse

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models", description=__doc__)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'bagnet*_slim'")
    p.add_argument("--img-size", type=int, default=224, help="input side for the GMACs column (default 224)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import create_model, list_models
    from ..models._profile import count_macs, count_params
    from ..models._weights import pretrained_tags

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; `bagnet models` lists them all")
    rows = []
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        for name in names:
            model = create_model(name)
            q = model.receptive_field
            gmacs = f"{count_macs(model, args.img_size) / 1e9:.2f}" if args.img_size >= q else "-"
            tags = ",".join(pretrained_tags(name)) or "-"
            rows.append((name, str(q), str(model.patch_stride), f"{count_params(model) / 1e6:.2f}M", gmacs, tags))
    header = ("model", "q", "stride", "params", f"GMACs@{args.img_size}", "weights")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0
