"""``bagnet serve``: a web page to upload an image (or pick a sample) and explore its
evidence maps class by class, at the model's native stride or at full resolution.

Binds to 127.0.0.1 unless ``--host`` says otherwise. The page has no authentication;
requests that name another host (DNS rebinding) or come from another site's page are
refused. Reach it by another name with ``--allow-host NAME``.

``--cleanser-model SPEC`` (``resnet18@runs/resnet18/model.pt``, ``resnet18@random``, a model
file) adds a second classifier with the same classes: when a sticker size is chosen, the
page shows its PatchCleanser verdict next to the BagNet's certificate (666 passes per image
and size for 6 x 6 masks: seconds to a minute on a CPU).
"""

from __future__ import annotations

import argparse

from ._common import add_device_args, add_dtype_arg, add_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="interactive heatmap explorer in the browser",
        description=__doc__,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (repeatable; localhost and the "
                        "--host address are always allowed)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads are refused (default: 10)")
    p.add_argument("--cache-mb", type=float, default=1024.0,
                   help="memory for the full-resolution features of recent images, which make class switches of "
                        "many-class models fast (default: 1024; BagNet-33 needs 392 per 224x224 image, 588 per 3:2 photo; 0: none)")
    add_model_args(p)
    add_device_args(p)
    p.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="short side images are resized to (default: the size the model names, 192 px for the "
                        "shipped model; 224 if it names none)")
    add_dtype_arg(p)
    p.add_argument("--cleanser-model", default=None, metavar="SPEC",
                   help="a second classifier with the same classes (any model: resnet18@runs/resnet18/model.pt, "
                        "resnet18@random, a model file) whose PatchCleanser verdict the page shows next to the "
                        "BagNet's certificate")
    p.add_argument("--cleanser-masks", type=int, default=None, metavar="K",
                   help="PatchCleanser's masks per axis: K x K masks, K^2 (K^2 + 1) / 2 passes per verdict "
                        "(default: 6, the paper's; 666 passes)")
    p.set_defaults(func=run)
    p.epilog = ("Without --model/--weights: the authors' ImageNet BagNet-33 if its weights are downloaded, else the "
                "shipped Imagenette model; --weights imagenet uses (and downloads once) BagNet-33.")


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import sys
    import threading

    from .._text import plural
    from ..app import Explorer, make_server
    from ._common import map_dtype, resolve_device
    from .demo import resolve_demo_model

    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError(f"--max-upload-mb must lie in (0, 1024], got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 0..65535, got {args.port}")
    if not 0 <= args.cache_mb <= 2**20:
        raise ValueError(f"--cache-mb must lie in [0, 1048576], got {args.cache_mb}")
    if args.cleanser_masks is not None and args.cleanser_model is None:
        raise ValueError("--cleanser-masks sets the masks of --cleanser-model's PatchCleanser; add --cleanser-model SPEC")
    from ..robust._cleanser import DEFAULT_MASKS

    args.cleanser_masks = DEFAULT_MASKS if args.cleanser_masks is None else args.cleanser_masks
    if not 1 <= args.cleanser_masks <= 32:
        raise ValueError(f"--cleanser-masks must lie in 1..32, got {args.cleanser_masks}")
    device = resolve_device(args.device)
    dtype = map_dtype(args.dtype, device, "serve")
    model = resolve_demo_model(args)
    reference = None
    if args.cleanser_model is not None:
        from ..models._spec import load_spec, parse_spec

        # NAME@random gets the explored model's number of classes (weights bring their own).
        try:
            reference = load_spec(parse_spec(args.cleanser_model), num_classes=int(model.num_classes))
        except ValueError as e:
            raise ValueError(f"--cleanser-model {args.cleanser_model}: {e}") from None
        except OSError as e:
            raise OSError(f"--cleanser-model {args.cleanser_model}: {e}") from None
    try:
        explorer = Explorer(model, device=device, img_size=args.img_size, cache_bytes=int(args.cache_mb * 2**20),
                            dtype=dtype, cleanser_model=reference, cleanser_masks=args.cleanser_masks)
    except ValueError as e:
        if reference is None:
            raise
        raise ValueError(f"--cleanser-model {args.cleanser_model}: {e}") from None
    try:
        server = make_server(explorer, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
                             allow_hosts=args.allow_host)
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another --port") from None
    # "Ctrl+C to stop" must hold even where SIGINT was inherited as ignored (a process
    # started in the background by a script or a test runner): Python then installs no
    # handler of its own and the server could only be killed.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"bagnet serve: {explorer.model_name} on {server.url} (Ctrl+C to stop)", flush=True)
    if explorer.cleanser_model is not None:
        cm = explorer.cleanser_model
        print(f"bagnet serve: PatchCleanser verdicts of {cm.name} ({cm.masks}x{cm.masks} masks, {cm.passes()} passes "
              f"per image and sticker size; classes matched {cm.classes_matched})"
              + (f"; {cm.note}" if cm.note else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    busy = server.stop_working()
    if busy:
        # A thread is inside torch (a full-resolution map) or matplotlib: letting the
        # interpreter shut down under it aborts the process ("terminate called without an
        # active exception", exit 134). Nothing is left to save, so leave at once instead.
        print(f"bagnet serve: stopped ({plural(busy, 'request')} in progress abandoned)", flush=True)
        sys.stderr.flush()
        os._exit(0)
    print("bagnet serve: stopped")
    return 0
