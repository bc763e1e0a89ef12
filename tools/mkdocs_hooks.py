"""MkDocs hooks of the documentation site (mkdocs.yml: ``hooks``).

The markdown files are written to be read on their own too (in the repository, on a code
host), so their links are relative to the file that holds them, wherever it lies. The site
is built from ``docs/`` only; these hooks make both work:

* **Includes.** A line ``--8<-- "PATH"`` (PATH relative to the repository root, e.g.
  ``CHANGELOG.md`` or ``benchmarks/README.md``) is replaced by that file's text, so a page
  shows a file kept elsewhere without a second copy of it. Links inside the included text
  are rewritten to be relative to the including page.
* **Links out of the site.** A link to an included file (``../benchmarks/README.md#gpu``)
  goes to the page that includes it. A link to any other file of the repository outside
  ``docs/`` (a script, a tool), or to a folder without an ``index.md`` (which the site has
  no page for), goes to ``repo_url`` when mkdocs.yml sets one, and otherwise keeps its text
  without the link. A link whose target exists nowhere is left as it is, so
  that ``mkdocs build --strict`` reports it.

Fenced code blocks are left alone.

* **Sphinx roles in docstrings.** The docstrings name other objects the Sphinx way
  (``:func:`evidence_map```, ``:class:`~bagnet.models.BagNet```), which the API pages would
  show as literal text. Each becomes a link to that object's entry where the site has one
  (looked up as written, then in the page's module), and its plain name otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

INCLUDE = re.compile(r'^--8<--\s+"([^"]+)"\s*$', re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target has no spaces or parentheses here
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(([^()\s]+)\)")

_included_by: dict[Path, Path] = {}  # included file -> the docs page that includes it


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    """Find which page includes which file, so that links to that file can go to the page."""
    _included_by.clear()
    docs = Path(config.docs_dir).resolve()
    for f in files.documentation_pages():
        src = docs / f.src_uri
        for target in INCLUDE.findall(src.read_text(encoding="utf-8")):
            _included_by.setdefault((_root(config) / target).resolve(), src)
    return files


def _rewrite_links(text: str, base: Path, page: Path, config) -> str:
    """Rewrite the links of ``text``, written relative to the folder ``base``, for ``page``."""
    docs = Path(config.docs_dir).resolve()
    root = _root(config)
    repo_url = (config.repo_url or "").rstrip("/")

    def link(m: re.Match) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
            return m.group(0)  # a URL, an anchor of this page or an absolute path
        path, hash_, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if resolved in _included_by:
            resolved = _included_by[resolved]
        inside = resolved == docs or docs in resolved.parents
        if inside and not (resolved.is_dir() and not (resolved / "index.md").is_file()):
            new = os.path.relpath(resolved, page.parent).replace(os.sep, "/")
            if path.endswith("/"):
                new += "/"
            return f"{bang}[{label}]({new}{hash_}{anchor})"
        if resolved.exists() and root in resolved.parents:
            rel = resolved.relative_to(root).as_posix()
            if repo_url:
                kind = "tree" if resolved.is_dir() else "blob"
                return f"{bang}[{label}]({repo_url}/{kind}/main/{rel}{hash_}{anchor})"
            return label
        return m.group(0)  # broken: the strict build reports it

    out, last = [], 0
    for fence in FENCE.finditer(text):
        out.append(LINK.sub(link, text[last:fence.start()]))
        out.append(fence.group(0))
        last = fence.end()
    out.append(LINK.sub(link, text[last:]))
    return "".join(out)


def expand(text: str, base: Path, page: Path, config, depth: int = 0) -> str:
    """``text`` (written relative to the folder ``base``) with its includes expanded and its
    links rewritten for ``page``."""
    root = _root(config)
    parts, last = [], 0
    for m in INCLUDE.finditer(text):
        parts.append(_rewrite_links(text[last:m.start()], base, page, config))
        target = (root / m.group(1)).resolve()
        if depth > 4 or not target.is_file():
            raise ValueError(f"{page}: cannot include {m.group(1)!r} (no such file, or includes nested too deep)")
        parts.append(expand(target.read_text(encoding="utf-8"), target.parent, page, config, depth + 1))
        last = m.end()
    parts.append(_rewrite_links(text[last:], base, page, config))
    return "".join(parts)


def on_page_markdown(markdown, page, config, files):
    src = (Path(config.docs_dir) / page.file.src_uri).resolve()
    return expand(markdown, src.parent, src, config)


ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def on_page_content(html, page, config, files):
    parts = page.file.src_uri.split("/")
    module = "bagnet" if parts[0] != "api" or parts[-1] in ("bagnet.md", "index.md") else f"bagnet.{parts[-1][:-3]}"

    def role(m: re.Match) -> str:
        tilde, name, call = m.groups()
        shown = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
        here = f"{module}.{name.rsplit('.', 1)[-1]}" if "." in name else f"{module}.{name}"
        first = name if "." in name else here
        # optional: a name the site has no entry for stays plain code, without a warning
        return f'<autoref identifier="{first}" slug="{here}" optional><code>{shown}</code></autoref>'

    return ROLE.sub(role, html)
