"""Which sessions this process serves: creation slots, tokens, expiry clocks, tombstones, capacity.

Expiry clocks (monotonic): a session ends when unused for ``idle_timeout_s`` (idle clock, reset by every
authenticated request) or when older than ``max_session_age_s`` (liveness clock, never reset). The reaper
sweeps periodically (``SessionLifecycle.expire_due``); ``authenticate``/``get`` also check on access. Ended
ids are kept in a bounded tombstone map so later requests get 410 (expired) or 404 (deleted) instead of 401.

Capacity: at most ``max_sessions`` live sessions (creations in flight included), at most ``max_device_bytes``
of session state on the device, and no new session while the device queue is long or slow (``admission``,
``app.sessions.admission``). Past any: ``CapacityExceeded`` (503 + Retry-After).

The registry ends nothing itself: a session found expired on access is taken out of service here and handed
to ``end_later`` (the lifecycle's end, which needs the store and the files).
"""

from __future__ import annotations

import hmac
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from app.errors import (
    CapacityExceeded,
    ObjectNotFound,
    SessionExpired,
    SessionMoved,
    SessionNotFound,
    Unauthorized,
)
from app.sessions.admission import Admission
from app.sessions.locks import SESSION_LEVEL, OrderedLock
from app.sessions.metrics import ServiceMetrics
from app.sessions.session import Session, SessionLimits, Tombstone, hash_token
from app.sessions.store import SessionRecord

if TYPE_CHECKING:
    from app.models import SessionState

T = TypeVar("T")


