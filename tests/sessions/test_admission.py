"""Admission control's rules on a real executor: the queue rule, the per-lane latency rule, the window."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.errors import CapacityExceeded
from app.sessions.admission import Admission, AdmissionLimits, p95
from app.sessions.executor import DeviceExecutor

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_p95_is_the_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([5.0]) == 5.0
    assert p95(list(map(float, range(1, 101)))) == 95.0


async def test_a_long_bulk_queue_refuses_new_sessions_until_it_drains() -> None:
    executor = DeviceExecutor()
    release = threading.Event()
    admission = Admission(executor, AdmissionLimits(max_queue=1))
    try:
        running = asyncio.ensure_future(executor.run(release.wait, 30))
        queued = [asyncio.ensure_future(executor.run(lambda: None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert executor.bulk.waiting == 2
        with pytest.raises(CapacityExceeded, match="2 device calls are queued") as refused:
            admission.check(retry_after_s=7)
        assert refused.value.retry_after_s == 7
        release.set()
        await asyncio.gather(running, *queued)
        admission.check(retry_after_s=7)  # drained: admitted
    finally:
        release.set()
        executor.shutdown()


async def test_slow_waits_in_one_lane_refuse_even_when_the_other_lane_is_fast() -> None:
    executor, clock = DeviceExecutor(), Clock()
    admission = Admission(executor, AdmissionLimits(max_wait_ms=100.0, window_s=10.0, min_samples=5), clock=clock)
    try:
        for i in range(50):  # many instant-lane waits of ~0 ms ...
            executor.instant.recent_waits_ms.append((clock.now, 0.1 * (i % 3)))
        for _ in range(5):  # ... and a few slow bulk-lane ones
            executor.bulk.recent_waits_ms.append((clock.now, 400.0))
        refused = admission.refusal()
        assert refused is not None and refused[0] == "latency" and "400 ms" in refused[1]
        clock.now += 11.0  # the slow waits left the window
        assert admission.refusal() is None
    finally:
        executor.shutdown()
