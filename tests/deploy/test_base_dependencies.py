"""Every package the server, the SDK or the challenge entry point imports when loaded comes with the base
dependencies (one of them, or a requirement of one, without extras).

``pip install -e .`` (the README's install, no extras) must be enough to run them; the test environment
installs ``.[dev]``, which hides a module only an extra provides (scikit-image once crashed the server at
start-up that way). This is the fast static check; ``.ci/readme_install_check.sh`` proves it for real in
a fresh virtual environment. Imports inside functions are left out: those are optional features that say
which extra they need (the CLIP text branch of ``segvol-base`` needs ``[text]``).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
LOADED_PACKAGES = ("app", "client", "challenge")
OWN_PACKAGES = {"app", "client", "challenge", "evaluation", "training"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _normalized(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))  # type: ignore[union-attr]


def _base_install() -> set[str]:
    """The distributions ``pip install -e .`` brings: the base dependencies and what they require, no extras."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    todo = [_name(d) for d in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # not installed here: its own requirements cannot be followed (the name still counts)
        todo += [_name(r) for r in requires if "extra" not in r.partition(";")[2]]  # an extra's: not installed
    return seen


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported by the module's own statements (not in functions, not ``TYPE_CHECKING``)."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return names


def test_module_level_imports_are_base_dependencies() -> None:
    providers = packages_distributions()
    base = _base_install()
    missing = []
    files = [p for package in LOADED_PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 50
    for path in files:
        for name in sorted(_module_level_imports(path)):
            if name in sys.stdlib_module_names or name in OWN_PACKAGES or name == "__future__":
                continue
            dists = {_normalized(d) for d in providers.get(name, [])}
            assert dists, f"{path.relative_to(REPO)}: imports {name}, which no installed distribution provides"
            if not dists & base:
                missing.append(f"{path.relative_to(REPO)}: {name} ({', '.join(sorted(dists))})")
    assert not missing, "imported at load time but not installed by the base dependencies:\n" + "\n".join(missing)
