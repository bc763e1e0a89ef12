"""The documentation site: it builds without a warning, its Python examples run, and every
public name has a docstring for its API page.

Examples: every ```python block of the pages in docs/ (and of the files they include, such
as benchmarks/README.md) runs offline in a temporary folder; the blocks of one page run in
order in one namespace, as a reader would run them. A block that cannot run here (it needs
the network, a GPU or the authors' ImageNet weights) has an HTML comment on the line before
it that says why, which this test reports as the reason it was skipped:

    <!-- skip: needs network (downloads the authors' ImageNet weights) -->
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_MODULES = ("bagnet", "bagnet.explain", "bagnet.robust", "bagnet.train", "bagnet.analysis", "bagnet.export")
# Names whose value is their documentation: `bagnet --version` prints it (tests/cli/test_help.py).
NO_DOCSTRING_NEEDED = {("bagnet", "__version__")}

SKIP = re.compile(r"^<!--\s*skip\b:?\s*(.*?)\s*-->$")
FENCE_OPEN = re.compile(r"^```python\s*$")


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Block:
    page: str  # the docs page, relative to docs/
    where: str  # file:line of the block's first code line (the included file for included text)
    code: str
    skip: str | None  # the reason, for a block that does not run here


def _lines(path: Path, depth: int = 0):
    """(file, line number, text) of a page with its includes expanded, as the site shows it."""
    include = _hooks().INCLUDE
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = include.match(line)
        if m and depth < 5:
            yield from _lines(ROOT / m.group(1), depth + 1)
        else:
            yield path, n, line


def _blocks(page: Path) -> list[Block]:
    blocks, lines, i = [], list(_lines(page)), 0
    while i < len(lines):
        path, n, text = lines[i]
        if not FENCE_OPEN.match(text):
            i += 1
            continue
        before = next((t.strip() for _, _, t in reversed(lines[:i]) if t.strip()), "")
        m = SKIP.match(before)
        skip = None
        if m:
            skip = m.group(1)
            if not skip:
                raise ValueError(f"{path.relative_to(ROOT)}:{n - 1}: a skip comment must say why: <!-- skip: REASON -->")
        j = i + 1
        while j < len(lines) and lines[j][2].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"{path.relative_to(ROOT)}:{n}: the python block is not closed")
        code = "\n".join(t for _, _, t in lines[i + 1 : j]) + "\n"
        blocks.append(Block(page.relative_to(DOCS).as_posix(), f"{path.relative_to(ROOT).as_posix()}:{n + 1}",
                            code, skip))
        i = j + 1
    return blocks


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


ALL_BLOCKS = [b for page in _pages() for b in _blocks(page)]
RUNNABLE_PAGES = sorted({b.page for b in ALL_BLOCKS if b.skip is None})


def test_the_pages_have_examples():
    assert len(ALL_BLOCKS) >= 10 and len(RUNNABLE_PAGES) >= 8, [b.where for b in ALL_BLOCKS]


@pytest.fixture
def offline(monkeypatch):
    """Any connection to another machine fails, so an example that downloads fails too."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost", "")) \
                and sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"tests/test_docs.py: the examples run offline, but one connects to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _check_interop(after: list[dict], tmp_path: Path) -> None:
    """The timm, model-folder, ONNX and captum examples compute what bagnet itself does."""
    import numpy as np
    import torch

    import bagnet
    from bagnet.data.transforms import Preprocessing

    timm_, whole, folder, onnx_, captum_ = after
    reference = bagnet.create_model("bagnet17_slim", pretrained="imagenette").eval()
    assert timm_["config"]["input_size"] == (3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(timm_["logits"], reference(timm_["pixels"]))
    # bagnet's preprocessing on timm's model: the whole 600 x 400 coffee photo, as bagnet eval feeds it
    from skimage import data

    assert whole["pre"] == Preprocessing.from_cfg(reference.pretrained_cfg)
    pixels = Preprocessing(112, None, reference.pretrained_cfg["mean"], reference.pretrained_cfg["std"])(data.coffee())
    assert pixels.shape == (3, 112, 168)
    with torch.no_grad():
        torch.testing.assert_close(whole["logits"], reference(pixels[None]))
    assert (tmp_path / "bagnet17-imagenette" / "model.safetensors").is_file()
    for k, v in reference.state_dict().items():
        assert torch.equal(folder["same"].state_dict()[k], v), k
    assert folder["same"].pretrained_cfg["classes"] == reference.pretrained_cfg["classes"]
    # the file's metadata rebuilds the model's own preprocessing, and ONNX Runtime computes bagnet's logits
    assert onnx_["pre"] == Preprocessing.from_cfg(reference.pretrained_cfg)
    x = Preprocessing.from_cfg(reference.pretrained_cfg)(onnx_["photo"])[None]
    assert x.shape == (1, 3, 112, 149)  # the whole 400 x 300 photo, short side 112 px
    with torch.no_grad():
        expected = reference(x).numpy()
    assert np.abs(onnx_["logits"] - expected).max() < 1e-4 * np.abs(expected).max()
    assert onnx_["patch_logits"].shape == (1, 10, (112 - 17) // 8 + 1, (149 - 17) // 8 + 1)
    assert captum_["evidence"].shape == captum_["gradients"].shape == captum_["x"].shape
    assert float(captum_["delta"].abs().max()) < 1e-4


# Checks of what a page's examples computed: called with the namespace as it was after
# each block (a later block may rebind a name) and the folder they ran in.
CHECKS = {"interop.md": _check_interop}


@pytest.mark.slow  # the examples load the shipped models, train tiny ones and export one to ONNX: ~1 min
@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch, offline):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    after = []
    try:
        for block in (b for b in ALL_BLOCKS if b.page == page and b.skip is None):
            line = int(block.where.rsplit(":", 1)[1])
            # compiled with the block's place, so a traceback names the file and line
            code = compile("\n" * (line - 1) + block.code, str(ROOT / block.where.rsplit(":", 1)[0]), "exec")
            exec(code, namespace)
            after.append(dict(namespace))
        if page in CHECKS:
            CHECKS[page](after, tmp_path)
    finally:
        plt.close("all")


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.skip is not None], ids=lambda b: b.where)
def test_skipped_example(block):
    pytest.skip(f"{block.where}: {block.skip}")


