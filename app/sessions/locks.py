"""Asyncio locks that enforce one global acquisition order.

The service has two kinds of lock: one per session (level ``SESSION_LEVEL``) and one for the device
(level ``DEVICE_LEVEL``). A task may only acquire a lock whose level is strictly higher than every lock it
already holds, so the order is always *session, then device* and two tasks can never wait on each other
in a cycle. Breaking the order raises ``LockOrderError`` immediately instead of deadlocking later.

Held levels are tracked per asyncio task (not in a ``ContextVar``: a task created while a lock is held
would inherit a copy of the context without holding the lock).
"""

from __future__ import annotations

import asyncio
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


class OrderedLock:
    """An ``asyncio.Lock`` with a level; ``async with`` it only in increasing level order.

    Not re-entrant: acquiring a lock of the same level twice (two session locks, or the device lock
    inside itself) is refused as well.
    """

    def __init__(self, name: str, level: int) -> None:
        self.name = name
        self.level = level
        self._lock = asyncio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self, give_up: asyncio.Event | None = None) -> bool:
        """Take the lock (order checked first); with ``give_up``, stop waiting once it is set and return False.

        The lock is taken in this task's name either way: ``release`` it from the same task.
        """
        held = held_levels()
        if held and max(held) >= self.level:
            raise LockOrderError(
                f"lock order: cannot take {self.name!r} (level {self.level}) while holding levels {held}"
            )
        if give_up is None or not self._lock.locked():
            await self._lock.acquire()
        elif not await self._acquire_unless(give_up):
            return False
        _set_held(held + (self.level,))
        return True

    async def _acquire_unless(self, give_up: asyncio.Event) -> bool:
        # asyncio.Lock has no owner, so a helper task may take it in this task's name.
        take = asyncio.ensure_future(self._lock.acquire())
        stop = asyncio.ensure_future(give_up.wait())
        try:
            await asyncio.wait((take, stop), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task was cancelled while waiting: never keep a lock it will not release
            stop.cancel()
            take.cancel()
            await asyncio.gather(take, return_exceptions=True)
            if take.done() and not take.cancelled() and take.exception() is None:
                self._lock.release()
            raise
        stop.cancel()
        if not take.done():
            take.cancel()
            await asyncio.gather(take, return_exceptions=True)  # it may have been granted in the same turn
        if take.cancelled():
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
