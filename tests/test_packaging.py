"""The package declares what it imports: a fresh `pip install .` must run every command.

Every third-party module imported anywhere in ``epsweep/`` must come from a distribution named
in ``[project].dependencies``, or from an optional extra whose absence the code reports
cleanly (matplotlib, for ``epsweep plot``). The import list is read from the source with
``ast``, so a new import cannot slip past.
"""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"matplotlib": "plot", "pandas": "pandas"}  # module -> the extra that provides it
# module -> the declared dependency that brings it: cli.py falls back to click's exceptions on
# Typer releases that use the standalone Click (and depend on it) instead of bundling their own
VIA = {"click": "typer"}


def imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "epsweep").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"epsweep"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[;\[=<>~! ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(imported_modules()):
        if module in OPTIONAL:
            extra = requirement_names(project["optional-dependencies"][OPTIONAL[module]])
            assert {d.lower() for d in providers.get(module, [module])} & extra, module
            continue
        if module in VIA:
            assert VIA[module] in declared, module
            continue
        dists = {d.lower() for d in providers.get(module, [])}
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists) or 'no installed distribution'})")
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"
