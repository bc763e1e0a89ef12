"""The public API is typed: every public function and method has annotated parameters and
a return type, and the package ships ``py.typed``.

Public means: not named with a leading underscore and not inside a private class (private
modules count: their public names are what ``bagnet.*`` re-exports). Nested functions and
``self``/``cls`` are left out.
"""

import ast
from pathlib import Path

import bagnet

SRC = Path(bagnet.__file__).parent


def untyped(tree: ast.Module) -> list[str]:
    found = []

    def visit(node: ast.AST, owner: str | None, private: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name, private or child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if private or child.name.startswith("_"):
                    continue
                a = child.args
                params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                params += [p for p in (a.vararg, a.kwarg) if p is not None]
                missing = [p.arg for p in params if p.annotation is None]
                if missing or child.returns is None:
                    name = f"{owner}.{child.name}" if owner else child.name
                    found.append(f"{name}:{child.lineno} {missing}{'' if child.returns else ' no return type'}")

    visit(tree, None, False)
    return found


def test_every_public_function_is_annotated():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        problems += [f"{path.relative_to(SRC)}: {p}" for p in untyped(ast.parse(path.read_text(encoding="utf-8")))]
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_missing_annotation():
    tree = ast.parse("def f(x, y: int) -> int: ...\ndef _g(x): ...\nclass A:\n    def m(self, z: int): ...\n")
    assert untyped(tree) == ["f:1 ['x']", "A.m:4 [] no return type"]


def test_py_typed_ships():
    assert (SRC / "py.typed").is_file()
