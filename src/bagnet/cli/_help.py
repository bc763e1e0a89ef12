"""How ``bagnet ... --help`` reads: plain text, every default shown once.

Sub-command descriptions are the modules' docstrings, written in reStructuredText for the
API docs; :func:`plain` turns their markup into plain text. :class:`HelpFormatter` keeps
paragraphs and list items apart, and adds ``(default: X)`` to an option's help unless the
help already says what the default is, or there is nothing to say (a flag, or no value).
``bagnet.cli.main`` applies it to every parser, so new sub-commands get it too.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_QUOTED = re.compile(r"`([^`]+)`")


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: roles (``:class:`~a.B``` becomes ``B``),
    double-backtick literals (their content) and backticks (single quotes)."""

    def role(m: re.Match) -> str:
        target = m.group(2).split("<")[-1].rstrip(">").strip()
        return target.rsplit(".", 1)[-1] if m.group(1) else target

    text = _ROLE.sub(role, text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    return _QUOTED.sub(lambda m: f"'{m.group(1)}'", text)


def _no_default_to_show(action: argparse.Action) -> bool:
    return (
        not action.option_strings
        or action.default is None
        or action.default is argparse.SUPPRESS
        or isinstance(action.default, bool)  # flags: their help says what they turn on or off
        or action.default == []
    )


class HelpFormatter(argparse.HelpFormatter):
    """Plain text, paragraphs kept, one default per option."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", textwrap.dedent(plain(text)).strip()):
            lines = para.splitlines()
            if any(line.lstrip().startswith(("- ", "* ")) or line.startswith((" ", "\t")) for line in lines):
                out.append("\n".join(indent + line for line in lines))  # a list or an example: as written
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        if "default" in text.lower() or _no_default_to_show(action):
            return text
        return f"{text} (default: %(default)s)"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_parsers(sub)
