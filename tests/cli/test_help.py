"""Every sub-command's --help: each option explained, its default shown once, plain text.

Walks the whole parser tree, so options and sub-commands added later are checked too.
"""

import argparse
import re

import pytest

from bagnet.cli._help import HelpFormatter, all_parsers, plain
from bagnet.cli.main import build_parser

RST = re.compile(r"``|`|:(class|func|meth|mod|attr|data|obj):|^\s*\.\. \w+::", re.MULTILINE)


def _parsers():
    return [(p.prog, p) for p in all_parsers(build_parser())]


def _options(parser):
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [a for a in parser._actions if not isinstance(a, skip)]


@pytest.mark.parametrize("prog,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_its_default_once(prog, parser):
    problems = []
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        if not text.strip():
            problems.append(f"{name}: no help")
            continue
        mentions = len(re.findall(r"\bdefault\b", text, re.IGNORECASE))
        if mentions > 1:
            problems.append(f"{name}: the default is given {mentions} times: {text!r}")
        meaningful = action.option_strings and action.default not in (None, [], argparse.SUPPRESS) and not isinstance(
            action.default, bool)
        if meaningful:
            shown = action.default if not isinstance(action.default, list) else " ".join(map(str, action.default))
            forms = {str(shown)} | ({f"{shown:g}"} if isinstance(shown, float) else set())
            if mentions != 1 or not any(f in text for f in forms):
                problems.append(f"{name}: help does not show its default {shown!r}: {text!r}")
        if isinstance(action.default, bool) and re.search(r"\(default: (True|False)\)", text):
            problems.append(f"{name}: a flag's help shows its Python value: {text!r}")
    assert not problems, f"{prog}:\n" + "\n".join(problems)


@pytest.mark.parametrize("prog,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_help_is_plain_text(prog, parser):
    text = parser.format_help()
    found = RST.search(text)
    assert not found, f"{prog} --help shows markup {found.group(0)!r}:\n{text}"
    assert parser.formatter_class is HelpFormatter


def test_plain_removes_restructuredtext_by_hand():
    assert plain("see :class:`~bagnet.train.TrainConfig` and ``--epochs`` or `bagnet models`") == (
        "see TrainConfig and --epochs or 'bagnet models'")
    assert plain(":func:`bagnet.create_model`") == "bagnet.create_model"


def test_version_prints_the_package_version(capsys):
    import bagnet
    from bagnet.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"bagnet {bagnet.__version__}"


def test_the_installed_command_prints_the_version_pyproject_declares():
    """`bagnet --version`, as installed, agrees with the version the package metadata carries."""
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    exe = Path(sys.executable).with_name("bagnet")
    if not exe.is_file():
        pytest.skip(f"the bagnet command is not installed beside {sys.executable}")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == f"bagnet {version('bagnet')}"
