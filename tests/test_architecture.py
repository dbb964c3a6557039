"""The package's shape (docs/ARCHITECTURE.md): imports go downward only, no cycles, no private names across
modules. The imports are read with ``ast`` (function-local imports included), so nothing is imported here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "editor"

# Bottom to top. A module may import modules of its own layer or of a lower one; a layer that is a package
# covers every module inside it.
LAYERS = [
    ["editor.errors", "editor.formats", "editor.paths"],
    ["editor.artifacts", "editor.stats", "editor.plots", "editor.options", "editor.text", "editor.locking"],
    ["editor.model"],
    ["editor.data"],
    ["editor.collect"],
    ["editor.locate"],
    ["editor.edit"],
    ["editor.evaluate"],
    ["editor.report"],
    ["editor.pipeline"],
    ["editor.cli", "editor.__main__"],
]
# The package's front door re-exports the API lazily (module __getattr__); it is above everything.
FACADE = "editor"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement of the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "editor"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "editor":
                continue
            names = [a.name for a in node.names]
            known = modules()
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(s, [], node.lineno) for s in submodules]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not submodules:
                found.append((target, rest, node.lineno))
    return found


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"module {name} is in no layer of tests/test_architecture.py: add it to LAYERS")


def test_every_module_has_a_layer():
    for name in modules():
        if name != FACADE:
            layer_of(name)


def test_imports_go_downward_only():
    upward = []
    for name, path in modules().items():
        if name == FACADE:
            continue
        for target, _, line in imports_of(name, path):
            if target == FACADE:
                continue  # `from editor import __version__`
            if layer_of(target) > layer_of(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {target}")
    assert not upward, "imports that go upward:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: {t for t, _, _ in imports_of(name, path) if t in modules() and t != FACADE}
             for name, path in modules().items() if name != FACADE}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_names_across_modules():
    crossing = []
    for name, path in modules().items():
        for target, names, line in imports_of(name, path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != name:
                crossing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {', '.join(private)} from {target}")
    assert not crossing, "private names used across modules:\n" + "\n".join(crossing)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk would fail on a model module that imports the CLI (so the tests above can fail)."""
    fake = PACKAGE / "model" / "registry.py"
    found = imports_of("editor.model.registry", fake) + [("editor.cli.common", [], 1)]
    assert any(layer_of(t) > layer_of("editor.model.registry") for t, _, _ in found)
    assert layer_of("editor.cli.common") > layer_of("editor.pipeline.run") > layer_of("editor.report.card")
