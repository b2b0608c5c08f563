"""The lock order (session, then device) is enforced, and the executor keeps the event loop free."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.sessions.executor import DeviceExecutor
from app.sessions.locks import DEVICE_LEVEL, SESSION_LEVEL, LockOrderError, OrderedLock, held_levels

pytestmark = pytest.mark.anyio


async def test_session_then_device_is_allowed_and_released() -> None:
    session, device = OrderedLock("s", SESSION_LEVEL), OrderedLock("d", DEVICE_LEVEL)
    async with session:
        async with device:
            assert held_levels() == (SESSION_LEVEL, DEVICE_LEVEL)
        assert held_levels() == (SESSION_LEVEL,)
    assert held_levels() == ()
    assert not session.locked() and not device.locked()


async def test_session_lock_under_device_lock_is_refused() -> None:
    session, device = OrderedLock("s", SESSION_LEVEL), OrderedLock("d", DEVICE_LEVEL)
    async with device:
        with pytest.raises(LockOrderError, match="lock order"):
            async with session:
                pass
    assert not session.locked()


async def test_two_session_locks_at_once_are_refused() -> None:
    a, b = OrderedLock("a", SESSION_LEVEL), OrderedLock("b", SESSION_LEVEL)
    async with a:
        with pytest.raises(LockOrderError):
            async with b:
                pass


async def test_executor_refuses_to_run_under_its_own_lock() -> None:
    executor = DeviceExecutor()
    try:
        async with executor.lock:
            with pytest.raises(LockOrderError):
                await executor.run(lambda: None)
        assert executor.waiting == 0
    finally:
        executor.shutdown()


async def test_held_levels_are_per_task() -> None:
    lock = OrderedLock("s", SESSION_LEVEL)
    seen: list[tuple[int, ...]] = []

    async def other() -> None:
        seen.append(held_levels())

    async with lock:
        await asyncio.create_task(other())
    assert seen == [()]


async def test_executor_runs_off_loop_one_at_a_time() -> None:
    executor = DeviceExecutor()
    release = threading.Event()
    running = 0
    max_running = 0
    guard = threading.Lock()

    def work() -> str:
        nonlocal running, max_running
        with guard:
            running += 1
            max_running = max(max_running, running)
        release.wait(5)
        with guard:
            running -= 1
        return threading.current_thread().name

    try:
        tasks = [asyncio.create_task(executor.run(work)) for _ in range(3)]
        await asyncio.sleep(0.05)
        # The event loop is not blocked while the device thread works, and the others queue.
        assert executor.waiting == 2
        release.set()
        names = await asyncio.gather(*tasks)
        assert max_running == 1
        assert all(n != threading.current_thread().name for n in names)
        assert executor.waiting == 0
    finally:
        release.set()
        executor.shutdown()


@pytest.mark.anyio
async def test_a_waiter_that_gives_up_leaves_the_queue_and_the_lock_moves_on() -> None:
    lock = OrderedLock("device", DEVICE_LEVEL)
    give_up = asyncio.Event()
    await lock.acquire()
    waiting = asyncio.ensure_future(lock.acquire(give_up))
    behind = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0.01)
    give_up.set()
    assert await asyncio.wait_for(waiting, 5) is False
    lock.release()
    assert await asyncio.wait_for(behind, 5) is True  # the next waiter gets it; the one that gave up holds nothing
    assert lock.locked()
    lock.release()


async def test_a_released_lock_goes_to_the_best_priority_then_the_first_come() -> None:
    lock = OrderedLock("device", DEVICE_LEVEL)
    order: list[str] = []

    async def take(name: str, priority: int) -> None:
        await lock.acquire(priority=priority)
        order.append(name)
        await asyncio.sleep(0)  # hold it across a turn of the loop, so nobody barges in at release
        lock.release()

    await lock.acquire()
    tasks = [asyncio.create_task(take(name, priority))
             for name, priority in (("refine-1", 1), ("box-1", 0), ("refine-2", 1), ("box-2", 0))]
    await asyncio.sleep(0.01)
    lock.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["box-1", "box-2", "refine-1", "refine-2"]
    assert not lock.locked()


async def test_a_cancelled_waiter_is_skipped_and_a_newcomer_waits_its_turn() -> None:
    lock = OrderedLock("device", DEVICE_LEVEL)
    await lock.acquire()
    cancelled = asyncio.ensure_future(lock.acquire())
    behind = asyncio.ensure_future(lock.acquire(priority=1))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    lock.release()
    assert await asyncio.wait_for(behind, 5) is True  # handed on: it stayed locked, a newcomer must queue
    newcomer = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0.01)
    assert not newcomer.done()
    lock.release()
    assert await asyncio.wait_for(newcomer, 5) is True
    lock.release()
    assert not lock.locked()


async def test_a_waiter_cancelled_as_the_lock_reaches_it_passes_it_on() -> None:
    lock = OrderedLock("device", DEVICE_LEVEL)
    await lock.acquire()
    first = asyncio.ensure_future(lock.acquire())
    second = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0.01)
    lock.release()  # handed to ``first``, which has not run yet ...
    first.cancel()  # ... and is cancelled before it does: the lock must not stay with nobody
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    assert await asyncio.wait_for(second, 5) is True
    lock.release()
    assert not lock.locked()


async def test_a_waiting_prompt_runs_before_waiting_background_work() -> None:
    executor = DeviceExecutor()
    release = threading.Event()
    ran: list[str] = []
    try:
        blocker = asyncio.create_task(executor.run(release.wait, 5))
        await asyncio.sleep(0.02)
        refinement = asyncio.create_task(executor.run_unless(asyncio.Event(), lambda: ran.append("refinement")))
        trim = asyncio.create_task(executor.run_background(ran.append, "trim"))
        await asyncio.sleep(0.02)
        box = asyncio.create_task(executor.run(ran.append, "box"))
        await asyncio.sleep(0.02)
        assert executor.bulk.waiting == 3
        release.set()
        await asyncio.wait_for(asyncio.gather(blocker, refinement, trim, box), 5)
        assert ran == ["box", "refinement", "trim"]
    finally:
        release.set()
        executor.shutdown()


async def test_a_new_sessions_encode_does_not_wait_for_the_bulk_lane() -> None:
    executor = DeviceExecutor()
    release = threading.Event()
    try:
        busy = asyncio.create_task(executor.run(release.wait, 5))  # a long bulk call in progress
        await asyncio.sleep(0.02)
        name = await asyncio.wait_for(executor.run_intake(lambda: threading.current_thread().name), 2)
        assert "intake" in name and not busy.done()
        release.set()
        await asyncio.wait_for(busy, 5)
    finally:
        release.set()
        executor.shutdown()
