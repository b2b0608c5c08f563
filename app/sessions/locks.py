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

    async def __aenter__(self) -> OrderedLock:
        held = held_levels()
        if held and max(held) >= self.level:
            raise LockOrderError(
                f"lock order: cannot take {self.name!r} (level {self.level}) while holding levels {held}"
            )
        await self._lock.acquire()
        _set_held(held + (self.level,))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = list(held_levels())
        if self.level in held:
            held.reverse()
            held.remove(self.level)
            held.reverse()
        _set_held(tuple(held))
        self._lock.release()
