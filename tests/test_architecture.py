"""The house's rules, read from the source with `ast` (no import runs): the wings, their floors, no cycle.

src/ is a foundation (config, errors, paths, preflight), wings above it, and entry points on top (what users type:
python -m src.train, src.compare, src.doctor, src.outbox, src.data). Each wing's __init__ says what it may import;
this file holds the same rules as data, so a new import that breaks them fails here, naming the edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY_POINTS = {"src.train", "src.compare", "src.doctor", "src.outbox", "src.data.__main__"}
FOUNDATION = {"src.config", "src.errors", "src.overrides", "src.paths", "src.preflight"}
# wing -> the wings it may import (the foundation is open to all)
MAY_IMPORT = {
    "report": set(),
    "tracking": set(),
    "data": set(),
    "sweeps": {"tracking", "report"},
    "training": {"data", "tracking", "report", "sweeps"},  # a run knows its sweep's parent and its point
    "fused": {"training", "sweeps", "tracking", "data", "report"},
}
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules an import statement names: src modules as dotted names, others by their top-level name."""
    if isinstance(node, ast.Import):
        return [a.name if a.name.startswith("src") else a.name.split(".")[0] for a in node.names]
    if node.level == 0:
        base = node.module or ""
        if not base.startswith("src"):
            return [base.split(".")[0]]
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            package = package.rsplit(".", 1)[0]
        base = f"{package}.{node.module}" if node.module else package
    found = []
    for alias in node.names:  # `from . import names` names a module; `from .x import y` names x
        candidate = f"{base}.{alias.name}"
        found.append(candidate if candidate in MODULES else base)
    return found


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module top) for every import in `module`, function-local ones included."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend((name, node.lineno, id(node) in top) for name in resolve(module, node))
    return found


GRAPH = {m: sorted({name for name, _, _ in imports(m) if name in MODULES and name != m}) for m in MODULES}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in MAY_IMPORT else None


def test_every_module_is_in_a_wing_the_foundation_or_an_entry_point():
    loose = [m for m in MODULES if m != "src" and wing(m) is None and m not in FOUNDATION | ENTRY_POINTS
             and m.split(".")[1] not in MAY_IMPORT]
    assert loose == [], f"modules outside the wings: {loose} (put each in the wing of its side)"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in GRAPH[m]:
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m)


def test_nothing_imports_an_entry_point():
    into = [(m, n) for m, targets in GRAPH.items() for n in targets if n in ENTRY_POINTS]
    assert into == [], f"imports of an entry point (move what they need into a wing): {into}"


@pytest.mark.parametrize("name", sorted(MAY_IMPORT))
def test_a_wing_imports_only_the_wings_below_it(name):
    allowed = MAY_IMPORT[name] | {name}
    wrong = [(m, n) for m, targets in GRAPH.items() if wing(m) == name for n in targets
             if n not in FOUNDATION and wing(n) not in allowed]
    assert wrong == [], f"src/{name}/ may import {sorted(MAY_IMPORT[name]) or 'no other wing'}: {wrong}"


def test_the_foundation_imports_no_wing():
    wrong = [(m, n) for m in FOUNDATION for n in GRAPH[m] if n not in FOUNDATION]
    assert wrong == []


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    return seen


@pytest.mark.parametrize("name", ["tracking", "sweeps", "report", "data"])
def test_wings_that_do_not_train_never_import_a_framework(name):
    """Not even inside a function, nor through a module they import: compare, the outbox and a sweep's driver run
    without Keras (seconds, not TensorFlow's start-up)."""
    offenders = []
    for m in (m for m in MODULES if wing(m) == name):
        for n in reachable(m):
            offenders += [(m, n, line, fw) for fw, line, _ in imports(n) if fw in FRAMEWORKS]
    assert offenders == [], f"src/{name}/ reaches a framework: {offenders}"


@pytest.mark.parametrize("name", sorted(MAY_IMPORT))
def test_each_wing_says_what_it_holds_and_may_import(name):
    doc = ast.get_docstring(ast.parse((SRC / name / "__init__.py").read_text())) or ""
    assert "May import" in doc, f"src/{name}/__init__.py: its docstring names what the wing may import"
    for module in (p.stem for p in (SRC / name).glob("*.py") if not p.stem.startswith("_")):
        assert f"`{module}`" in doc, f"src/{name}/__init__.py does not say what `{module}` holds"
