"""The skip budget (``tests/skip_budget.py``) on a throw-away test directory run by a real pytest process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests.skip_budget import SkipCounter, budget_from_env

def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA")
    config.pluginmanager.register(SkipCounter(budget_from_env()), "skip_budget")
"""

TESTS = """
import pytest

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs CUDA")
def test_on_gpu():
    pass

def test_needs_nginx():
    pytest.skip("nginx is not installed")

def test_passes():
    pass
"""


def _run(tmp_path: Path, budget: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "SKIP_BUDGET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if budget is not None:
        env["SKIP_BUDGET"] = budget
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_non_gpu_skip_over_the_budget_fails_the_run(tmp_path: Path) -> None:
    run = _run(tmp_path, "0")
    assert run.returncode == 1, run.stdout
    assert "skips: 2 (gpu: 1, other: 1; budget for other: 0)" in run.stdout
    assert "test_needs_nginx: nginx is not installed" in run.stdout
    assert "skip budget exceeded: 1 non-GPU skips > 0" in run.stdout


def test_within_the_budget_or_without_one_the_run_passes_and_prints_the_count(tmp_path: Path) -> None:
    within = _run(tmp_path, "1")
    assert within.returncode == 0, within.stdout
    assert "skips: 2 (gpu: 1, other: 1; budget for other: 1)" in within.stdout
    unbudgeted = _run(tmp_path, None)
    assert unbudgeted.returncode == 0 and "budget for other: none" in unbudgeted.stdout


@pytest.mark.parametrize("bad", ["x", "-1"])
def test_a_malformed_budget_is_a_usage_error_naming_the_variable(tmp_path: Path, bad: str) -> None:
    run = _run(tmp_path, bad)
    assert run.returncode == 4 and "SKIP_BUDGET" in run.stderr + run.stdout
