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


def test_queued_share_counts_the_spans_with_a_waiting_call_inside_the_window() -> None:
    executor = DeviceExecutor()
    lane = executor.bulk
    try:
        lane.recent_queued.extend([(80.0, 85.0), (92.0, 94.0), (97.0, 98.0)])  # the first ended before the window
        assert lane.queued_share(10.0, now=100.0) == pytest.approx(0.3)
        lane.recent_queued.append((88.0, 91.0))  # began before the window: only its 1 s inside counts
        assert lane.queued_share(10.0, now=100.0) == pytest.approx(0.4)
        lane._queued_since = 98.5  # a call waiting for 1.5 s now
        assert lane.queued_share(10.0, now=100.0) == pytest.approx(0.55)
        lane._queued_since = 50.0  # waiting since before the window: the whole window at most
        assert lane.queued_share(10.0, now=100.0) == 1.0
    finally:
        executor.shutdown()


async def test_calls_one_after_another_never_count_as_queued_however_long_they_run() -> None:
    executor = DeviceExecutor()
    try:
        for _ in range(3):
            await executor.run(threading.Event().wait, 0.05)  # a lone client: each call finds the lane free
        assert executor.bulk.queued_share(10.0) == 0.0
        assert not executor.bulk.recent_queued
    finally:
        executor.shutdown()


async def test_a_call_waiting_behind_another_is_a_queued_span() -> None:
    executor = DeviceExecutor()
    release = threading.Event()
    try:
        running = asyncio.ensure_future(executor.run(release.wait, 10))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(executor.run(lambda: None))
        await asyncio.sleep(0.05)
        assert executor.bulk.queued_share(10.0) > 0.0  # the span in progress
        release.set()
        await asyncio.gather(running, queued)
        (start, end), = executor.bulk.recent_queued
        assert end - start >= 0.04 and executor.bulk.waiting == 0
    finally:
        release.set()
        executor.shutdown()


async def test_a_lane_queued_past_its_share_refuses_new_sessions_until_it_calms_down() -> None:
    executor, clock = DeviceExecutor(), Clock()
    admission = Admission(executor, AdmissionLimits(max_queued_share=0.3, window_s=10.0), clock=clock)
    try:
        executor.bulk.recent_queued.extend([(-3.0, -1.0), (-0.5, 0.0)])
        assert admission.refusal() is None  # 25 % of the window: admitted
        executor.bulk._queued_since = -1.0  # and a call waiting for a second now: 35 %
        refused = admission.refusal()
        assert refused is not None and refused[0] == "queued" and "queued 35% of the last 10 s" in refused[1]
        executor.bulk._queued_since = None
        clock.now += 9.5  # the first span left the window, the second is 0.5 s inside it: 5 %
        assert executor.bulk.queued_share(10.0, clock.now) == pytest.approx(0.05)
        assert admission.refusal() is None
    finally:
        executor.shutdown()


def test_sessions_being_opened_refuse_more_at_the_limit_only() -> None:
    executor = DeviceExecutor()
    admission = Admission(executor, AdmissionLimits(max_creating=2))
    refused: list[str] = []
    try:
        admission.check(retry_after_s=4, on_refusal=refused.append, creating=1)  # one encoding: admitted
        with pytest.raises(CapacityExceeded, match="2 new sessions are being opened") as error:
            admission.check(retry_after_s=4, on_refusal=refused.append, creating=2)
        assert error.value.retry_after_s == 4 and refused == ["creating"]
        Admission(executor, AdmissionLimits()).check(retry_after_s=4, creating=50)  # the rule off
    finally:
        executor.shutdown()


def test_admissions_are_paced_past_half_the_queued_share() -> None:
    executor, clock = DeviceExecutor(), Clock()
    admission = Admission(executor, AdmissionLimits(max_queued_share=0.4, paced_admissions=2, window_s=10.0),
                          clock=clock)
    try:
        for _ in range(5):
            admission.check(retry_after_s=3)  # a quiet lane: no pacing, however many arrive
        executor.bulk.recent_queued.append((clock.now - 3.0, clock.now))  # queued 30 %: past half the limit
        clock.now += 11.0  # the five admissions left the window
        executor.bulk.recent_queued.append((clock.now - 3.0, clock.now))
        admission.check(retry_after_s=3)
        admission.check(retry_after_s=3)
        refused = admission.refusal()
        assert refused is not None and refused[0] == "paced" and "2 sessions were opened" in refused[1]
    finally:
        executor.shutdown()
