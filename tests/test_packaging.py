"""The distribution declares what its code imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.services import ROOT

PACKAGES = ("workers", "producer", "ops")


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in (*PACKAGES, "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_third_party_package_is_a_declared_dependency() -> None:
    """A dependency, or one of a user-facing extra (``vfleet[parquet]``: the code imports
    those when a feature needs them, with a one-line error naming the extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [deps for name, deps in project["optional-dependencies"].items() if name != "test"]
    wanted = [*project["dependencies"], *(d for deps in extras for d in deps)]
    declared = {_normal(re.split(r"[\[<>=;!~ ]", d)[0]) for d in wanted}
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: sorted(files)[:3]
        for module, files in _third_party_imports().items()
        if not any(_normal(d) in declared for d in distributions.get(module, [module]))
    }
    assert not missing, f"imported but not in [project] dependencies: {missing}"
