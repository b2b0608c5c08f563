"""Named stage timings of one predictor step (the ``timings_ms`` of a ``Change``)."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Named stage timings in milliseconds (synchronising CUDA so the numbers mean something)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now
