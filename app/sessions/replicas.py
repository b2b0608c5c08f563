"""Several replicas of the service behind one router: who serves which session, take-over and fail-over.

A router (nginx, ``deploy/nginx/segsvc.conf``) sends every request of a session to one replica, chosen by
a consistent hash of the session id. Sessions live in the memory of a replica, so the replicas agree on
who serves what through a **session directory** in the Redis store (``app.sessions.store``):

    {p}session:{sid}:owner    the replica id that serves the session
    {p}replica:{rid}          that replica's heartbeat (expires after ``directory_ttl_s`` unless renewed)

* A replica that receives a request for a session it does not hold, whose record and files exist (shared
  ``storage_dir``) and whose token matches, **claims** it (one atomic Lua script sets the owner) and then
  rebuilds it from the stored volume and prompt history (``SessionManager.restore``, the same replay as
  after a restart). The previous owner is either dead (its heartbeat expired: a fail-over) or alive (the
  router moved the session, e.g. its replica came back: a hand-over); either way the router decided.
* **A prompt is recorded only while its replica owns the session**: the owner check and the history append
  are one Lua script (``RedisStore.commit_prompt(owner=...)``). A replica that lost a session cannot fork
  its history: its commit fails, it drops its copy and answers 503 ``session_moved`` (nothing recorded).
  The history read by the new owner comes after its claim, so it holds every prompt the old owner
  acknowledged.
* Every request checks the owner before serving a held session; the heartbeat loop also drops held
  sessions owned elsewhere (closing their streams with 1001, so clients reconnect through the router).

Written here rather than with a lock library (e.g. redis-py's ``Lock``): ownership is not a mutual-exclusion
lock with a timeout but a fencing check inside the very script that appends to the history, and a lost
lease must not stop a replica from finishing (only from committing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass

from app.errors import CapacityExceeded, StoreUnavailable
from app.sessions.manager import SessionManager
from app.sessions.persistence import ReplayError
from app.sessions.session import Session, hash_token
from app.sessions.store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakeOver:
    """One session this replica took over (for logs and tests)."""

    session_id: str
    previous: str | None
    previous_alive: bool
    history_entries: int
    seconds: float


class ReplicaCoordinator:
    """This replica's side of the session directory: heartbeat, ownership checks and lazy take-over.

    Args:
        manager: the process's session manager (its ``replica_id`` fences its commits).
        store: the Redis store holding the directory.
        replica_id: this replica's name, unique among the replicas (stable across its restarts).
        ttl_s: heartbeat lifetime; renewed every ``ttl_s / 3``.
    """

    def __init__(self, manager: SessionManager, store: RedisStore, replica_id: str, ttl_s: float) -> None:
        self.manager = manager
        self.store = store
        self.replica_id = replica_id
        self.ttl_s = ttl_s
        self.taken_over: list[TakeOver] = []
        self._claim_locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.heartbeat(self.replica_id, self.ttl_s)
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat:{self.replica_id}")

    async def stop(self) -> None:
        """Stop the heartbeat (graceful shutdown): other replicas see this one gone at once. Ownership of the
        sessions is kept, so a restart of the same replica restores them (``restore_sessions``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreUnavailable):
            await self.store.end_heartbeat(self.replica_id)

    async def session_for(self, session_id: str, token: str | None) -> Session:
        """The session, authenticated, held by this replica: taken over first if another replica (or
        nobody) owns it. Errors as ``SessionManager.authenticate`` (401 / 404 / 410), plus
        ``CapacityExceeded`` when there is no room to take it over and ``StoreUnavailable``."""
        held = self.manager.held(session_id)
        if held is not None:
            owner = (await self.store.session_owners([session_id]))[session_id]
            if owner == self.replica_id:
                return self.manager.authenticate(session_id, token)
            if owner is None:  # nobody committed since (commits need the owner): our copy is current
                await self.store.claim_session(session_id, self.replica_id)
                return self.manager.authenticate(session_id, token)
            log.info("session %s: replica %s owns it now; dropping this copy", session_id, owner)
            await self.manager.drop_moved(held)
        lock = self._claim_locks.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:  # one take-over per session at a time in this process
                return await self._take_over(session_id, token)
        finally:
            if not lock.locked() and self._claim_locks.get(session_id) is lock:
                del self._claim_locks[session_id]

    async def _take_over(self, session_id: str, token: str | None) -> Session:
        manager = self.manager
        if manager.held(session_id) is not None:  # another request took it over meanwhile
            return manager.authenticate(session_id, token)
        if manager.ended_reason(session_id) == "restore_failed":  # do not replay a known failure again
            return manager.authenticate(session_id, token)
        record = await self.store.get_session(session_id)
        # Only the session's own token may cause a take-over (a replay costs device time).
        if record is None or not token or not hmac.compare_digest(hash_token(token), record.token_hash):
            return manager.authenticate(session_id, token)
        persistence = manager.persistence
        if persistence is None or not await asyncio.to_thread(persistence.storage.has_volume, session_id):
            return manager.authenticate(session_id, token)
        now = time.time()
        expired = ("max_age" if now - record.created_at > manager.limits.max_session_age_s else
                   "idle" if now - record.last_used_at > manager.limits.idle_timeout_s else None)
        claim = await self.store.claim_session(session_id, self.replica_id)
        if not claim.exists:
            return manager.authenticate(session_id, token)
        if expired is not None:  # its owner died before expiring it
            manager.refuse_restored(record, expired)
            await self.store.delete_session(session_id)
            await asyncio.to_thread(persistence.storage.delete, session_id)
            return manager.authenticate(session_id, token)
        manager.forget_ended(session_id)  # e.g. closed by a store outage earlier: its history is intact
        started = time.perf_counter()
        history = await self.store.prompt_history(session_id)  # read after the claim: nothing acknowledged is missed
        versions = await self.store.object_versions(session_id)
        try:
            await manager.restore(record, history, stored_versions=versions)
        except ReplayError as e:
            log.error("session %s: cannot take it over (record and files kept): %s", session_id, e)
            manager.refuse_restored(record, "restore_failed", detail=str(e))
            await self.store.release_session(session_id, self.replica_id)
            return manager.authenticate(session_id, token)
        except CapacityExceeded:
            await self.store.release_session(session_id, self.replica_id)
            raise
        took = TakeOver(session_id, claim.previous, claim.previous_alive, len(history),
                        time.perf_counter() - started)
        self.taken_over.append(took)
        log.info("took over session %s from %s (%s): %d history entries replayed in %.2f s", session_id,
                 claim.previous or "nobody", "its heartbeat still fresh" if claim.previous_alive else "its heartbeat expired",
                 took.history_entries, took.seconds)
        return manager.authenticate(session_id, token)

    async def _beat(self) -> None:
        """Renew the heartbeat; drop held sessions that another replica owns now."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.store.heartbeat(self.replica_id, self.ttl_s)
                owners = await self.store.session_owners(self.manager.session_ids())
            except StoreUnavailable as e:
                log.warning("replica %s: heartbeat failed: %s", self.replica_id, e)
                continue
            for session_id, owner in owners.items():
                session = self.manager.held(session_id)
                if session is not None and owner is not None and owner != self.replica_id:
                    log.info("session %s: replica %s owns it now; dropping this copy", session_id, owner)
                    await self.manager.drop_moved(session)
