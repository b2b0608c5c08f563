"""The diff stream seen from several subscribers of one session: every subscriber gets every recorded step in
order, a slow one is cut off without holding the others back, nothing leaves before the commit, and a client
that goes away mid-prompt does not interrupt it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.errors import SessionMoved, StoreUnavailable
from app.sessions.diffs import apply_diff, decode_diff
from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionManager
from app.sessions.session import Geometry, SessionLimits
from app.sessions.store import InProcessStore, OwnershipLost, PromptRecord
from app.sessions.subscribers import Close, Subscriber

pytestmark = pytest.mark.anyio

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0))
BOX = [6, 20, 20, 17, 43, 43]


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 10, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


@pytest.fixture
async def make_manager(predictor) -> AsyncIterator:  # noqa: ANN001
    executors: list[DeviceExecutor] = []
    managers: list[SessionManager] = []

    def make(store: InProcessStore | None = None, **limits: object) -> SessionManager:
        executor = DeviceExecutor()
        executors.append(executor)
        manager = SessionManager(predictor, store or InProcessStore(), executor, SessionLimits(**limits))
        managers.append(manager)
        return manager

    yield make
    for m in managers:
        await m.shutdown()
    for e in executors:
        e.shutdown()


def _drain(sub: Subscriber) -> list[bytes | str | Close]:
    out = []
    while sub.pending():
        out.append(sub._queue.get_nowait())  # noqa: SLF001  (what the route would send, without a socket)
    return out


async def test_every_subscriber_gets_every_frame_and_a_slow_one_is_cut_off_alone(make_manager) -> None:  # noqa: ANN001
    manager = make_manager(stream_queue_frames=2, max_subscribers=4)
    session, _ = await manager.create(_volume(), GEOMETRY)
    fast = [(await manager.subscribe(session))[0] for _ in range(3)]
    slow, _ = await manager.subscribe(session)  # never reads
    received: list[list[bytes]] = [[] for _ in fast]
    await manager.add_box(session, 1, BOX)
    for point, label, mode in [((12, 30, 30), 0, "both"), ((8, 25, 25), 1, "gru"), ((10, 28, 33), 1, "decoder")]:
        for got, sub in zip(received, fast, strict=True):
            got += _drain(sub)  # type: ignore[arg-type]
        await manager.add_clicks(session, 1, [point], [label], mode=mode)
    for got, sub in zip(received, fast, strict=True):
        got += _drain(sub)  # type: ignore[arg-type]

    assert all(got == received[0] for got in received)  # the same frames, byte for byte, in the same order
    frames = [decode_diff(f) for f in received[0]]
    assert [f.step for f in frames] == ["box", "gru", "decoder", "gru", "decoder"]
    assert [f.version for f in frames] == [1, 2, 3, 4, 5]
    assert [f.base_version for f in frames] == [0, 1, 2, 3, 4]  # versions only go forward, one step at a time
    mask, version = np.zeros(SHAPE, np.uint8), 0
    for f in frames:
        version = apply_diff(mask, f, version)
    expected, expected_version = await manager.get_mask(session, 1)
    assert version == expected_version and np.array_equal(mask, expected)
    # The slow one overflowed on the third frame: its pending frames were dropped for a close (reconnect and
    # resync), and it left the session's subscribers, so later frames are not queued for it.
    assert _drain(slow) == [Close(4503, "client too slow: reconnect and resync")]
    assert slow.closed and slow not in session.subscribers and len(session.subscribers) == 3


class _CommitFails(InProcessStore):
    """Records the session, then fails the history appends: ``error`` is what the store raises."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None

    async def commit_prompt(self, session_id: str, prompt: PromptRecord, *, owner: str | None = None) -> None:
        if self.error is not None:
            raise self.error
        await super().commit_prompt(session_id, prompt, owner=owner)


@pytest.mark.parametrize(
    ("error", "raised", "close_code", "replica_id"),
    [(StoreUnavailable("store: Redis failed: connection refused"), StoreUnavailable, 4410, None),
     (OwnershipLost("another replica owns it"), SessionMoved, 1001, "replica-a")],
    ids=["store_failure", "ownership_lost"],
)
async def test_no_frame_of_an_unrecorded_prompt_is_streamed(make_manager, error, raised, close_code,  # noqa: ANN001
                                                           replica_id, caplog: pytest.LogCaptureFixture) -> None:
    store = _CommitFails()
    manager = make_manager(store=store)
    manager.replica_id = replica_id
    if replica_id is not None:
        store.claim_session = _claimed  # type: ignore[attr-defined]
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, BOX)
    sub, versions = await manager.subscribe(session)
    assert versions == {1: 1}
    store.error = error
    with caplog.at_level("WARNING", logger="app.sessions.pipeline"), pytest.raises(raised) as info:
        await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both")
    sid = session.session_id
    if raised is SessionMoved:
        assert str(info.value) == (f"session_id: session {sid} moved to another replica; nothing was recorded, "
                                   "retry the request")
        assert info.value.retry_after_s == 1
        logged = [("WARNING", f"session {sid}: another replica owns it now; prompt not recorded, dropping this copy")]
    else:
        logged = [("ERROR", f"session {sid}: prompt not recorded; closing the session")]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "app.sessions.pipeline"] == logged
    items = _drain(sub)
    assert [type(i) for i in items] == [Close] and items[0].code == close_code, items  # type: ignore[union-attr]
    if replica_id is not None:  # handed over: the record and its history stay, for the new owner
        assert [p.op for p in await store.prompt_history(session.session_id)] == ["box"]


async def _claimed(session_id: str, replica_id: str) -> bool:
    return True


async def test_a_caller_cancelled_mid_prompt_does_not_interrupt_it(make_manager) -> None:  # noqa: ANN001
    store = InProcessStore()
    manager = make_manager(store=store)
    session, _ = await manager.create(_volume(), GEOMETRY)
    sub, _ = await manager.subscribe(session)
    request = asyncio.ensure_future(manager.add_box(session, 1, BOX))
    while not session.lock.locked():  # the prompt is in: the client goes away now
        await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with session.lock:  # the shielded prompt runs to its end
        pass
    history = await store.prompt_history(session.session_id)
    assert [(p.op, p.version) for p in history] == [("box", 1)]
    frames = [decode_diff(f) for f in _drain(sub)]  # type: ignore[arg-type]
    assert [(f.step, f.version) for f in frames] == [("box", 1)]
    after = await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="gru")  # the session goes on
    assert after.version == 2
