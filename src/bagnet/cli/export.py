"""``bagnet export``: a fused BagNet as an ONNX file or a torch.export ExportedProgram.

The exported model takes normalized images of any batch size and any height and width of
at least the receptive field, and returns the logits (``--patch-logits``: also the class
evidence of every patch). Mean, std, image size and class names are stored in the file.
"""

from __future__ import annotations

import argparse

from ._common import add_model_args, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import FORMATS, OPSET

    p = sub.add_parser(
        "export",
        help="export a fused BagNet to ONNX or a torch.export ExportedProgram",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    g = p.add_argument_group("export")
    g.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or exported-program (.pt2)")
    g.add_argument("--out", required=True, help="output file")
    g.add_argument("--patch-logits", action="store_true", help="also output the class evidence of every patch")
    g.add_argument("--opset", type=int, default=None, help=f"ONNX opset (--format onnx; default {OPSET})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import check_writable
    from ..export import OPSET, export_onnx, save_exported_program
    from ..models import BagNet, FusedBagNet

    check_writable(args.out, "--out")
    if args.opset is not None and args.format != "onnx":
        raise ValueError(f"--opset is the ONNX opset; --format {args.format} has none")
    model = resolve_model(args)
    if not isinstance(model, BagNet | FusedBagNet):
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"bagnet export takes BagNets; {name} is not one")
    if args.format == "onnx":
        path = export_onnx(model, args.out, patch_logits=args.patch_logits,
                           opset=OPSET if args.opset is None else args.opset)
    else:
        path = save_exported_program(model, args.out, patch_logits=args.patch_logits)
    outputs = "logits and patch logits" if args.patch_logits else "logits"
    print(f"{path}: {args.format}, {getattr(model, 'model_name', 'model')} ({outputs}), dynamic batch/height/width")
    return 0
