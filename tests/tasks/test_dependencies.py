"""Every third-party module the package imports is declared in pyproject.toml: a module that arrives only as
another package's dependency (cv2 through albumentations) breaks the day that package drops it."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"densecnn", "tasks"}  # [tool.setuptools.packages.find] include


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _declared() -> tuple[set[str], set[str]]:
    """The distributions pyproject.toml declares: (core dependencies, core plus every optional extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_normalise(Requirement(r).name) for r in project["dependencies"]}
    extras = {_normalise(Requirement(r).name) for group in project.get("optional-dependencies", {}).values()
              for r in group}
    return core, core | extras


def _imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(top-level module, line, whether it is imported when the file is) for every absolute import. Imports in a
    function or a ``try`` run only when used or may fail on purpose: they may name an optional extra."""
    found = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], child.lineno, eager) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], child.lineno, eager))
            lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Try))
            visit(child, eager and not lazy)

    visit(tree, True)
    return found


def _third_party_imports() -> list[tuple[str, str, bool]]:
    """(module, "file:line", eager) for every import in densecnn/ and tasks/ that is neither stdlib nor ours."""
    result = []
    for package in sorted(FIRST_PARTY):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for module, line, eager in _imports(tree):
                if module not in sys.stdlib_module_names and module not in FIRST_PARTY | {"__future__"}:
                    result.append((module, f"{path.relative_to(ROOT)}:{line}", eager))
    return result


@functools.lru_cache(maxsize=None)
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed RECORD: once


def _distributions(module: str) -> set[str]:
    """The installed distributions that provide ``module``; a module not installed counts as the distribution
    of its own name (``yaml`` would then fail to match ``pyyaml``, and the message says so)."""
    found = _module_distributions().get(module)
    return {_normalise(d) for d in found} if found else {_normalise(module)}


def test_every_imported_third_party_module_is_declared():
    core, everything = _declared()
    imports = _third_party_imports()
    assert {"torch", "cv2", "scipy"} <= {m for m, _, _ in imports}  # the scan sees the package's imports
    missing = sorted({f"{module} ({where}; provided by {sorted(_distributions(module))})"
                      for module, where, eager in imports
                      if not _distributions(module) & (core if eager else everything)})
    assert not missing, ("imported but not declared in pyproject.toml (eager imports need [project] "
                         "dependencies; lazy ones may use an optional extra): " + "; ".join(missing))


def test_cv2_and_scipy_are_core_dependencies_whose_floor_the_installed_versions_meet():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {_normalise(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    for name in ("opencv-python-headless", "scipy"):
        installed = importlib.metadata.version(name)
        assert requirements[name].specifier.contains(installed, prereleases=True), (name, installed)


def test_the_scan_tells_eager_from_lazy_imports():
    tree = ast.parse("import numpy as np\nfrom PIL import Image\n"
                     "try:\n    import captum\nexcept ImportError:\n    captum = None\n"
                     "def f():\n    import cv2.ximgproc\n    from . import local\n")
    assert _imports(tree) == [("numpy", 1, True), ("PIL", 2, True), ("captum", 4, False), ("cv2", 8, False)]
