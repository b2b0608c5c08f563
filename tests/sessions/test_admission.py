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


def test_busy_fraction_counts_run_time_inside_the_window_and_the_call_in_progress() -> None:
    executor = DeviceExecutor()
    lane = executor.bulk
    try:
        lane.recent_runs_ms.extend([(95.0, 2000.0), (99.0, 1000.0), (80.0, 500.0)])  # the last ended before the window
        assert lane.busy_fraction(10.0, now=100.0) == pytest.approx(0.3)
        lane.recent_runs_ms.append((91.0, 4000.0))  # started 87 s: only the 1 s inside the window counts
        assert lane.busy_fraction(10.0, now=100.0) == pytest.approx(0.4)
        lane._running_since = 98.5  # a call running for 1.5 s now
        assert lane.busy_fraction(10.0, now=100.0) == pytest.approx(0.55)
        lane._running_since = 50.0  # running since before the window: the whole window at most
        assert lane.busy_fraction(10.0, now=100.0) == 1.0
    finally:
        executor.shutdown()


async def test_a_lane_busy_past_its_share_refuses_new_sessions_until_it_calms_down() -> None:
    executor, clock = DeviceExecutor(), Clock()
    admission = Admission(executor, AdmissionLimits(max_busy=0.6, window_s=10.0), clock=clock)
    try:
        executor.bulk.recent_runs_ms.extend([(clock.now - 1.0, 3000.0), (clock.now - 0.5, 2000.0)])
        assert admission.refusal() is None  # 50 % busy: admitted
        executor.bulk.recent_runs_ms.append((clock.now, 1500.0))
        refused = admission.refusal()
        assert refused is not None and refused[0] == "busy" and "busy 65%" in refused[1]
        clock.now += 9.5  # the first two runs left the window, the last is 0.5 s inside it: 5 %
        assert admission.refusal() is None
        assert executor.bulk.busy_fraction(10.0, clock.now) == pytest.approx(0.05)
        await executor.run(lambda: None)  # a real call is recorded with its run time
        assert executor.bulk.recent_runs_ms[-1][1] >= 0.0
    finally:
        executor.shutdown()
