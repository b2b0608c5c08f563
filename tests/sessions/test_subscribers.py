"""A subscriber's outbox keeps order, and a client that falls behind is told to disconnect (bounded memory)."""

from __future__ import annotations

import pytest

from app.sessions.subscribers import Close, Subscriber

pytestmark = pytest.mark.anyio

OVERFLOW = Close(4503, "too slow")


async def test_items_come_out_in_order_then_close() -> None:
    sub = Subscriber(4, overflow_close=OVERFLOW)
    sub.push(b"a")
    sub.push("b")
    sub.close(Close(4410, "ended"))
    sub.push(b"ignored after close")
    assert [await sub.get() for _ in range(3)] == [b"a", "b", Close(4410, "ended")]
    assert sub.pending() == 0


async def test_overflow_drops_pending_and_closes() -> None:
    sub = Subscriber(3, overflow_close=OVERFLOW)
    for i in range(3):
        sub.push(bytes([i]))
    sub.push(b"one too many")
    assert sub.closed and sub.pending() == 1
    assert await sub.get() == OVERFLOW
