"""Every public class and function of ``densecnn`` and ``tasks`` has a docstring (issue 16).

Pure introspection of the source (``ast``: nothing is imported, so it takes well under a second): a public name
is a module-level class or function whose name does not start with ``_``, in a module whose path has no
private part. The names the packages' ``__init__`` export are defined in such modules, so they are covered;
a test checks that too. The API reference (docs/reference, mkdocstrings) is rendered from these docstrings.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("densecnn", "tasks")


def public_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages without a private path part."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if any(p.startswith("_") and p not in ("__init__", "__main__") for p in parts):
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def module_definitions(path: Path) -> dict[str, ast.AST]:
    """The module-level classes and functions a file defines, by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.name: node for node in tree.body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}


def undocumented() -> list[str]:
    """``path:line name`` of every public class or function without a docstring."""
    missing = []
    for path in public_modules().values():
        for name, node in module_definitions(path).items():
            if not name.startswith("_") and not (ast.get_docstring(node) or "").strip():
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    return missing


def exported_names(path: Path) -> list[str]:
    """The names in a package ``__init__``'s ``__all__`` (each ``__all__ = [...]`` and ``__all__ += [...]``)."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__" and isinstance(node, (ast.Assign, ast.AugAssign)):
            names += [elt.value for elt in node.value.elts]
    return names


def test_every_public_class_and_function_has_a_docstring():
    missing = undocumented()
    assert not missing, (f"{len(missing)} public classes/functions lack a docstring (say what it does, its "
                         "arguments and the paper section it implements):\n" + "\n".join(missing))


def test_the_check_finds_a_missing_docstring(tmp_path):
    # The check itself, on a file with one documented and one undocumented public function and a private one.
    source = tmp_path / "m.py"
    source.write_text('def documented():\n    """Does it."""\n\n\ndef bare():\n    pass\n\n\ndef _private():\n    pass\n')
    defs = module_definitions(source)
    assert [n for n, node in defs.items() if not n.startswith("_") and not ast.get_docstring(node)] == ["bare"]


def test_exported_names_are_defined_in_a_checked_module():
    # What `densecnn` and `tasks` (and their subpackages) export is defined in a module the docstring check reads,
    # so no exported name escapes it.
    modules = public_modules()
    defined = {name for path in modules.values() for name in module_definitions(path)}
    exported = {name for mod, path in modules.items() if path.name == "__init__.py" for name in exported_names(path)}
    assert {"create_backbone", "ClassificationTask", "FasterRCNNTask", "VideoFolderDataModule"} <= exported
    # Constants and re-exported third-party names are not classes or functions; everything else must be defined.
    not_defined = sorted(n for n in exported - defined if not n.isupper())
    assert not not_defined, f"exported but not defined as a class/function in densecnn/tasks: {not_defined}"


def test_every_public_module_is_in_the_api_reference():
    # docs/reference/*.md render modules with mkdocstrings' `::: module` blocks; a new module must get one.
    rendered = set()
    for page in (REPO / "docs" / "reference").glob("*.md"):
        rendered |= {line[4:].strip() for line in page.read_text(encoding="utf-8").splitlines()
                     if line.startswith("::: ")}
    absent = sorted(set(public_modules()) - rendered)
    assert not absent, f"modules missing from docs/reference/*.md (add a `::: module` line): {absent}"
    unknown = sorted(rendered - set(public_modules()))
    assert not unknown, f"docs/reference/*.md names modules that do not exist: {unknown}"
