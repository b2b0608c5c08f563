"""Rebuilding sessions of a previous process (or of another replica) from their files and history.

``restore`` rebuilds one session: ``init_state`` on the stored volume with the stored seed, then the replay
of every acknowledged prompt (``app.sessions.persistence.replay_history``), and registers it under its old
token. ``restore_sessions`` does that at startup for every session the store knows whose volume is in this
process's storage; ``app.sessions.replicas`` does it lazily on a take-over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.errors import CapacityExceeded, StoreUnavailable
from app.sessions.executor import DeviceExecutor
from app.sessions.files import SessionFiles
from app.sessions.idempotency import replies_from_history
from app.sessions.persistence import ORPHAN_GRACE_S, ReplayError, replay_history, storable_session_id
from app.sessions.registry import SessionRegistry
from app.sessions.session import Session
from app.sessions.store import MetadataStore, PromptRecord, SessionRecord

if TYPE_CHECKING:
    from app.models import Predictor, SessionState

log = logging.getLogger(__name__)


@dataclass
class RestoreSummary:
    """What ``restore_sessions`` did (ids of each outcome)."""

    restored: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_here: list[str] = field(default_factory=list)  # records whose volume is not in this storage
    orphans_removed: int = 0
    seconds: float = 0.0


class SessionRestorer:
    """Rebuilds stored sessions into one registry (needs ``Settings.storage_dir``)."""

    def __init__(self, predictor: Predictor, store: MetadataStore, executor: DeviceExecutor,
                 registry: SessionRegistry, files: SessionFiles) -> None:
        self.predictor = predictor
        self.store = store
        self.executor = executor
        self.registry = registry
        self.files = files

    async def restore(self, record: SessionRecord, history: Sequence[PromptRecord],
                      stored_versions: dict[int, int] | None = None) -> Session:
        """Rebuild a session of a previous process from its stored volume and its acknowledged ``history``.

        The token hash, geometry and clocks come from ``record`` (the client's token keeps working); the
        object versions come from the replay, which must land on every version the history recorded and,
        for every live object, on ``stored_versions`` (the store's) when given.
        Raises ``ReplayError`` (files missing or unreadable, another model, the replay diverged) or
        ``CapacityExceeded``; nothing is registered then.
        """
        persistence = self.files.require()
        storage, sid = persistence.storage, record.session_id
        self.registry.check_room_for_restore()
        if record.config != self.predictor.config_name:
            raise ReplayError(f"model: served by configuration {record.config!r}, this process runs "
                              f"{self.predictor.config_name!r}")
        stored = await asyncio.to_thread(storage.load_volume, sid)
        if stored.meta.model != persistence.model:
            raise ReplayError("model: the session was created with other model weights or settings")
        if tuple(stored.array.shape) != record.shape:
            raise ReplayError(f"volume: stored shape {list(stored.array.shape)} differs from the record's "
                              f"{list(record.shape)}")

        def rebuild() -> tuple[SessionState, dict[int, int]]:
            try:
                state = self.predictor.init_state(stored.array, stored.meta.spacing, seed=stored.meta.seed,
                                                  exclusive_objects=stored.meta.exclusive_objects)
            except ValueError as e:
                raise ReplayError(f"volume: the model refuses the stored volume: {e}") from e
            versions = replay_history(self.predictor, state, history,
                                      lambda digest: storage.load_mask(sid, digest, record.shape))
            return state, versions

        state, versions = await self.executor.run_intake(rebuild)  # beside live sessions, like a creation
        if stored_versions is not None:  # removed objects keep their last version in the store: skip them
            differ = {o: (v, stored_versions.get(o)) for o, v in versions.items() if stored_versions.get(o) != v}
            if differ:
                raise ReplayError(f"versions: replay and store differ, object: (replay, store) {differ}")
        limits = self.registry.limits
        limit = limits.max_device_bytes
        if limit is not None and self.registry.device_bytes() + state.nbytes > limit:
            raise CapacityExceeded(f"capacity: the session needs {state.nbytes} device bytes, "
                                   f"{max(limit - self.registry.device_bytes(), 0)} are free",
                                   retry_after_s=limits.retry_after_s)
        now_wall, now = time.time(), self.registry.clock()
        session = self.registry.register(record, state,
                                         created_mono=now - max(0.0, now_wall - record.created_at),
                                         last_used_mono=now - max(0.0, now_wall - record.last_used_at))
        session.versions = versions
        session.replies = replies_from_history(history)
        last_change = {p.object_id: i for i, p in enumerate(history)}
        for oid in sorted(versions, key=lambda o: last_change.get(o, -1)):  # label-map overlap order
            self.registry.stamp_change(session, oid)
        return session


    async def restore_sessions(self) -> RestoreSummary:
        """Rebuild, at startup, every session the store knows whose volume is in this process's storage.

        Most recently used first (they get the room when capacity is short). A session past its idle timeout
        or maximum age (wall clock, from its record) is deleted and its token answers 410 ``expired``; one
        whose rebuild fails (unreadable files, other model weights, replay diverged, no room) answers 410 with
        the reason, and its record and files are kept for a later process. Storage directories the store no
        longer knows (sessions ended while this process was down, a crash between writing the volume and the
        record) are removed. Records without a volume here belong to another process and are left alone.

        With several replicas (``SessionRegistry.replica_id``) only the sessions the directory says this replica owns
        are restored (the others are taken over on their first request, ``app.sessions.replicas``), and only
        orphan folders older than ``ORPHAN_GRACE_S`` are removed.
        """
        persistence = self.files.require()
        storage, store, limits = persistence.storage, self.store, self.registry.limits
        summary = RestoreSummary()
        started = time.perf_counter()
        records: list[SessionRecord] = []
        for sid in await store.session_ids():
            record = await store.get_session(sid)
            if record is None:  # its keys expired in Redis: forget the id too
                await store.delete_session(sid)
            else:
                records.append(record)
        known = {r.session_id for r in records}
        replica = self.registry.replica_id
        grace = ORPHAN_GRACE_S if replica is not None else None
        for sid in await asyncio.to_thread(storage.session_ids, older_than_s=grace):
            if sid not in known:
                await asyncio.to_thread(storage.delete, sid)
                summary.orphans_removed += 1
        owners: dict[str, str | None] = {}
        if replica is not None:
            owners = await store.session_owners(sorted(known))  # type: ignore[attr-defined]
        now = time.time()
        for record in sorted(records, key=lambda r: r.last_used_at, reverse=True):
            sid = record.session_id
            if replica is not None and owners.get(sid) != replica:
                summary.not_here.append(sid)  # another replica's, or nobody's: taken over on its first request
                continue
            if not storable_session_id(sid) or not await asyncio.to_thread(storage.has_volume, sid):
                summary.not_here.append(sid)
                continue
            expired = ("max_age" if now - record.created_at > limits.max_session_age_s else
                       "idle" if now - record.last_used_at > limits.idle_timeout_s else None)
            if expired is not None:
                self.registry.refuse_restored(record, expired)
                await store.delete_session(sid)
                await asyncio.to_thread(storage.delete, sid)
                summary.expired.append(sid)
                log.info("session %s expired (%s) while the server was down: deleted", sid, expired)
                continue
            t0 = time.perf_counter()
            history = await store.prompt_history(sid)
            versions = await store.object_versions(sid)
            try:
                session = await self.restore(record, history, stored_versions=versions)
            except (ReplayError, CapacityExceeded) as e:
                log.error("session %s: cannot restore it (record and files kept): %s", sid, e)
                self.registry.refuse_restored(record, "restore_failed", detail=str(e))
                summary.failed.append(sid)
                continue
            except StoreUnavailable:
                raise  # the store went away during startup: do not start half restored
            except Exception:  # one broken session must not keep the server from starting
                log.exception("session %s: cannot restore it (record and files kept)", sid)
                self.registry.refuse_restored(record, "restore_failed", detail="its replay failed (see the server log)")
                summary.failed.append(sid)
                continue
            summary.restored.append(sid)
            log.info("restored session %s: %d history entries, %d objects, in %.2f s", sid, len(history),
                     len(session.versions), time.perf_counter() - t0)
        summary.seconds = time.perf_counter() - started
        return summary
