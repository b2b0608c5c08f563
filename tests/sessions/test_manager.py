"""SessionManager with the real tiny predictor: auth, capacity, expiry, history, atomic failures, streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.errors import (
    CapacityExceeded,
    InvalidInput,
    NothingToUndo,
    ObjectNotFound,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    Unauthorized,
)
from app.sessions.diffs import apply_diff, decode_diff
from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionManager
from app.sessions.reaper import Reaper
from app.sessions.session import Geometry, SessionLimits
from app.sessions.store import InProcessStore, PromptRecord
from app.sessions.subscribers import Close

pytestmark = pytest.mark.anyio

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0))


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 10, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0  # a bright block to segment
    return vol


@pytest.fixture
async def make_manager(predictor) -> AsyncIterator:  # noqa: ANN001
    executors: list[DeviceExecutor] = []
    managers: list[SessionManager] = []

    def make(store=None, clock=None, **limits) -> SessionManager:  # noqa: ANN001
        executor = DeviceExecutor()
        executors.append(executor)
        kwargs = {"clock": clock} if clock is not None else {}
        manager = SessionManager(predictor, store or InProcessStore(), executor, SessionLimits(**limits), **kwargs)
        managers.append(manager)
        return manager

    yield make
    for m in managers:
        await m.shutdown()
    for e in executors:
        e.shutdown()


async def test_tokens_isolate_sessions(make_manager) -> None:  # noqa: ANN001
    manager = make_manager()
    a, token_a = await manager.create(_volume(), GEOMETRY)
    b, token_b = await manager.create(_volume(1), GEOMETRY)
    assert manager.authenticate(a.session_id, token_a) is a
    with pytest.raises(SessionNotFound):  # a valid token of another session: existence stays hidden
        manager.authenticate(b.session_id, token_a)
    with pytest.raises(Unauthorized):
        manager.authenticate(b.session_id, None)
    with pytest.raises(Unauthorized):
        manager.authenticate(b.session_id, "not-a-token")
    with pytest.raises(Unauthorized):  # unknown id with a bad token: 401, not 404
        manager.authenticate("nope", "not-a-token")
    with pytest.raises(SessionNotFound):
        manager.authenticate("nope", token_b)


async def test_capacity_by_count(make_manager) -> None:  # noqa: ANN001
    manager = make_manager(max_sessions=1, retry_after_s=7)
    first, _ = await manager.create(_volume(), GEOMETRY)
    with pytest.raises(CapacityExceeded) as info:
        await manager.create(_volume(), GEOMETRY)
    assert info.value.retry_after_s == 7
    await manager.close(first)
    await manager.create(_volume(), GEOMETRY)  # room again
    assert len(manager) == 1


async def test_capacity_by_device_bytes(make_manager) -> None:  # noqa: ANN001
    manager = make_manager(max_device_bytes=1000)
    with pytest.raises(CapacityExceeded, match="device bytes"):
        await manager.create(_volume(), GEOMETRY)
    assert len(manager) == 0 and manager.device_bytes() == 0


async def test_capacity_by_device_bytes_blocks_new_objects_only(make_manager) -> None:  # noqa: ANN001
    probe = make_manager()
    s, _ = await probe.create(_volume(), GEOMETRY)
    limit = s.nbytes + 1
    manager = make_manager(max_device_bytes=limit)
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])  # below the limit when it starts
    assert manager.device_bytes() >= limit
    with pytest.raises(CapacityExceeded):
        await manager.add_box(session, 2, [0, 0, 0, 3, 3, 3])
    await manager.add_clicks(session, 1, [(10, 30, 30)], [1], mode="gru")  # existing object: still served
    for call in (manager.undo, manager.reset):  # a missing object is not found, full or not (nothing to make)
        with pytest.raises(ObjectNotFound):
            await call(session, 9)


async def test_idle_expiry_then_410_and_store_cleaned(make_manager) -> None:  # noqa: ANN001
    clock, store = ManualClock(), InProcessStore()
    manager = make_manager(store=store, clock=clock, idle_timeout_s=10, max_session_age_s=100)
    session, token = await manager.create(_volume(), GEOMETRY)
    clock.now += 9
    manager.authenticate(session.session_id, token)  # resets the idle clock
    clock.now += 9
    assert manager.authenticate(session.session_id, token) is session
    clock.now += 10.5
    assert await manager.expire_due() == [session.session_id]
    with pytest.raises(SessionExpired):
        manager.authenticate(session.session_id, token)
    with pytest.raises(SessionExpired):
        manager.get(session.session_id)
    assert await store.get_session(session.session_id) is None
    assert len(manager) == 0 and session.closed


async def test_max_age_expires_even_a_busy_session(make_manager) -> None:  # noqa: ANN001
    clock = ManualClock()
    manager = make_manager(clock=clock, idle_timeout_s=10, max_session_age_s=25)
    session, token = await manager.create(_volume(), GEOMETRY)
    for _ in range(2):
        clock.now += 9
        manager.authenticate(session.session_id, token)
    clock.now += 9  # 27 s old, used 9 s ago
    with pytest.raises(SessionExpired, match="max_age"):
        manager.authenticate(session.session_id, token)
    await asyncio.sleep(0.05)  # the lazy expiry's cleanup task
    assert session.closed


async def test_reaper_expires_idle_sessions(make_manager) -> None:  # noqa: ANN001
    manager = make_manager(idle_timeout_s=0.2, max_session_age_s=10)
    session, token = await manager.create(_volume(), GEOMETRY)
    reaper = Reaper(manager, interval_s=0.05)
    reaper.start()
    try:
        for _ in range(100):
            if len(manager) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await reaper.stop()
    assert len(manager) == 0 and session.closed
    with pytest.raises(SessionExpired):
        manager.authenticate(session.session_id, token)


async def test_deleted_session_is_404_for_its_own_token(make_manager) -> None:  # noqa: ANN001
    manager = make_manager()
    session, token = await manager.create(_volume(), GEOMETRY)
    await manager.close(session)
    with pytest.raises(SessionNotFound, match="deleted"):
        manager.authenticate(session.session_id, token)


async def test_prompts_are_recorded_before_the_reply(make_manager) -> None:  # noqa: ANN001
    store = InProcessStore()
    manager = make_manager(store=store)
    session, _ = await manager.create(_volume(), GEOMETRY)
    box = await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    clicks = await manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="both")
    undo = await manager.undo(session, 1)
    assert [c.step for c in clicks.steps] == ["gru", "decoder"]
    assert box.version < clicks.version < undo.version
    history = await store.prompt_history(session.session_id)
    # A "both" click is recorded as its GRU step, then the deferred refinement (its decoder step).
    gru, decoder = clicks.steps
    assert [(p.op, p.version) for p in history] == [("box", box.version), ("clicks", gru.version),
                                                   ("refine", decoder.version), ("undo", undo.version)]
    assert history[1].args == {"points": [[12, 30, 30]], "labels": [1], "mode": "both"}
    assert await store.object_versions(session.session_id) == {1: undo.version}


async def test_narrow_reads_see_prompts_and_objects_without_the_device_state(make_manager) -> None:  # noqa: ANN001
    store = InProcessStore()
    manager = make_manager(store=store)
    session, _ = await manager.create(_volume(), GEOMETRY, exclusive_objects=False)
    assert session.exclusive_objects is False and not session.has_object(1)
    await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    await manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="gru")
    await manager.add_box(session, 2, [6, 20, 20, 10, 30, 30])
    await manager.remove_object(session, 2)  # a removed object's prompts stay in its history
    assert await manager.prompt_counts(session) == {1: 2, 2: 2}
    assert session.has_object(1) and not session.has_object(2)
    later = session.record.last_used_at + 60.0
    await store.touch_session(session.session_id, later)
    assert (await manager.stored_record(session)).last_used_at == later  # the store's, not the one in memory
    await manager.close(session)
    assert not session.has_object(1)  # its state was freed: no AttributeError on a closed session


async def test_failed_prompts_leave_session_and_store_unchanged(make_manager) -> None:  # noqa: ANN001
    store = InProcessStore()
    manager = make_manager(store=store)
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    mask_before, version_before = await manager.get_mask(session, 1)
    history_before = await store.prompt_history(session.session_id)
    bad = [
        (manager.add_box(session, 1, [0, 0, 0, 24, 10, 10]), InvalidInput, "box"),
        (manager.add_box(session, 1, [5, 0, 0, 4, 10, 10]), InvalidInput, "box"),
        (manager.add_clicks(session, 1, [(0, 64, 0)], [1]), InvalidInput, "points"),
        (manager.add_clicks(session, 1, [(0, 1, 0)], [2]), InvalidInput, "labels"),
        (manager.add_clicks(session, 1, [(0, 1, 0)], [1], mode="fast"), InvalidInput, "mode"),
        (manager.undo(session, 9), ObjectNotFound, "object_id"),
        (manager.reset(session, 9), ObjectNotFound, "object_id"),
        (manager.set_mask(session, 1, np.zeros((2, 2, 2), np.uint8)), InvalidInput, "file"),
        (manager.set_mask(session, 1, np.full(SHAPE, 2, np.uint8)), InvalidInput, "mask"),
    ]
    for coro, error, field in bad:
        with pytest.raises(error) as info:
            await coro
        assert info.value.field == field, info.value
    mask_after, version_after = await manager.get_mask(session, 1)
    assert version_after == version_before
    assert np.array_equal(mask_after, mask_before)
    assert await store.prompt_history(session.session_id) == history_before
    assert sorted(session.state.objects) == [1]


async def test_nothing_to_undo(make_manager) -> None:  # noqa: ANN001
    manager = make_manager()
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    await manager.undo(session, 1)
    with pytest.raises(NothingToUndo):
        await manager.undo(session, 1)


async def test_concurrent_prompts_on_one_session_are_serialised(make_manager) -> None:  # noqa: ANN001
    store = InProcessStore()
    manager = make_manager(store=store)
    s1, _ = await manager.create(_volume(), GEOMETRY)
    s2, _ = await manager.create(_volume(1), GEOMETRY)
    await manager.add_box(s1, 1, [6, 20, 20, 17, 43, 43])
    await manager.add_box(s2, 1, [6, 20, 20, 17, 43, 43])
    clicks = [(10 + i, 25 + i, 25 + i) for i in range(4)]
    outcomes = await asyncio.wait_for(asyncio.gather(
        *[manager.add_clicks(s, 1, [c], [1], mode="gru") for c in clicks for s in (s1, s2)]
    ), timeout=120)
    for s in (s1, s2):
        history = await store.prompt_history(s.session_id)
        versions = [p.version for p in history]
        assert versions == sorted(versions) and len(set(versions)) == 5  # box + 4 clicks, one at a time
        assert [p.args["points"][0] for p in history[1:]] == [list(c) for c in clicks]  # arrival order
    assert len(outcomes) == 8


async def test_stream_frames_rebuild_the_mask(make_manager) -> None:  # noqa: ANN001
    manager = make_manager()
    session, _ = await manager.create(_volume(), GEOMETRY)
    sub, versions = await manager.subscribe(session)
    assert versions == {}
    await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both")
    await manager.add_clicks(session, 1, [(8, 25, 25)], [1], mode="gru")
    mask, version = np.zeros(SHAPE, np.uint8), 0
    steps = []
    for _ in range(4):
        frame = decode_diff(await asyncio.wait_for(sub.get(), 5))
        steps.append(frame.step)
        version = apply_diff(mask, frame, version)
    assert steps == ["box", "gru", "decoder", "gru"]
    expected, expected_version = await manager.get_mask(session, 1)
    assert version == expected_version and np.array_equal(mask, expected)
    # A resync sends a snapshot that replaces whatever the client holds.
    mask[:] = 1
    await manager.snapshot(session, sub, 1)
    frame = decode_diff(await asyncio.wait_for(sub.get(), 5))
    apply_diff(mask, frame)
    assert frame.version == expected_version and np.array_equal(mask, expected)
    await manager.close(session)
    closing = await asyncio.wait_for(sub.get(), 5)
    assert isinstance(closing, Close) and closing.code == 4410


async def test_segmentation_ties_and_recent_rule_go_to_the_most_recent_object(make_manager) -> None:  # noqa: ANN001
    manager = make_manager()
    session, _ = await manager.create(_volume(), GEOMETRY)
    full = np.zeros(SHAPE, np.uint8)
    full[5:15, 10:30, 10:30] = 1
    other = np.zeros(SHAPE, np.uint8)
    other[10:20, 20:40, 20:40] = 1
    await manager.set_mask(session, 3, full)
    await manager.set_mask(session, 2, other)
    labels, versions = await manager.segmentation(session)
    assert labels.dtype == np.uint8 and versions == {3: 1, 2: 1}
    assert labels[12, 25, 25] == 2  # overlap: object 2 changed last
    assert labels[6, 11, 11] == 3 and labels[19, 39, 39] == 2 and labels[0, 0, 0] == 0
    await manager.reset(session, 2)
    await manager.undo(session, 2)  # object 2 changed again: still on top
    labels, _ = await manager.segmentation(session)
    assert labels[12, 25, 25] == 2
    await manager.set_mask(session, 3, full)
    labels, _ = await manager.segmentation(session)
    assert labels[12, 25, 25] == 3
    # Uploaded masks tie on confidence; under "recent" the change order alone decides, the same way here.
    recent, _ = await manager.segmentation(session, "recent")
    assert np.array_equal(recent, labels)


class _FailingCommitStore(InProcessStore):
    """The in-process store with a backend that goes away after creation (a Redis outage)."""

    async def commit_prompt(self, session_id: str, prompt: PromptRecord) -> None:
        raise StoreUnavailable("store: Redis failed: connection refused")


async def test_unrecorded_prompt_closes_the_session(make_manager) -> None:  # noqa: ANN001
    manager = make_manager(store=_FailingCommitStore())
    session, token = await manager.create(_volume(), GEOMETRY)
    with pytest.raises(StoreUnavailable):
        await manager.add_box(session, 1, [6, 20, 20, 17, 43, 43])
    assert session.closed and len(manager) == 0
    with pytest.raises(SessionExpired):
        manager.authenticate(session.session_id, token)
