"""Opening and ending sessions: encode a volume into a new session, and every way a session ends.

A session ends when deleted, expired (idle or too old), closed by a store failure or a device error, handed
to another replica ("moved"), or when the server stops. Ending takes it out of service at once
(``SessionRegistry.forget``), waits for its request in flight (the session lock), closes its streams, frees
its device memory, then removes its store record and files unless another process still needs them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

import numpy as np

from app.errors import CapacityExceeded, InvalidInput, InvalidVolume, ServiceError, StoreUnavailable
from app.schemas.paths import StreamCloseCode
from app.sessions.executor import DeviceExecutor
from app.sessions.files import SessionFiles
from app.sessions.memory import release_free_memory
from app.sessions.metrics import ServiceMetrics
from app.sessions.registry import SessionRegistry
from app.sessions.session import Geometry, Session, hash_token
from app.sessions.store import MetadataStore, SessionRecord
from app.sessions.subscribers import Close

if TYPE_CHECKING:
    from app.models import Predictor

log = logging.getLogger(__name__)


class SessionLifecycle:
    """Creates and ends the sessions of one registry. Event loop thread only."""

    def __init__(self, predictor: Predictor, store: MetadataStore, executor: DeviceExecutor,
                 registry: SessionRegistry, files: SessionFiles, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.store = store
        self.executor = executor
        self.registry = registry
        self.files = files
        self.metrics = metrics

    async def create(
        self,
        volume: np.ndarray,
        geometry: Geometry,
        *,
        modality: str | None = None,
        source_format: str | None = None,
        session_id: str | None = None,
        exclusive_objects: bool | None = None,
    ) -> tuple[Session, str]:
        """Encode a (D, H, W) volume into a new session; return it with its bearer token (shown once).

        ``exclusive_objects``: whether the session's objects are one label map's labels
        (``SessionState.exclusive_objects``); None = ``SessionLimits.exclusive_objects``.

        ``session_id``: an id chosen by the router in front of several replicas (so that the session is
        created on the replica that will serve it); None = a random one. A taken id is refused.
        Raises ``CapacityExceeded`` when full, ``InvalidVolume`` when the model refuses the volume.
        """
        registry, limits = self.registry, self.registry.limits
        registry.check_room_for_session(by_load=False)  # admitted by load before its upload was read
        with registry.creating():
            if exclusive_objects is None:
                exclusive_objects = limits.exclusive_objects
            try:
                # On the intake lane: one encode at a time, beside the live sessions' work (executor.py).
                state = await self.executor.run_intake(
                    self.predictor.init_state, volume, geometry.spacing, seed=limits.seed,
                    exclusive_objects=exclusive_objects,
                )
            except ValueError as e:
                raise InvalidVolume(f"file: {e}", field="file") from e
            nbytes = state.nbytes
            limit = limits.max_device_bytes
            if limit is not None and registry.device_bytes() + nbytes > limit:
                self.metrics.capacity_rejections.labels(limit="device_bytes").inc()
                raise CapacityExceeded(
                    f"capacity: a session of this volume needs {nbytes} device bytes, "
                    f"{max(limit - registry.device_bytes(), 0)} are free",
                    retry_after_s=limits.retry_after_s,
                )
            token = secrets.token_urlsafe(32)
            now_wall, now = time.time(), registry.clock()
            record = SessionRecord(
                session_id=session_id or secrets.token_urlsafe(12),
                token_hash=hash_token(token),
                shape=tuple(int(s) for s in state.shape),  # type: ignore[arg-type]
                spacing=tuple(float(s) for s in geometry.spacing),  # type: ignore[arg-type]
                origin=tuple(float(s) for s in geometry.origin),  # type: ignore[arg-type]
                direction=tuple(float(s) for s in geometry.direction),
                modality=modality,
                config=self.predictor.config_name,
                created_at=now_wall,
                last_used_at=now_wall,
                source_format=source_format,
            )
            if session_id is not None and await self.store.get_session(session_id) is not None:
                raise InvalidInput(f"session_id: session id {session_id!r} is taken", field="session_id")
            # On disk before the store knows the session (a chosen id never overwrites another's folder).
            await self.files.save_volume(record, volume, state.exclusive_objects, exclusive=session_id is not None)
            try:
                await self.store.create_session(record)
                if registry.replica_id is not None:
                    await self.store.claim_session(record.session_id, registry.replica_id)  # type: ignore[attr-defined]
            except BaseException:
                await self.files.delete(record.session_id)
                raise
            session = registry.register(record, state, created_mono=now, last_used_mono=now)
            return session, token

    async def touch(self, session: Session) -> None:
        """Reset the idle clock and record the use in the store (best effort: a read must not fail on it)."""
        self.registry.mark_used(session)
        try:
            await self.store.touch_session(session.session_id, time.time())
        except StoreUnavailable:
            log.warning("session %s: could not record its last use", session.session_id)

    async def close(self, session: Session) -> None:
        """Delete a session (DELETE): waits for its in-flight request, then frees everything."""
        await self.end(session, "deleted")

    async def expire_due(self) -> list[str]:
        """End every session past a deadline (the reaper's sweep); return their ids."""
        due = self.registry.overdue()
        for session, reason in due:
            await self.end(session, reason)
        await self.trim_idle()
        return [s.session_id for s, _ in due]

    async def trim_idle(self) -> int:
        """Drop the rebuildable caches (``Predictor.trim_idle``) of every session unused for ``idle_trim_s``,
        once per idle period; return the bytes freed. An annotator who left a session open over lunch holds
        its volume, embedding and masks, not the ROI embeddings of every view it had (issue 24: memory per
        session); coming back costs one ROI encode."""
        limit = self.registry.limits.idle_trim_s
        if limit is None:
            return 0
        now, freed = self.registry.clock(), 0
        for session in self.registry.live():
            idle_since = session.last_used_mono
            if now - idle_since < limit or session.trimmed_idle_since == idle_since or session.lock.locked():
                continue

            async def trim(session: Session = session) -> int:
                n = await self.executor.run_background(self.predictor.trim_idle, session.state)
                session.nbytes = session.state.nbytes
                return n

            try:
                freed += await self.registry.locked(session, trim)
            except ServiceError:  # it ended meanwhile
                continue
            session.trimmed_idle_since = idle_since
        if freed:
            await asyncio.to_thread(release_free_memory)
        return freed

    async def shutdown(self) -> None:
        """End every session (server stopping): subscribers get 1001, store records are removed."""
        for session in self.registry.live():
            await self.end(session, "shutdown")

    async def drop_moved(self, session: Session) -> None:
        """Let go of a session another replica owns now: streams closed with 1001 (reconnect), device memory
        freed; its store record, history and files stay (they are the new owner's)."""
        await self.end(session, "moved")

    def end_later(self, session: Session, reason: str) -> None:
        """End the session in a background task (it was found expired on access, outside any lock)."""
        asyncio.get_running_loop().create_task(self.end(session, reason))

    async def end(self, session: Session, reason: str) -> None:
        self.registry.forget(session, reason)
        session.refinements.give_up.set()  # a refinement waiting for the device makes way (it would be dropped)
        async with session.lock:  # wait for the request in flight, if any
            await self.end_locked(session, reason)

    async def end_locked(self, session: Session, reason: str) -> None:
        """End the session, its lock held by the caller (a request that found its state unusable)."""
        if session.closed:
            return
        self.registry.forget(session, reason)
        session.closed = True
        code = StreamCloseCode.GOING_AWAY if reason in ("shutdown", "moved") else StreamCloseCode.SESSION_EXPIRED
        text = "session moved to another replica; reconnect" if reason == "moved" else f"session {reason}"
        for sub in list(session.subscribers):
            sub.close(Close(code, text))
        session.subscribers.clear()
        session.refinements.drop_all()  # the GRU steps were recorded; their clicks are answered with them
        session.state = None  # type: ignore[assignment]  # frees the device tensors
        session.nbytes = 0
        # glibc keeps freed memory in fragmented arenas: without this, RSS ratchets up as sessions come and go.
        await asyncio.to_thread(release_free_memory)
        if reason == "moved":
            return  # the record, history and files are the new owner's
        if reason == "shutdown" and self.files.keep_on_shutdown:
            return  # its record, history and files stay: the next process restores it
        try:
            await self.store.delete_session(session.session_id)
        except StoreUnavailable:
            log.warning("session %s: could not delete its store record", session.session_id)
            if reason == "store":
                # Closed by a store outage: its record and acknowledged history are still in the store, so keep
                # its files with them; the next startup restores it (or sweeps the files once the record expired).
                return
        await self.files.delete(session.session_id)
