"""The package's layers: models -> explain/train/data -> analysis -> app/cli, one way.

Imports are read from the source (also those inside functions, which would otherwise
hide a cycle), so these checks need no import of the package.
"""

import ast
from pathlib import Path

import bagnet

SRC = Path(bagnet.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["bagnet", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """bagnet modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # "from pkg import sub" imports the module pkg.sub; "from pkg import name" imports pkg.
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in known else root for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def test_library_never_imports_the_cli():
    offenders = sorted(
        f"{n} imports {t}"
        for n, targets in _graph().items()
        if not n.startswith(("bagnet.cli", "bagnet.__main__"))
        for t in targets
        if t.startswith("bagnet.cli")
    )
    assert not offenders, offenders


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components; a component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_cycle_checker_sees_cycles(tmp_path):
    # The checker itself must be able to fail: two modules importing each other inside functions.
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from .b import g\n")
    known = {"bagnet.x.a", "bagnet.x.b"}
    assert _imports("bagnet.x.a", a, known) == {"bagnet.x.b"}


def test_no_module_is_too_long():
    too_long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    too_long = {n: k for n, k in too_long.items() if k > 550}
    assert not too_long, too_long
