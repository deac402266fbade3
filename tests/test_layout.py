"""The package's layering: ``sweeps`` → ``search_spaces`` → ``core``, every import of the package at module level."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"core": set(), "search_spaces": {"core"}, "sweeps": {"core", "search_spaces"}}
#: the command line imports each verb's modules inside the verb, so ``ranksweep --help`` starts without torch
LAZY_OK = {"sweeps/cli.py"}


def _imports(path: Path, layer: str):
    """(module layer imported, at module level?) for every import of ``ranksweep`` modules in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:  # imports for type checking only run in no module
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top |= set(map(id, node.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = layer  # relative: within the layer
            elif (node.module or "").startswith("ranksweep."):
                target = node.module.split(".")[1]
            else:
                continue
            yield target, id(node) in top, node.lineno


def test_imports_run_one_way_and_at_module_level():
    bad = []
    for layer, allowed in LAYERS.items():
        for path in sorted((REPO / layer).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for target, at_top, line in _imports(path, layer):
                if target != layer and target not in allowed:
                    bad.append(f"{rel}:{line} imports {target} ({layer} may import {sorted(allowed) or 'nothing of the package'})")
                if not at_top and rel not in LAZY_OK:
                    bad.append(f"{rel}:{line} imports a ranksweep module inside a function")
    assert not bad, "\n".join(bad)


def test_every_package_folder_is_in_the_distribution():
    """A subpackage missing from pyproject's ``packages`` works in an editable install and is absent from the wheel."""
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {f"ranksweep.{p.parent.relative_to(REPO).as_posix().replace('/', '.')}" for layer in LAYERS
               for p in (REPO / layer).rglob("__init__.py")}
    assert folders and folders == set(tool["packages"]), sorted(folders ^ set(tool["packages"]))
    assert set(tool["package-dir"]) == {f"ranksweep.{layer}" for layer in LAYERS}