def _needs(module: str):
    """The docs tools are in the dev extra: missing under CI=true is a failure, not a skip."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")


@pytest.mark.slow  # 10-30 s
def test_site_builds_strict_offline_with_an_api_page_per_module(tmp_path):
    _needs("mkdocs")
    _needs("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning",
           # a plugin that tries to download anything (fonts, assets) fails instead
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.MULTILINE), log
    assert not any("fonts.googleapis.com" in p.read_text(errors="ignore") for p in site.rglob("*.html"))

    # every public name has its entry, under its public name or where it is defined
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        html = (site / "api" / module_name.rsplit(".", 1)[-1] / "index.html").read_text(encoding="utf-8")
        missing = []
        for name in module.__all__:
            if (module_name, name) in NO_DOCSTRING_NEEDED:
                continue
            obj = getattr(module, name)
            ids = {f"{module_name}.{name}"}
            if inspect.isclass(obj) or inspect.isfunction(obj):
                ids.add(f"{obj.__module__}.{obj.__qualname__}")
            if not any(f'id="{i}"' in html for i in ids):
                missing.append(name)
        assert not missing, f"api/{module_name}: no entry for {missing}"

    # evidence_map has its own anchor, and its signature and arguments are shown
    html = (site / "api" / "explain" / "index.html").read_text(encoding="utf-8")
    start = html.index('id="bagnet.explain.evidence_map"')
    entry = re.sub(r"<[^>]+>", "", html[start : html.index('class="doc doc-heading"', start + 40)])
    for arg in ("model", "images", "classes", "stride", "pad_value", "max_memory", "tile_size", "dtype"):
        assert re.search(rf"\b{arg}\b", entry), f"evidence_map's entry does not show its argument {arg}"
    assert "Parameters" in entry


def _documented_object(package, module_name: str, name: str):
    """The griffe object mkdocstrings renders for ``module_name.name``."""
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        # where it is defined: also right for names griffe cannot follow statically (a lazy
        # module __getattr__, a function named like the module it comes from)
        return package[f"{obj.__module__}.{obj.__qualname__}".removeprefix("bagnet.")]
    found = package[module_name.removeprefix("bagnet").lstrip(".")] if module_name != "bagnet" else package
    found = found[name]
    return found.final_target if found.is_alias else found


def test_every_public_name_has_a_docstring():
    griffe = _needs("griffe")
    package = griffe.load("bagnet", search_paths=[str(ROOT / "src")], resolve_aliases=False)
    missing = []
    for module_name in PUBLIC_MODULES:
        for name in importlib.import_module(module_name).__all__:
            if (module_name, name) in NO_DOCSTRING_NEEDED:
                continue
            doc = _documented_object(package, module_name, name).docstring
            if doc is None or not doc.value.strip():
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without a docstring (their API entry would be empty or missing): {missing}"
