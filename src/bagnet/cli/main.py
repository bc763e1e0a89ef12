"""Entry point of the ``bagnet`` command.

Each sub-command lives in its own module that defines ``add_parser(subparsers)``; the
parser it adds sets ``func(args) -> int``. Errors reach the user as one line, never as a
traceback (set ``BAGNET_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from .._extras import MissingExtraError
from ._help import HelpFormatter, all_parsers

# Order is the order of `bagnet --help`.
COMMANDS = ("models", "train", "eval", "explain", "calibrate", "certify", "attack", "analyze", "demo", "serve", "bench",
            "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bagnet",
        description="Bag-of-local-features models: heatmaps, training, evaluation and the paper's analyses.",
    )
    parser.add_argument("--version", action="version", version=f"bagnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bagnet.cli.{name.replace('-', '_')}").add_parser(sub)
    for p in all_parsers(parser):
        p.formatter_class = HelpFormatter  # whatever a sub-command asked for: one look for all
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"bagnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the CLI's promise: one clear line, not a traceback
        if os.environ.get("BAGNET_DEBUG"):
            raise
        print(f"bagnet {args.command}: error: {_describe(e)}", file=sys.stderr)
        return 1


def _describe(e: Exception) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"no such file: {e.filename}"
    text = str(e).strip() or type(e).__name__
    if isinstance(e, (ValueError, OSError, MissingExtraError)):  # their messages are written for users
        return text.splitlines()[0]
    return f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
