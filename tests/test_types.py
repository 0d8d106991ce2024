"""Every public function of the package says what it takes and what it returns; `make test`
runs mypy over the package (the Makefile's `typecheck`), which checks that the code agrees."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "leanformer"


def unannotated(tree: ast.Module) -> list[str]:
    """Public functions and methods with a parameter or the return left without a type."""
    found = []

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                public = not child.name.startswith("_") or child.name == "__init__"
                args = child.args.posonlyargs + child.args.args + child.args.kwonlyargs
                args += [a for a in (child.args.vararg, child.args.kwarg) if a is not None]
                missing = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
                if child.returns is None and child.name != "__init__":
                    missing.append("return")
                if public and missing:
                    found.append(f"{prefix}{child.name} ({', '.join(missing)})")

    visit(tree)
    return found


def test_every_public_function_has_type_hints():
    missing = {str(p.relative_to(SRC)): names for p in sorted(SRC.rglob("*.py"))
               if (names := unannotated(ast.parse(p.read_text(encoding="utf-8"))))}
    assert not missing, f"public functions without type hints: {missing}"


def test_the_check_sees_a_missing_hint():
    tree = ast.parse("def f(x: int) -> int: ...\n"
                     "def g(x, y: int): ...\n"
                     "def _private(x): ...\n"
                     "class A:\n    def m(self, z: int): ...\n    def __init__(self, w): ...\n")
    assert unannotated(tree) == ["g (x, return)", "A.m (return)", "A.__init__ (w)"]
