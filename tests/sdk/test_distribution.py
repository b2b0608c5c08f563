"""The SDK is a distribution of its own (``client/pyproject.toml``): it needs httpx, numpy and websockets and
nothing of the server. The server's distribution carries the same package and pins versions the SDK accepts.

A fresh virtual environment without torch installs and drives it in ``.ci/sdk_install_check.sh``; these are
the fast checks of the same promises.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "client"
SDK_DEPENDENCIES = {"httpx", "numpy", "websockets"}


def _project(path: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    return project


def _requirements(path: Path) -> dict[str, Requirement]:
    dependencies = _project(path)["dependencies"]
    assert isinstance(dependencies, list)
    return {Requirement(d).name.lower(): Requirement(d) for d in dependencies}


def test_the_sdk_distribution_depends_on_httpx_numpy_and_websockets_only() -> None:
    assert set(_requirements(SDK / "pyproject.toml")) == SDK_DEPENDENCIES
    assert (SDK / "py.typed").is_file()


def test_the_server_pins_versions_the_sdk_accepts() -> None:
    sdk, server = _requirements(SDK / "pyproject.toml"), _requirements(REPO / "pyproject.toml")
    for name, requirement in sdk.items():
        pins = [s.version for s in server[name].specifier if s.operator == "=="]
        for version in pins:  # numpy is a range on both sides: nothing pinned to compare
            assert requirement.specifier.contains(version), f"server pins {name}=={version}, SDK wants {requirement}"


def test_every_sdk_module_imports_only_the_standard_library_its_dependencies_and_itself() -> None:
    files = sorted(SDK.rglob("*.py"))
    assert len(files) >= 10
    allowed = SDK_DEPENDENCIES | {"client", "__future__"}
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # imports inside functions too
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top not in allowed and top not in sys.stdlib_module_names:
                    found.append(f"{path.relative_to(REPO)}: {name}")
    assert not found, "the SDK imports what its distribution does not install:\n" + "\n".join(found)


def test_the_sdk_loads_with_the_server_and_its_stack_unimportable() -> None:
    """Every SDK module imports in a process where ``app``, pydantic, torch and fastapi cannot be imported."""
    script = """
import importlib, pkgutil, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"app", "pydantic", "torch", "fastapi", "starlette"}:
            raise ImportError(f"the SDK imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
import client
for info in pkgutil.walk_packages(client.__path__, prefix="client."):
    importlib.import_module(info.name)
print(sorted(name for name in sys.modules if name.startswith("client.")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "client.wire.replies" in result.stdout
