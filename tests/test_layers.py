"""The package's imports run one way: no circle, and no core module reaches up to the notebook
runtime or the command line. Imports inside functions count too, so that none can hide a circle."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "leanformer"
# What sits on top: a core module never imports these (nor any module of the cli package, added
# below once the modules are known).
TOP = {"leanformer.lesson", "leanformer.plots", "leanformer.__main__", "leanformer.cli", "leanformer.benchmark"}


def module_name(path: Path) -> str:
    parts = ("leanformer",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(path: Path) -> set[str]:
    """The leanformer modules that ``path`` imports, anywhere in its body."""
    name = module_name(path)
    package = name if is_package(path) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "leanformer"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "leanformer":
                target = node.module
            else:
                continue
            found.add(target)
            # `from . import x` or `from .pkg import sub` may name a module rather than a function
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if candidate in MODULES:
                    found.add(candidate)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
TOP |= {name for name in MODULES if name.startswith("leanformer.cli.")}


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for t in imports_of(path):
            if t not in MODULES:
                continue  # a name imported from a module, resolved above
            targets.add(t)
            # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside
            parts = t.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if not name.startswith(parent + ".") and name != parent:
                    targets.add(parent)
        edges[name] = targets - {name}
    return edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "a circle of imports: " + " -> ".join(cycle)


def test_no_core_module_imports_the_notebook_runtime_or_the_command_line():
    up = {name: sorted(targets & TOP) for name, targets in graph().items()
          if name not in TOP and targets & TOP}
    assert not up, f"core modules importing {sorted(TOP)}: {up}"


def test_the_checks_see_a_circle_and_an_import_upwards():
    """The two checks above on a graph made to fail them."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    lesson_imports = imports_of(MODULES["leanformer.lesson"])
    assert any(t.startswith("leanformer.") for t in lesson_imports)  # relative imports are resolved
