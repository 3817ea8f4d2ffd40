"""The layering docs/ARCHITECTURE.md describes, checked on the code: imports flow
producer -> workers -> ops, and no module imports in a circle.

Imports under ``if TYPE_CHECKING:`` are left out (they never run); imports inside
functions count, since they run too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.services import ROOT

PACKAGES = ("workers", "producer", "ops")
MAY_IMPORT = {"ops": ("ops",), "workers": ("workers", "ops"), "producer": PACKAGES}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == (
            "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(a.name for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # vfleet uses absolute imports only
        subs = [f"{node.module}.{a.name}" for a in node.names]
        found = [s for s in subs if s in self.modules]
        self.names.update(found)
        if len(found) < len(subs):
            self.names.add(node.module)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        targets = set()
        for imported in visitor.names:
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_in_a_circle() -> None:
    assert _cycles(_graph()) == []


def test_imports_flow_producer_to_workers_to_ops() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if not target.startswith(MAY_IMPORT[module.split(".")[0]])
    ]
    assert wrong == []


def test_the_judge_logic_and_the_ledger_values_know_no_sql_and_no_celery() -> None:
    graph = _graph()
    for module in ("workers.judge", "workers.store.values", "workers.retry"):
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        text = " ".join(_modules()[m].read_text(encoding="utf-8") for m in seen)
        assert "import sqlalchemy" not in text and "from sqlalchemy" not in text, module
        assert "from celery" not in text and "import celery" not in text, module


def test_domain_code_never_imports_celery() -> None:
    """Celery stays in the app, the tasks and the worker entry points."""
    domain = ("ops.", "workers.store.", "workers.judge", "workers.spec", "workers.runtime")
    # The benchmark's baseline is a plain Celery apply_async loop: Celery is what it measures.
    measured = ("ops.bench.celery_loop",)
    wrong = [
        module
        for module, path in _modules().items()
        if module.startswith(domain)
        and module not in measured
        and any(
            line.lstrip().startswith(("import celery", "from celery"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert wrong == []
