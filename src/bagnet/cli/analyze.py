"""``bagnet analyze``: the paper's analyses for any BagNets against any reference networks.

Each experiment is a sub-command that writes ``NAME.json`` and ``NAME.png`` into ``--out``
and refreshes the HTML report there; ``all`` runs every experiment from one config file,
resuming where it stopped. Models are given as ``[LABEL=]NAME[@WEIGHTS]`` or
``[LABEL=]PATH`` (a bagnet model file names its model): a bare NAME means its published
weights, as in every other command, and ``NAME@random`` random ones, e.g.
``--bagnet B33=runs/b33/model.pt --reference R18=resnet18@runs/r18/model.pt``.
See docs/analyze.md.
"""

from __future__ import annotations

import argparse
import logging

from ._common import add_data_args, add_device_args

logger = logging.getLogger(__name__)

# name -> help; the order is that of `bagnet analyze --help` and of the report.
_EXPERIMENTS = {
    "accuracy": "top-1/top-5 and images/s of every model",
    "patch-size": "BagNet accuracy against the patch size q",
    "logit-correlation": "Pearson r of BagNet and reference logits, against q",
    "error-distribution": "per-class errors of BagNets against references (scatter, r)",
    "interactions": "masking patches one by one vs all together: do parts act independently?",
    "spatial-sensitivity": "mask cells ranked by BagNet heatmaps, captum attributions or at random",
    "class-patches": "the most class-typical patches of each BagNet over the data",
    "misclassified": "heatmaps of misclassified images",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="the paper's analyses: accuracy, correlations, interactions, ...",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    p.set_defaults(func=_no_experiment, _parser=p)
    for name, text in _EXPERIMENTS.items():
        e = asub.add_parser(name, help=text, description=text)
        _add_session_args(e)
        _EXTRA.get(name, lambda _: None)(e)
        e.set_defaults(func=run)
    a = asub.add_parser("all", help="run every experiment from a config file and write the report",
                        description="Run every experiment a config file (JSON or TOML) enables, resuming "
                        "finished steps, and write report.html + summary.md. See docs/analyze.md.")
    a.add_argument("--config", required=True, help="JSON or TOML config file")
    a.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    a.add_argument("--force", action="store_true", help="recompute steps whose results are up to date")
    a.add_argument("--only", default=None, metavar="NAME,...", help="run only these experiments")
    a.add_argument("--device", default=None, help="override the config's device")
    _add_threads(a)
    _add_bootstrap(a, default=None)
    a.set_defaults(func=run_all)
    r = asub.add_parser("report", help="rebuild report.html and summary.md from the results in --out")
    r.add_argument("--out", required=True, help="folder with the experiments' JSON and PNG files")
    r.add_argument("--title", default="BagNet analyses", help="title of the report")
    r.set_defaults(func=run_report)


def _add_session_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--bagnet", action="append", default=[], metavar="SPEC",
                   help="a BagNet: [LABEL=]NAME[@WEIGHTS] or [LABEL=]PATH (repeat for several)")
    g.add_argument("--reference", action="append", default=[], metavar="SPEC",
                   help="a reference network (BagNet or torchvision classifier), same form (repeatable)")
    add_data_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default="analysis", help="output folder (default: ./analysis)")
    add_device_args(p)
    _add_threads(p)
    _add_bootstrap(p, default=2000)


