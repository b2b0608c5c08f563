"""Skips are counted and, under a budget, fail the run: CI must not go green because a peer went missing.

Every run prints how many tests were skipped and why. With ``SKIP_BUDGET=N`` in the environment (``.ci/run``
sets 0), more than N skips of tests *not* marked ``gpu`` fail the run (exit status 1): on a CPU machine the GPU
tests are the only ones that may skip; Redis, nginx, Orthanc, chromium, node or a Python package missing is a
broken CI machine, not a reason to skip. Collection-time skips (``pytest.importorskip`` at module level) count
as non-GPU skips.
"""

from __future__ import annotations

import os

import pytest

BUDGET_ENV = "SKIP_BUDGET"


class SkipCounter:
    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.gpu: list[str] = []
        self.other: list[str] = []

    @staticmethod
    def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
        longrepr = report.longrepr
        text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        return text.removeprefix("Skipped: ")

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and report.when in ("setup", "call") and not hasattr(report, "wasxfail"):
            bucket = self.gpu if "gpu" in report.keywords else self.other
            bucket.append(f"{report.nodeid}: {self._reason(report)}")

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.other.append(f"{report.nodeid}: {self._reason(report)}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        budget = "none" if self.budget is None else str(self.budget)
        lines = [f"skips: {len(self.gpu) + len(self.other)} (gpu: {len(self.gpu)}, other: {len(self.other)}; "
                 f"budget for other: {budget})"]
        lines += [f"  skipped (not gpu): {line}" for line in self.other]
        over = self.budget is not None and len(self.other) > self.budget
        if over:
            lines.append(f"skip budget exceeded: {len(self.other)} non-GPU skips > {self.budget} "
                         f"({BUDGET_ENV}); install what the skipped tests need")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_sep("-", "skips")
            for line in lines:
                reporter.write_line(line, red=over)


def budget_from_env() -> int | None:
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return None
    try:
        budget = int(raw)
    except ValueError:
        raise pytest.UsageError(f"{BUDGET_ENV}: expected a whole number of allowed non-GPU skips, got {raw!r}") from None
    if budget < 0:
        raise pytest.UsageError(f"{BUDGET_ENV}: expected a number >= 0, got {budget}")
    return budget
