"""The shape of the code: which package may import which, and no import cycle anywhere.

Reads every module of services/ and workers/ with the ast module (function-level imports
included: hiding an import in a function does not remove the dependency) and checks:

- no cycle between our modules;
- the command and the query services never import each other, nor anything of workers/
  (the event store is their only hand-off);
- the shared packages (services/core/, services/http/) import neither service nor workers/;
- workers/ never imports Litestar, the services' HTTP layer or either service, not even
  through a shared module (the closure of what a worker module imports is checked).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from package import module` imports the module
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """Each of our modules → the names it imports (ours resolved to modules, others kept)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for name in _imports(path, module):
            if name.split(".")[0] in PACKAGES:
                if name in files and name != module:
                    targets.add(name)
            else:
                targets.add(name)
        graph[module] = targets
    return graph


GRAPH = _graph()


def _ours(name: str) -> bool:
    return name in GRAPH


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read() -> None:
    """The walk finds the modules and the edges we know are there (or it checks nothing)."""
    assert "services.command.chat" in GRAPH and "workers.assistant" in GRAPH
    assert "services.core.eventstore" in GRAPH["workers.follower"]
    assert "litestar.response" in GRAPH["services.http.sse"]


def test_there_is_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(t for t in GRAPH[module] if _ours(t)):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


FORBIDDEN = [
    # (importer, what it may not import, not even indirectly)
    ("services.command", ("services.query", "workers")),
    ("services.query", ("services.command", "workers")),
    ("services.core", ("services.command", "services.query", "services.http", "workers")),
    ("services.http", ("services.command", "services.query", "workers")),
    ("workers", ("litestar", "services.http", "services.command", "services.query",
                 "services.gateway")),
]


def test_no_package_reaches_what_it_may_not() -> None:
    violations = []
    for importer, forbidden in FORBIDDEN:
        for module in sorted(m for m in GRAPH if _under(m, importer)):
            reached = _closure(module)
            bad = sorted(t for t in reached if _under(t, *forbidden))
            if bad:
                violations.append((module, bad))
    assert violations == []
