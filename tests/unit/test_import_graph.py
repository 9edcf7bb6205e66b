"""The import graph: dependencies point one way (engine <- blocks <- tasks <- flows <- cli, the sandbox on
top) and no module imports itself back through others. Read from the source with ``ast``, so imports
inside functions count too: a cycle hidden in a function is still a cycle of the design."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("m3migrate", "blocks", "tasks", "flows", "cli", "sandbox")


def _layer(module: str) -> int:
    """engine 0, blocks 1 (configuration), tasks 2, flows 3, cli 4, sandbox 5 (demo and test support)."""
    top = module.split(".")[0]
    return {"m3migrate": 0, "blocks": 1, "tasks": 2, "flows": 3, "cli": 4, "sandbox": 5}[top]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            if "prompb" in path.parts:
                continue  # generated protobuf code
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``module`` imports anywhere in its source (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_tree() -> None:
    graph = _graph()
    assert {"m3migrate.wire.walk", "tasks.transfer", "flows.migrate", "blocks.connections"} <= set(graph)
    assert "m3migrate.wire.walk" in graph["m3migrate.transfer.unit"]
    assert "tasks.transfer" in graph["flows.transfer"]
    assert "flows.transfer" in graph["flows.migrate"] and "flows.transfer" in graph["flows.backfill"]
    assert "flows.migrate" in graph["cli.main"]  # imported inside a command function: still counted


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_dependencies_point_one_way() -> None:
    upward = sorted(
        f"{module} -> {dep}" for module, deps in _graph().items() for dep in deps if _layer(dep) > _layer(module)
    )
    assert upward == [], "an inner layer imports an outer one:\n" + "\n".join(upward)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
