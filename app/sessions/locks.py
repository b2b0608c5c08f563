"""Asyncio locks that enforce one global acquisition order.

The service has two kinds of lock: one per session (level ``SESSION_LEVEL``) and one for the device
(level ``DEVICE_LEVEL``). A task may only acquire a lock whose level is strictly higher than every lock it
already holds, so the order is always *session, then device* and two tasks can never wait on each other
in a cycle. Breaking the order raises ``LockOrderError`` immediately instead of deadlocking later.

Held levels are tracked per asyncio task (not in a ``ContextVar``: a task created while a lock is held
would inherit a copy of the context without holding the lock).

Waiters may carry a priority: a released lock goes to the waiter of the lowest priority number, and among
equal priorities to the first to arrive (a device lane serves a prompt the user waits for before a deferred
refinement, ``executor.py``). Without priorities it is a first-come, first-served lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from types import TracebackType

SESSION_LEVEL = 1
DEVICE_LEVEL = 2

_held: weakref.WeakKeyDictionary[asyncio.Task[object], tuple[int, ...]] = weakref.WeakKeyDictionary()


class LockOrderError(RuntimeError):
    """A lock was requested out of order (e.g. a session lock while holding the device lock)."""


def held_levels() -> tuple[int, ...]:
    """Levels of the ordered locks the current task holds, in acquisition order."""
    task = asyncio.current_task()
    return _held.get(task, ()) if task is not None else ()


def _set_held(levels: tuple[int, ...]) -> None:
    task = asyncio.current_task()
    if task is None:
        return
    if levels:
        _held[task] = levels
    else:
        _held.pop(task, None)


class _PriorityLock:
    """An asyncio lock handed on at release to its best waiter: lowest priority number, then first come.

    The lock passes straight to that waiter (it stays locked in between), so a newcomer never overtakes a
    waiter of the same priority.
    """

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()

    def locked(self) -> bool:
        return self._locked

    def request(self, priority: int = 0) -> asyncio.Future[None]:
        """Join the queue now; the future completes when the lock is the caller's. Cancel the future to leave
        the queue; once it has completed, the caller holds the lock and must ``release`` it."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._locked:  # free: release() leaves it locked while any waiter is left
            self._locked = True
            turn.set_result(None)
        else:
            heapq.heappush(self._waiters, (priority, next(self._arrivals), turn))
        return turn

    async def acquire(self, priority: int = 0) -> None:
        turn = self.request(priority)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed over just as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("release of an unlocked lock")
        while self._waiters:
            waiter = heapq.heappop(self._waiters)[2]
            if not waiter.done():  # skip waiters cancelled while they waited
                waiter.set_result(None)
                return
        self._locked = False


class OrderedLock:
    """An asyncio lock with a level; ``async with`` it only in increasing level order.

    Not re-entrant: acquiring a lock of the same level twice (two session locks, or the device lock
    inside itself) is refused as well.
    """

    def __init__(self, name: str, level: int) -> None:
        self.name = name
        self.level = level
        self._lock = _PriorityLock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self, give_up: asyncio.Event | None = None, priority: int = 0) -> bool:
        """Take the lock (order checked first); with ``give_up``, stop waiting once it is set and return False.

        ``priority``: waiters with a lower number are served first (equal ones in arrival order). The lock is
        taken in this task's name either way: ``release`` it from the same task.
        """
        held = held_levels()
        if held and max(held) >= self.level:
            raise LockOrderError(
                f"lock order: cannot take {self.name!r} (level {self.level}) while holding levels {held}"
            )
        if give_up is None or not self._lock.locked():
            await self._lock.acquire(priority)
        elif not await self._acquire_unless(give_up, priority):
            return False
        _set_held(held + (self.level,))
        return True

    async def _acquire_unless(self, give_up: asyncio.Event, priority: int) -> bool:
        turn = self._lock.request(priority)  # in the queue from now: arrival order is the call's order
        stop = asyncio.ensure_future(give_up.wait())
        try:
            await asyncio.wait((turn, stop), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task was cancelled while waiting: never keep a lock it will not release
            stop.cancel()
            if turn.done() and not turn.cancelled():
                self._lock.release()
            else:
                turn.cancel()
            raise
        stop.cancel()
        if not turn.done():
            turn.cancel()
            return False
        if give_up.is_set():  # granted and given up in the same turn: the give-up wins, the lock moves on
            self._lock.release()
            return False
        return True

    def release(self) -> None:
        """Release a lock this task took with ``acquire``."""
        held = list(held_levels())
        if self.level in held:
            held.reverse()
            held.remove(self.level)
            held.reverse()
        _set_held(tuple(held))
        self._lock.release()

    async def __aenter__(self) -> OrderedLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