class SessionRegistry:
    """The live sessions of this process and the ids it stopped serving. Event loop thread only.

    Args:
        end_later: called with a session found expired on access (already out of service) and the reason;
            it must end it in the background (the request that found it gets 410 at once).
        replica_id: this replica's name when several replicas share the store (``app.sessions.replicas``);
            prompts are recorded only while it owns the session.
    """

    def __init__(self, limits: SessionLimits, metrics: ServiceMetrics, clock: Callable[[], float],
                 end_later: Callable[[Session, str], None], replica_id: str | None = None,
                 admission: Admission | None = None) -> None:
        self.limits = limits
        self.admission = admission  # load shedding from the measured device queue (app.sessions.admission)
        self.metrics = metrics
        self.clock = clock
        self.replica_id = replica_id
        self._end_later = end_later
        self._sessions: dict[str, Session] = {}
        self._owners: dict[str, str] = {}  # token hash -> session id (live and tombstoned)
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._creating = 0
        self._change_seq = itertools.count(1)

    # --- introspection --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def live(self) -> list[Session]:
        return list(self._sessions.values())

    def device_bytes(self) -> int:
        """Device bytes held by all live sessions (as of their last request)."""
        return sum(s.nbytes for s in self._sessions.values())

    def held(self, session_id: str) -> Session | None:
        """The live session ``session_id`` of this process, or None (no checks, no clock reset)."""
        return self._sessions.get(session_id)

    def ended_reason(self, session_id: str) -> str | None:
        """Why this process stopped serving ``session_id`` (its tombstone's reason), or None."""
        tomb = self._tombstones.get(session_id)
        return None if tomb is None else tomb.reason

    # --- registering ----------------------------------------------------------------------------------------

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Hold a session slot while a creation is in flight (capacity counts it as a session)."""
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1

    def register(self, record: SessionRecord, state: SessionState, *, created_mono: float,
                 last_used_mono: float) -> Session:
        session = Session(record=record, state=state,
                          lock=OrderedLock(f"session:{record.session_id}", SESSION_LEVEL),
                          created_mono=created_mono, last_used_mono=last_used_mono, nbytes=state.nbytes,
                          exclusive_objects=state.exclusive_objects)
        self._sessions[record.session_id] = session
        self._owners[record.token_hash] = record.session_id
        return session

    def stamp_change(self, session: Session, object_id: int) -> None:
        """Mark ``object_id`` as the session's most recently changed object (label-map overlap order)."""
        session.change_order[object_id] = next(self._change_seq)

    def refuse_restored(self, record: SessionRecord, reason: str, *, detail: str = "") -> None:
        """Remember a stored session this process will not serve: its token then gets 410 with ``reason``
        ("idle", "max_age", or "restore_failed" with a client-safe ``detail``) rather than 401."""
        self._owners[record.token_hash] = record.session_id
        self._add_tombstone(record.session_id, Tombstone(record.token_hash, reason, detail))

    def forget_ended(self, session_id: str) -> None:
        """Forget a tombstone (a session another replica served meanwhile may be taken over again)."""
        tomb = self._tombstones.pop(session_id, None)
        if tomb is not None and self._owners.get(tomb.token_hash) == session_id:
            del self._owners[tomb.token_hash]

    def forget(self, session: Session, reason: str) -> None:
        """Take the session out of service at once (no new request finds it) and tombstone its id."""
        sid = session.session_id
        if self._sessions.get(sid) is not session:
            return
        del self._sessions[sid]
        self.metrics.sessions_ended.labels(reason=reason).inc()
        if reason == "moved":  # served elsewhere now: no tombstone, a later request may take it back
            if self._owners.get(session.record.token_hash) == sid:
                del self._owners[session.record.token_hash]
            return
        self._add_tombstone(sid, Tombstone(session.record.token_hash, reason))

    def _add_tombstone(self, sid: str, tomb: Tombstone) -> None:
        if self.limits.tombstones <= 0:
            self._owners.pop(tomb.token_hash, None)
            return
        self._tombstones[sid] = tomb
        while len(self._tombstones) > self.limits.tombstones:
            old_sid, old = self._tombstones.popitem(last=False)
            if self._owners.get(old.token_hash) == old_sid:
                del self._owners[old.token_hash]

    # --- look-up --------------------------------------------------------------------------------------------

    def authenticate(self, session_id: str, token: str | None) -> Session:
        """The live session ``session_id`` if ``token`` is its token; touches the idle clock.

        Raises:
            Unauthorized: no token, or a token of no session (existence of ``session_id`` is not revealed).
            SessionNotFound: the token belongs to *another* session, or this session was deleted.
            SessionExpired: this session expired (idle timeout or maximum age).
        """
        if not token:
            raise Unauthorized("authorization: missing bearer token", field="authorization")
        digest = hash_token(token)
        session = self._sessions.get(session_id)
        if session is not None and hmac.compare_digest(digest, session.record.token_hash):
            self._check_alive(session)
            session.last_used_mono = self.clock()
            return session
        tomb = self._tombstones.get(session_id)
        if tomb is not None and hmac.compare_digest(digest, tomb.token_hash):
            self._raise_ended(session_id, tomb)
        if digest in self._owners:
            raise SessionNotFound(f"session_id: no session {session_id}", field="session_id")
        raise Unauthorized("authorization: invalid token", field="authorization")

    def get(self, session_id: str) -> Session:
        """The live session (no authentication: internal use). 404 unknown, 410 expired."""
        session = self._sessions.get(session_id)
        if session is None:
            tomb = self._tombstones.get(session_id)
            if tomb is not None:
                self._raise_ended(session_id, tomb)
            raise SessionNotFound(f"session_id: no session {session_id}", field="session_id")
        self._check_alive(session)
        return session

    async def locked(self, session: Session, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` under the session lock, refusing a session that ended while the request waited."""
        async with session.lock:
            if session.closed:
                tomb = self._tombstones.get(session.session_id)
                if tomb is None and self.replica_id is not None:  # dropped while this request waited
                    raise SessionMoved(f"session_id: session {session.session_id} moved to another replica; "
                                       "retry the request")
                self._raise_ended(session.session_id, tomb or Tombstone("", "deleted"))
            return await body()

    @staticmethod
    def require_object(session: Session, object_id: int) -> None:
        if object_id not in session.state.objects:
            raise ObjectNotFound(f"object_id: no object {object_id} in this session", field="object_id")

    def _raise_ended(self, session_id: str, tomb: Tombstone) -> None:
        if tomb.reason == "deleted":
            raise SessionNotFound(f"session_id: session {session_id} was deleted", field="session_id")
        if tomb.reason == "restore_failed":
            raise SessionExpired(f"session_id: session {session_id} could not be restored after a server "
                                 f"restart: {tomb.detail}", field="session_id")
        raise SessionExpired(f"session_id: session {session_id} expired ({tomb.reason})", field="session_id")

    # --- clocks ---------------------------------------------------------------------------------------------

    def mark_used(self, session: Session) -> None:
        """Reset the idle clock (in memory only)."""
        session.last_used_mono = self.clock()

    def expires_in_s(self, session: Session) -> float:
        """Seconds left before the session expires if nobody uses it."""
        now = self.clock()
        idle_left = self.limits.idle_timeout_s - (now - session.last_used_mono)
        age_left = self.limits.max_session_age_s - (now - session.created_mono)
        return max(0.0, min(idle_left, age_left))

    def overdue(self) -> list[tuple[Session, str]]:
        """Every live session past a deadline, with the reason (the reaper's sweep ends them)."""
        return [(s, r) for s in list(self._sessions.values()) if (r := self._overdue(s)) is not None]

    def _overdue(self, session: Session) -> str | None:
        now = self.clock()
        if now - session.created_mono > self.limits.max_session_age_s:
            return "max_age"
        if now - session.last_used_mono > self.limits.idle_timeout_s:
            return "idle"
        return None

    def _check_alive(self, session: Session) -> None:
        reason = self._overdue(session)
        if reason is not None:
            self.forget(session, reason)
            self._end_later(session, reason)
            raise SessionExpired(f"session_id: session {session.session_id} expired ({reason})",
                                 field="session_id")

    # --- capacity -------------------------------------------------------------------------------------------

    def check_room_for_session(self, *, by_load: bool = True) -> None:
        """Raise ``CapacityExceeded`` now if a new session could not be admitted (cheap; call before
        reading an upload). ``by_load=False``: the count and byte limits only, for an upload already admitted
        and read (refusing it for load now would throw that work away)."""
        if len(self._sessions) + self._creating >= self.limits.max_sessions:
            self.metrics.capacity_rejections.labels(limit="sessions").inc()
            raise CapacityExceeded(
                f"capacity: {self.limits.max_sessions} sessions are open; retry later",
                retry_after_s=self.limits.retry_after_s,
            )
        if by_load and self.admission is not None:
            self.admission.check(self.limits.retry_after_s,
                                 lambda limit: self.metrics.capacity_rejections.labels(limit=limit).inc(),
                                 creating=self._creating)
        self.check_room_for_object()

    def check_room_for_object(self) -> None:
        limit = self.limits.max_device_bytes
        if limit is not None and self.device_bytes() >= limit:
            self.metrics.capacity_rejections.labels(limit="device_bytes").inc()
            raise CapacityExceeded(
                f"capacity: sessions hold {self.device_bytes()} of {limit} device bytes; retry later",
                retry_after_s=self.limits.retry_after_s,
            )

    def check_room_for_restore(self) -> None:
        """Like ``check_room_for_session`` for a restore (no metric: not a client's request)."""
        if len(self._sessions) + self._creating >= self.limits.max_sessions:
            raise CapacityExceeded(f"capacity: {self.limits.max_sessions} sessions are open",
                                   retry_after_s=self.limits.retry_after_s)
