"""Several replicas on one real Redis and one storage folder: the session directory fences every commit, a
replica takes a session over by replaying it exactly, and a store that lost a session refuses its prompts.

Each manager here stands for one replica process (its own device executor); the end-to-end version with
real processes behind nginx is ``tests/e2e/test_replicas.py``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.api.errors import error_response
from app.errors import SessionExpired, SessionMoved, SessionRecordLost
from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionManager
from app.sessions.persistence import ORPHAN_GRACE_S, Persistence, SessionStorage, model_fingerprint
from app.sessions.replicas import ReplicaCoordinator
from app.sessions.session import Geometry, SessionLimits
from app.sessions.store import RedisStore
from tests.sessions.conftest import REDIS_URL, _redis_reachable
from tests.volumes import synthetic_volume

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0))
BOX = [6, 20, 20, 17, 43, 43]


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    if not await _redis_reachable(REDIS_URL):
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test-replicas-{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, ttl_s=3600)
    await store.connect()
    yield store
    await _delete_prefix(prefix)
    await store.close()


async def _delete_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def replicas(predictor, redis_store: RedisStore, tmp_path: Path  # noqa: ANN001
                   ) -> AsyncIterator[Callable[[str], SessionManager]]:
    """Managers named by replica id over one store and one storage folder (never shut down: 'crashed')."""
    executors: list[DeviceExecutor] = []
    fingerprint = model_fingerprint(predictor)

    def make(replica_id: str) -> SessionManager:
        executor = DeviceExecutor()
        executors.append(executor)
        persistence = Persistence(SessionStorage(tmp_path / "storage"), fingerprint, keep_on_shutdown=True)
        return SessionManager(predictor, redis_store, executor, SessionLimits(), persistence=persistence,
                              replica_id=replica_id)

    yield make
    for e in executors:
        e.shutdown()


async def _masks(manager: SessionManager, session) -> dict[int, tuple[int, bytes]]:  # noqa: ANN001
    out = {}
    for oid in sorted(session.state.objects):
        mask, version = await manager.get_mask(session, oid)
        out[oid] = (version, mask.tobytes())
    return out


async def test_take_over_replays_exactly_and_fences_the_old_owner(replicas, redis_store: RedisStore) -> None:  # noqa: ANN001
    a, b = replicas("a"), replicas("b")
    session, token = await a.create(synthetic_volume(), GEOMETRY)
    sid = session.session_id
    assert (await redis_store.session_owners([sid]))[sid] == "a"
    await a.add_box(session, 1, BOX)
    await a.add_clicks(session, 1, [(10, 30, 30)], [1], mode="gru")
    before = await _masks(a, session)

    await redis_store.heartbeat("a", 30.0)  # a is alive: this is a hand-over (the router moved the session)
    coordinator = ReplicaCoordinator(b, redis_store, "b", ttl_s=30.0)
    moved = await coordinator.session_for(sid, token)
    assert (await redis_store.session_owners([sid]))[sid] == "b"
    assert coordinator.taken_over[-1].previous == "a" and coordinator.taken_over[-1].previous_alive
    assert coordinator.taken_over[-1].history_entries == 2
    assert await _masks(b, moved) == before  # bit-identical replay on the other replica

    # The old owner still holds a copy: its next prompt runs on its device but must not be recorded.
    with pytest.raises(SessionMoved):
        await a.add_clicks(session, 1, [(12, 25, 38)], [0], mode="gru")
    assert a.held(sid) is None  # it dropped its copy
    assert [p.op for p in await redis_store.prompt_history(sid)] == ["box", "clicks"]  # no fork

    outcome = await b.add_clicks(moved, 1, [(12, 25, 38)], [0], mode="gru")
    assert outcome.version == 3
    assert [p.version for p in await redis_store.prompt_history(sid)] == [1, 2, 3]

    # The router sends the session back to a (e.g. its replica answers again): a takes it over in turn.
    back = ReplicaCoordinator(a, redis_store, "a", ttl_s=30.0)
    again = await back.session_for(sid, token)
    assert (await _masks(a, again))[1][0] == 3
    with pytest.raises(SessionMoved):
        await b.undo(moved, 1)


async def test_wrong_token_never_triggers_a_take_over(replicas, redis_store: RedisStore) -> None:  # noqa: ANN001
    a, b = replicas("a"), replicas("b")
    session, _ = await a.create(synthetic_volume(), GEOMETRY)
    from app.errors import Unauthorized

    with pytest.raises(Unauthorized):
        await ReplicaCoordinator(b, redis_store, "b", ttl_s=30.0).session_for(session.session_id, "not-the-token")
    assert (await redis_store.session_owners([session.session_id]))[session.session_id] == "a"
    assert b.held(session.session_id) is None


async def test_a_restarted_replica_restores_only_its_own_sessions(replicas, redis_store: RedisStore,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    """Another replica's session (here the most recently used, so first in line) is skipped, not restored, and
    the ones after it are still restored; only orphan folders older than the grace are swept (a younger one
    may be a creation in flight on another replica)."""
    a, b = replicas("a"), replicas("b")
    mine, _ = await a.create(synthetic_volume(), GEOMETRY)
    theirs, _ = await b.create(synthetic_volume(seed=1), GEOMETRY)
    await a.add_box(mine, 1, BOX)
    await b.add_box(theirs, 1, BOX)
    await redis_store.touch_session(theirs.session_id, time.time() + 60)
    storage = tmp_path / "storage"
    (storage / "in-flight").mkdir()
    (storage / "abandoned").mkdir()
    old = time.time() - ORPHAN_GRACE_S - 60
    os.utime(storage / "abandoned", (old, old))
    restarted_a = replicas("a")  # same replica id, new process
    summary = await restarted_a.restore_sessions()
    assert summary.restored == [mine.session_id]
    assert summary.not_here == [theirs.session_id] and summary.orphans_removed == 1
    assert (storage / "in-flight").is_dir() and not (storage / "abandoned").exists()


async def test_a_chosen_session_id_is_used_once(replicas) -> None:  # noqa: ANN001
    a = replicas("a")
    chosen = uuid.uuid4().hex
    session, _ = await a.create(synthetic_volume(), GEOMETRY, session_id=chosen)
    assert session.session_id == chosen
    from app.errors import InvalidInput

    with pytest.raises(InvalidInput, match="session_id"):
        await replicas("b").create(synthetic_volume(), GEOMETRY, session_id=chosen)
    assert a.held(chosen) is session  # the first session's files and record are untouched
    await a.add_box(session, 1, BOX)


async def test_prompt_on_a_session_the_store_lost_fails_and_closes_it(replicas, redis_store: RedisStore) -> None:  # noqa: ANN001
    a = replicas("a")
    session, token = await a.create(synthetic_volume(), GEOMETRY)
    await a.add_box(session, 1, BOX)
    await _delete_prefix(redis_store._prefix)  # the store came back empty (flushed)

    with pytest.raises(SessionRecordLost) as caught:
        await a.add_clicks(session, 1, [(10, 30, 30)], [1], mode="gru")
    assert await redis_store.prompt_history(session.session_id) == []  # nothing written
    reply = error_response(caught.value, retry_after_s=5)
    assert reply.status_code == 503 and b"no longer in the session store" in reply.body
    assert b'"store_unavailable"' in reply.body
    with pytest.raises(SessionExpired):  # closed: its device state was ahead of its (lost) history
        a.authenticate(session.session_id, token)
    assert a.held(session.session_id) is None
