"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.skip_budget import SkipCounter, budget_from_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; the only tests a CPU-only CI may skip")
    config.pluginmanager.register(SkipCounter(budget_from_env()), "skip_budget")


@pytest.fixture(scope="session")
def service_predictor():  # noqa: ANN201 - torch is imported lazily
    """The tiny "segvol-test" model with random weights, built once per test run (explicitly random)."""
    import torch

    from app.models import build_predictor

    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None, device="cpu")