def _add_bootstrap(p: argparse.ArgumentParser, default: int | None) -> None:
    g = p.add_argument_group("statistics")
    what = "default: 2000" if default else "default: the config's bootstrap_resamples, else 2000"
    g.add_argument("--bootstrap-resamples", type=int, default=default, metavar="N",
                   help=f"resamples of the 95%% bootstrap intervals over images and of the paired comparisons ({what})")
    g.add_argument("--bootstrap-seed", type=int, default=0 if default else None, metavar="S",
                   help="seed of the bootstrap resamples (default: 0" + ("" if default else ", or the config's") + ")")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per operation (default: PyTorch's; use 1 on a CPU shared with other jobs)")


def _interactions_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("interactions")
    g.add_argument("--patches", dest="n_patches", type=int, default=None, help="patches per image (default: 10)")
    g.add_argument("--patch-size", default=None, help="patch side in pixels, or 'q' for the largest BagNet's (default: 8)")
    g.add_argument("--gap", type=int, default=None, help="minimum pixels between patches (default: 0)")
    g.add_argument("--target", choices=("true", "predicted"), default=None, help="class whose logit is tracked")


def _spatial_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spatial sensitivity")
    g.add_argument("--methods", default=None, metavar="M,...",
                   help="attribution methods: saliency,integrated_gradients,deeplift,lrp,occlusion,gradcam "
                        "(default: all)")
    g.add_argument("--max-k", type=int, default=None, help="mask up to this many cells (default: 30)")
    g.add_argument("--k-step", type=int, default=None, help="step between k values (default: 2)")
    g.add_argument("--cell", type=int, default=None, help="cell side in pixels (default: 8)")
    _heatmap_stride(g, "1")
    g.add_argument("--ig-steps", type=int, default=None,
                   help="integrated-gradients steps, one forward and backward pass each (default: 25)")
    g.add_argument("--lrp-epsilon", type=float, default=None, help="LRP epsilon (default: 0.01)")
    g.add_argument("--occlusion-window", type=int, default=None, metavar="PX",
                   help="occluded square side (default: the cell, 8); (image / stride)^2 forward passes per image")
    g.add_argument("--occlusion-stride", type=int, default=None, metavar="PX",
                   help="step between occluded squares (default: the window)")
    g.add_argument("--gradcam-layer", default=None, metavar="MODULE",
                   help="module Grad-CAM reads in every network (default: each network's last convolutional block)")
    g.add_argument("--test-bagnets", action=argparse.BooleanOptionalAction, default=None,
                   help="also test the BagNets, ranking their cells by the references' attributions too "
                        "(default: yes; --no-test-bagnets tests the references only)")


def _class_patches_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("class patches")
    g.add_argument("--classes", default=None, metavar="C,...", help="class names (default: all)")
    g.add_argument("--top", type=int, default=None, help="patches per class (default: 8)")
    _heatmap_stride(g, "native")


def _misclassified_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("misclassified")
    g.add_argument("--count", type=int, default=None, help="images per BagNet (default: 8)")
    _heatmap_stride(g, "1")


def _heatmap_stride(g, default: str) -> None:
    g.add_argument("--heatmap-stride", default=None,
                   help=f"evidence map stride: 1 (the paper's full-resolution heatmaps) or 'native' (default: {default})")
    g.add_argument("--dtype", dest="heatmap_dtype", default=None, metavar="float32|bfloat16|float16|auto",
                   help="arithmetic of the BagNet heatmaps: float32 (exact, default); bfloat16/float16 are faster "
                        "on hardware with such units but approximate (docs/precision.md); auto picks bfloat16 "
                        "where the device has bfloat16 matrix units, and says so")


_EXTRA = {
    "interactions": _interactions_args,
    "spatial-sensitivity": _spatial_args,
    "class-patches": _class_patches_args,
    "misclassified": _misclassified_args,
}

# CLI destinations that are experiment options (passed on only when given).
_OPTION_DESTS = ("n_patches", "patch_size", "gap", "target", "methods", "max_k", "k_step", "cell",
                 "heatmap_stride", "heatmap_dtype", "ig_steps", "lrp_epsilon", "test_bagnets", "occlusion_window",
                 "occlusion_stride", "gradcam_layer", "classes", "top", "count")


def _no_experiment(args: argparse.Namespace) -> int:
    args._parser.print_help()
    return 2


def _options(args: argparse.Namespace) -> dict:
    from ._common import map_dtype, resolve_device

    opts = {k: getattr(args, k) for k in _OPTION_DESTS if getattr(args, k, None) is not None}
    if "heatmap_dtype" in opts:
        # Recorded as the dtype it resolved to ('auto' would not say what the maps were).
        dtype = map_dtype(opts["heatmap_dtype"], resolve_device(args.device), "analyze")
        opts["heatmap_dtype"] = str(dtype).removeprefix("torch.")
    if "patch_size" in opts and opts["patch_size"] != "q":
        opts["patch_size"] = _int(opts["patch_size"], "--patch-size")
    if "heatmap_stride" in opts and opts["heatmap_stride"] != "native":
        opts["heatmap_stride"] = _int(opts["heatmap_stride"], "--heatmap-stride")
    if "classes" in opts:
        opts["classes"] = [c.strip() for c in opts["classes"].split(",") if c.strip()]
    return opts


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag} takes a whole number, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..analysis._specs import parse_model_spec
    from ..analysis.report import tables_for, write_report
    from ..analysis.run import Session, run_experiment
    from ._common import check_data_args, data_folder

    if not args.bagnet and args.experiment not in ("accuracy",):
        raise ValueError(f"{args.experiment} needs at least one --bagnet")
    if not args.bagnet and not args.reference:
        raise ValueError("name at least one model with --bagnet or --reference")
    check_data_args(args)
    folder = data_folder(args)
    options = _options(args)  # bad options fail before any model is loaded
    session = Session(
        str(folder), [parse_model_spec(s) for s in args.bagnet], [parse_model_spec(s) for s in args.reference],
        out_dir=args.out, split=".", img_size=args.img_size, max_images=args.max_images,
        batch_size=args.batch_size, workers=args.workers, device=args.device, seed=args.seed,
        class_map=args.class_map, threads=args.threads,
        restrict_to_folder_classes=args.restrict_to_folder_classes,
        bootstrap_resamples=args.bootstrap_resamples, bootstrap_seed=args.bootstrap_seed,
    )
    result, _ = run_experiment(session, args.experiment, options, force=True)
    _print_tables(tables_for(args.experiment, result))
    paths = write_report(session.out_dir)
    print(f"results: {session.out_dir}  report: {paths['html']}")
    return 0


def run_all(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..analysis.run import load_config
    from ..analysis.run import run_all as _run_all

    config = load_config(args.config)
    if args.out:
        config = dataclasses.replace(config, out=str(Path(args.out)))
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    if args.threads:
        config = dataclasses.replace(config, threads=args.threads)
    if args.bootstrap_resamples is not None:
        config = dataclasses.replace(config, bootstrap_resamples=args.bootstrap_resamples)
    if args.bootstrap_seed is not None:
        config = dataclasses.replace(config, bootstrap_seed=args.bootstrap_seed)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    paths = _run_all(config, force=args.force, only=only)
    print(f"report: {paths['html']}\nsummary: {paths['md']}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report

    paths = write_report(args.out, title=args.title)
    print(f"report: {paths['html']}\nsummary: {paths['md']}")
    return 0


def _print_tables(tables) -> None:
    for caption, header, rows in tables:
        if caption:
            print(caption)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for line in (header, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        print()
