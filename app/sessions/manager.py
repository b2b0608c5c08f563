"""The session manager: live sessions on the device, their metadata, expiry, capacity and the diff stream.

    manager = SessionManager(predictor, store, DeviceExecutor(), SessionLimits(...))
    session, token = await manager.create(volume, geometry, modality="CT")
    session = manager.authenticate(session_id, token)       # 401 / 404 / 410 as domain errors
    outcome = await manager.add_clicks(session, 1, [(z, y, x)], [1], mode="gru")

Concurrency policy
------------------
One event loop, one worker process per device. Every session has its own lock; the device has one lock
(``DeviceExecutor``). **Lock order: session lock, then device lock** (``app.sessions.locks`` refuses any
other order at run time). Everything that reads or writes a session's model state holds its session lock
for the whole request (device work, prompt-history append, version bookkeeping), so requests on one
session are applied one at a time, in arrival order; the device lock is held only around the blocking
model call, which runs on the executor's thread so the event loop keeps serving other sessions, health
checks and WebSocket frames. Nothing awaits the store while holding the device lock.

A mutating request runs as its own task shielded from cancellation: once a prompt reached the device,
a client that disconnects cannot leave the model state ahead of the prompt history.

Acknowledgement: the prompt is appended to the store's history (with the object's new version) *before*
the reply is sent. If that append fails the session is closed (its device state would no longer match
its history) and the client gets ``StoreUnavailable``. The stream follows the same rule: a prompt's frames
are queued to the subscribers only once its history append succeeded, so no client ever holds a version that
the store never recorded (a restore would take it back). With ``Persistence`` (``Settings.storage_dir``) the
uploaded volume and every uploaded mask are on disk before their reply too, and ``restore`` rebuilds a
session of a previous process from them and its history (``app.sessions.persistence``).

Expiry clocks (monotonic): a session ends when unused for ``idle_timeout_s`` (idle clock, reset by every
authenticated request) or when older than ``max_session_age_s`` (liveness clock, never reset). The reaper
sweeps periodically; ``authenticate``/``get`` also check on access. Ended ids are kept in a bounded
tombstone map so later requests get 410 (expired) or 404 (deleted) instead of 401.

Capacity: at most ``max_sessions`` live sessions (creations in flight included), and at most
``max_device_bytes`` of session state on the device (checked before and after encoding a new volume,
and before creating a new object). Past either: ``CapacityExceeded`` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from app.errors import (
    CapacityExceeded,
    InvalidInput,
    InvalidVolume,
    NothingToUndo,
    ObjectNotFound,
    ServiceError,
    SessionExpired,
    SessionMoved,
    SessionNotFound,
    StoreUnavailable,
    Unauthorized,
)
from app.models import regions
from app.models.label_map import OverlapRule
from app.schemas.diffs import ObjectRemoved
from app.schemas.frames import mask_bbox
from app.schemas.prompts import REFINE_MODES
from app.sessions.admission import Admission, AdmissionLimits
from app.sessions.changes import Bbox, net_change
from app.sessions.diffs import encode_change, encode_snapshot
from app.sessions.executor import DeviceExecutor, GaveUp
from app.sessions.idempotency import RecordedReply, recorded_reply, replies_from_history, request_fingerprint
from app.sessions.locks import SESSION_LEVEL, OrderedLock
from app.sessions.memory import release_free_memory
from app.sessions.metrics import ServiceMetrics
from app.sessions.persistence import Persistence, ReplayError, VolumeMeta, replay_history
from app.sessions.refinement import PendingRefinements, Waiter, finish
from app.sessions.store import MetadataStore, OwnershipLost, PromptRecord, SessionRecord
from app.sessions.subscribers import Close, Subscriber
from app.sessions.validation import check_box, check_points, check_region

if TYPE_CHECKING:
    from app.models.predictor import Predictor
    from app.models.state import Change, SessionState

log = logging.getLogger(__name__)
T = TypeVar("T")

# WebSocket close codes the manager asks for (mirrors app.schemas.paths.StreamCloseCode).
CLOSE_GOING_AWAY = 1001
CLOSE_SESSION_ENDED = 4410
CLOSE_TOO_SLOW = 4503


def hash_token(token: str) -> str:
    """Hex sha256 of a bearer token (only the hash is kept)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SessionLimits:
    """Capacity and expiry settings of a manager (see ``app.config.Settings``)."""

    max_sessions: int = 8
    max_device_bytes: int | None = None
    retry_after_s: int = 5
    idle_timeout_s: float = 1800.0
    max_session_age_s: float = 8 * 3600.0
    tombstones: int = 10_000
    stream_queue_frames: int = 1024
    max_subscribers: int = 16
    seed: int = 0
    exclusive_objects: bool = True
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)


@dataclass(frozen=True)
class Geometry:
    """Physical frame of an uploaded volume (see ``app.schemas.sessions.VolumeGeometry``)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Session:
    """One live session: its record, its device state and its concurrency/bookkeeping attributes.

    Attributes:
        record: the metadata as stored (created_at/last_used_at wall-clock, for display).
        state: the predictor's device-resident state; touch only under ``lock`` and through the executor.
        lock: the session lock (taken before the device lock).
        versions: object id -> version of its last step (updated on the device thread, step by step).
        change_order: object id -> sequence number of its last change (label-map overlap rule).
        nbytes: device bytes of ``state`` after the last request (cached for metrics and capacity).
        dicom_headers: the source series' slice headers (pydicom Datasets without pixel data, in the
            volume's axis-0 order) when the session was created from DICOM; kept in memory only, so a
            session restored after a restart has None (DICOM SEG export needs them).
        replies: idempotency key -> the reply its prompt got (``app.sessions.idempotency``); rebuilt from the
            history on restore.
        refinements: objects waiting for the deferred decoder step of their ``both`` clicks
            (``app.sessions.refinement``).
    """

    record: SessionRecord
    state: SessionState
    lock: OrderedLock
    created_mono: float
    last_used_mono: float
    nbytes: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    change_order: dict[int, int] = field(default_factory=dict)
    subscribers: set[Subscriber] = field(default_factory=set)
    closed: bool = False
    dicom_headers: tuple[Any, ...] | None = None
    replies: dict[str, RecordedReply] = field(default_factory=dict)
    refinements: PendingRefinements[PromptOutcome] = field(default_factory=PendingRefinements)

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.record.shape

    def broadcast(self, item: bytes | str) -> None:
        """Queue a frame or message to every subscriber (event loop thread only)."""
        for sub in list(self.subscribers):
            sub.push(item)
            if sub.closed:
                self.subscribers.discard(sub)


@dataclass(frozen=True)
class StepOutcome:
    """One model step of an acknowledged prompt: the object's version after it, its changed voxel count and
    their inclusive bbox (None when nothing changed), its stage timings."""

    step: str
    version: int
    changed: int
    bbox: Bbox | None
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class PromptOutcome:
    """The result of one acknowledged prompt.

    ``changed``/``bbox`` are the net change of the whole request; ``steps`` has one entry per model step.
    ``replayed``: a retry with a known idempotency key, answered from the history (nothing ran).
    """

    object_id: int
    version: int
    changed: int
    bbox: Bbox | None
    steps: list[StepOutcome]
    timings_ms: dict[str, float]
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The reply as recorded with the prompt's idempotency key (``replayed`` is not part of it)."""
        d = asdict(self)
        del d["replayed"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PromptOutcome:
        """A recorded reply, marked ``replayed``."""

        def box(b: Any) -> Bbox | None:
            return None if b is None else tuple(int(v) for v in b)  # type: ignore[return-value]

        steps = [StepOutcome(s["step"], int(s["version"]), int(s["changed"]), box(s["bbox"]), dict(s["timings_ms"]))
                 for s in d["steps"]]
        return cls(int(d["object_id"]), int(d["version"]), int(d["changed"]), box(d["bbox"]), steps,
                   dict(d["timings_ms"]), replayed=True)


@dataclass(frozen=True)
class _Tombstone:
    token_hash: str
    reason: str  # "idle" | "max_age" | "deleted" | "store" | "error" | "shutdown" | "restore_failed"
    detail: str = ""  # client-safe explanation (restore failures)


class SessionManager:
    """Owns every live session of this process. Use from the event loop thread only."""

    def __init__(
        self,
        predictor: Predictor,
        store: MetadataStore,
        executor: DeviceExecutor,
        limits: SessionLimits | None = None,
        metrics: ServiceMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        persistence: Persistence | None = None,
        replica_id: str | None = None,
    ) -> None:
        self.predictor = predictor
        self.store = store
        self.executor = executor
        self.limits = limits or SessionLimits()
        self.admission = Admission(executor, self.limits.admission)  # load shedding from the measured queue
        self.metrics = metrics or ServiceMetrics()
        self.persistence = persistence
        # With several replicas (app.sessions.replicas): prompts are recorded only while this replica owns
        # the session in the store's directory.
        self.replica_id = replica_id
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._owners: dict[str, str] = {}  # token hash -> session id (live and tombstoned)
        self._tombstones: OrderedDict[str, _Tombstone] = OrderedDict()
        self._creating = 0
        self._change_seq = itertools.count(1)

    # --- introspection --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def device_bytes(self) -> int:
        """Device bytes held by all live sessions (as of their last request)."""
        return sum(s.nbytes for s in self._sessions.values())

    # --- lifecycle ------------------------------------------------------------------------------------------

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
        self._check_room_for_session()
        self._creating += 1
        try:
            if exclusive_objects is None:
                exclusive_objects = self.limits.exclusive_objects
            try:
                state = await self.executor.run(
                    self.predictor.init_state, volume, geometry.spacing, seed=self.limits.seed,
                    exclusive_objects=exclusive_objects,
                )
            except ValueError as e:
                raise InvalidVolume(f"file: {e}", field="file") from e
            nbytes = state.nbytes
            limit = self.limits.max_device_bytes
            if limit is not None and self.device_bytes() + nbytes > limit:
                self.metrics.capacity_rejections.labels(limit="device_bytes").inc()
                raise CapacityExceeded(
                    f"capacity: a session of this volume needs {nbytes} device bytes, "
                    f"{max(limit - self.device_bytes(), 0)} are free",
                    retry_after_s=self.limits.retry_after_s,
                )
            token = secrets.token_urlsafe(32)
            now_wall, now = time.time(), self._clock()
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
            await self._persist_volume(record, volume, state.exclusive_objects, exclusive=session_id is not None)
            try:
                await self.store.create_session(record)
                if self.replica_id is not None:
                    await self.store.claim_session(record.session_id, self.replica_id)  # type: ignore[attr-defined]
            except BaseException:
                await self._delete_files(record.session_id)
                raise
            session = self._register(record, state, created_mono=now, last_used_mono=now)
            return session, token
        finally:
            self._creating -= 1

    async def restore(self, record: SessionRecord, history: Sequence[PromptRecord],
                      stored_versions: dict[int, int] | None = None) -> Session:
        """Rebuild a session of a previous process from its stored volume and its acknowledged ``history``.

        The token hash, geometry and clocks come from ``record`` (the client's token keeps working); the
        object versions come from the replay, which must land on every version the history recorded and,
        for every live object, on ``stored_versions`` (the store's) when given.
        Raises ``ReplayError`` (files missing or unreadable, another model, the replay diverged) or
        ``CapacityExceeded``; nothing is registered then.
        """
        persistence = self._require_persistence()
        storage, sid = persistence.storage, record.session_id
        if len(self._sessions) + self._creating >= self.limits.max_sessions:
            raise CapacityExceeded(f"capacity: {self.limits.max_sessions} sessions are open",
                                   retry_after_s=self.limits.retry_after_s)
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

        state, versions = await self.executor.run(rebuild)
        if stored_versions is not None:  # removed objects keep their last version in the store: skip them
            differ = {o: (v, stored_versions.get(o)) for o, v in versions.items() if stored_versions.get(o) != v}
            if differ:
                raise ReplayError(f"versions: replay and store differ, object: (replay, store) {differ}")
        limit = self.limits.max_device_bytes
        if limit is not None and self.device_bytes() + state.nbytes > limit:
            raise CapacityExceeded(f"capacity: the session needs {state.nbytes} device bytes, "
                                   f"{max(limit - self.device_bytes(), 0)} are free",
                                   retry_after_s=self.limits.retry_after_s)
        now_wall, now = time.time(), self._clock()
        session = self._register(record, state,
                                 created_mono=now - max(0.0, now_wall - record.created_at),
                                 last_used_mono=now - max(0.0, now_wall - record.last_used_at))
        session.versions = versions
        session.replies = replies_from_history(history)
        last_change = {p.object_id: i for i, p in enumerate(history)}
        for oid in sorted(versions, key=lambda o: last_change.get(o, -1)):  # label-map overlap order
            session.change_order[oid] = next(self._change_seq)
        return session

    def refuse_restored(self, record: SessionRecord, reason: str, *, detail: str = "") -> None:
        """Remember a stored session this process will not serve: its token then gets 410 with ``reason``
        ("idle", "max_age", or "restore_failed" with a client-safe ``detail``) rather than 401."""
        self._owners[record.token_hash] = record.session_id
        self._add_tombstone(record.session_id, _Tombstone(record.token_hash, reason, detail))

    def _register(self, record: SessionRecord, state: SessionState, *, created_mono: float,
                  last_used_mono: float) -> Session:
        session = Session(record=record, state=state,
                          lock=OrderedLock(f"session:{record.session_id}", SESSION_LEVEL),
                          created_mono=created_mono, last_used_mono=last_used_mono, nbytes=state.nbytes)
        self._sessions[record.session_id] = session
        self._owners[record.token_hash] = record.session_id
        return session

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
            session.last_used_mono = self._clock()
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

    def mark_used(self, session: Session) -> None:
        """Reset the idle clock (in memory only)."""
        session.last_used_mono = self._clock()

    async def touch(self, session: Session) -> None:
        """Reset the idle clock and record the use in the store (best effort: a read must not fail on it)."""
        session.last_used_mono = self._clock()
        try:
            await self.store.touch_session(session.session_id, time.time())
        except StoreUnavailable:
            log.warning("session %s: could not record its last use", session.session_id)

    def expires_in_s(self, session: Session) -> float:
        """Seconds left before the session expires if nobody uses it."""
        now = self._clock()
        idle_left = self.limits.idle_timeout_s - (now - session.last_used_mono)
        age_left = self.limits.max_session_age_s - (now - session.created_mono)
        return max(0.0, min(idle_left, age_left))

    async def close(self, session: Session) -> None:
        """Delete a session (DELETE): waits for its in-flight request, then frees everything."""
        await self._end(session, "deleted")

    async def expire_due(self) -> list[str]:
        """End every session past a deadline (the reaper's sweep); return their ids."""
        due = [(s, r) for s in list(self._sessions.values()) if (r := self._overdue(s)) is not None]
        for session, reason in due:
            await self._end(session, reason)
        return [s.session_id for s, _ in due]

    async def shutdown(self) -> None:
        """End every session (server stopping): subscribers get 1001, store records are removed."""
        for session in list(self._sessions.values()):
            await self._end(session, "shutdown")

    # --- prompts --------------------------------------------------------------------------------------------

    async def add_box(self, session: Session, object_id: int, box: Sequence[int], *, key: str | None = None
                      ) -> PromptOutcome:
        """Segment ``object_id`` from an inclusive voxel box; restarts the object."""
        b = check_box(box, session.shape)

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            change = self.predictor.add_box(session.state, object_id, b)
            on_change(change)
            return [change]

        return await self._prompt(session, "box", object_id, {"box": list(b)}, run, creates=True, key=key)

    async def add_text(self, session: Session, object_id: int, text: str, box: Sequence[int] | None = None,
                       points: Sequence[Sequence[int]] | None = None, labels: Sequence[int] | None = None,
                       *, key: str | None = None) -> PromptOutcome:
        """Segment ``object_id`` by its name (SegVol's text prompt), optionally with a box and clicks."""
        if not self.predictor.supports_text:
            raise InvalidInput(f"text: the loaded model ({self.predictor.config_name}) takes no text prompts; it "
                               f"takes {self.predictor.prompt_kinds}", field="text")
        b = check_box(box, session.shape) if box is not None else None
        pts, labs = check_points(points, labels or [], session.shape) if points else ([], [])

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            change = self.predictor.add_text(session.state, object_id, text, b, pts or None, labs or None)
            on_change(change)
            return [change]

        args = {"text": text, "box": list(b) if b is not None else None, "points": [list(p) for p in pts],
                "labels": list(labs)}
        return await self._prompt(session, "text", object_id, args, run, creates=True, key=key)

    async def add_clicks(
        self,
        session: Session,
        object_id: int,
        points: Sequence[Sequence[int]],
        labels: Sequence[int],
        mode: str = "both",
        *,
        key: str | None = None,
    ) -> PromptOutcome:
        """Refine ``object_id`` with voxel clicks (z, y, x); each model step is streamed once it is recorded.

        ``gru`` runs on the executor's instant lane. ``both``: the GRU step runs there, is recorded and streamed
        at once, and the decoder step is left to the session's deferred refinement (``app.sessions.refinement``,
        coalesced with later ``both`` clicks); the reply waits for that refinement and carries both steps (only
        the GRU step when a later prompt superseded the refinement)."""
        pts, labs = check_points(points, labels, session.shape)
        if mode not in REFINE_MODES:
            raise InvalidInput(f"mode: expected one of {list(REFINE_MODES)}, got {mode!r}", field="mode")

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            return self.predictor.add_clicks(session.state, object_id, pts, labs, mode=mode, on_change=on_change,
                                             refine=False)

        args = {"points": [list(p) for p in pts], "labels": labs, "mode": mode}
        if mode != "both":
            return await self._prompt(session, "clicks", object_id, args, run, creates=True, key=key,
                                      lane="instant" if mode == "gru" else "bulk")
        waiters: list[Waiter[PromptOutcome]] = []

        def wait_for_refinement(outcome: PromptOutcome, changes: list[Change], fingerprint: str,
                                started: float) -> None:  # under the session lock, right after the commit
            waiter = Waiter(outcome, list(changes), key, fingerprint, started)
            session.refinements.add(object_id, waiter)
            waiters.append(waiter)

        gru = await self._prompt(session, "clicks", object_id, args, run, creates=True, key=key, lane="instant",
                                 after_commit=wait_for_refinement)
        if not waiters:  # a retry answered from the record
            return gru
        refined = await asyncio.shield(waiters[0].future)  # the refinement is the session's, not this request's
        return gru if refined is None else refined

    async def add_region(self, session: Session, object_id: int, region: np.ndarray, label: int,
                         mode: str = "both", *, key: str | None = None) -> PromptOutcome:
        """Refine ``object_id`` with a region prompt: ``region`` = flat voxel indices of a scribble or a filled
        lasso (``app.models.regions``), checked by ``check_region``; recorded as runs of flat indices."""
        flat = check_region(region, label, mode, session.shape)

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            return self.predictor.add_region(session.state, object_id, flat, label, mode=mode, on_change=on_change)

        args = {"runs": regions.to_runs(flat), "label": label, "mode": mode}
        return await self._prompt(session, "region", object_id, args, run, creates=True, key=key)

    async def set_mask(self, session: Session, object_id: int, mask: np.ndarray, *, key: str | None = None
                       ) -> PromptOutcome:
        """Start ``object_id`` from a (D, H, W) 0/1 mask."""
        if tuple(mask.shape) != session.shape:
            raise InvalidInput(
                f"file: mask shape {list(mask.shape)} does not match the volume {list(session.shape)}", field="file"
            )
        m = np.ascontiguousarray(mask)
        digest = hashlib.sha256(m.astype(np.uint8, copy=False).tobytes()).hexdigest()

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            change = self.predictor.set_mask(session.state, object_id, m)
            on_change(change)
            return [change]

        args = {"sha256": digest, "voxels": int(np.count_nonzero(m))}
        return await self._prompt(session, "mask", object_id, args, run, creates=True, key=key,
                                  before=lambda: self._persist_mask(session, m))

    async def undo(self, session: Session, object_id: int, *, key: str | None = None) -> PromptOutcome:
        """Put the object back as it was before its last prompt."""

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            change = self.predictor.undo(session.state, object_id)
            on_change(change)
            return [change]

        return await self._prompt(session, "undo", object_id, {}, run, creates=False, needs_undo=True, key=key)

    async def reset(self, session: Session, object_id: int, *, key: str | None = None) -> PromptOutcome:
        """Empty the object (undoable)."""

        def run(on_change: Callable[[Change], None]) -> list[Change]:
            change = self.predictor.reset(session.state, object_id)
            on_change(change)
            return [change]

        return await self._prompt(session, "reset", object_id, {}, run, creates=False, key=key)

    async def remove_object(self, session: Session, object_id: int, *, key: str | None = None) -> int:
        """Clear and forget the object (not undoable); subscribers get a ``removed`` message. Returns the
        object's final version (a later prompt on the same id starts a new object at version 1).

        ``key``: the client's idempotency key; a retry with it returns the recorded version, even once the
        object is gone (a resent DELETE must not answer 404 for the removal it made)."""
        fingerprint = request_fingerprint("remove", object_id, {})

        async def body() -> int:
            if (reply := recorded_reply(session.replies, key, fingerprint)) is not None:
                session.last_used_mono = self._clock()
                return int(reply["version"])
            self._require_object(session, object_id)
            session.refinements.drop(object_id)
            change = await self.executor.run(self.predictor.remove_object, session.state, object_id)
            session.nbytes = session.state.nbytes
            reply = {"object_id": object_id, "version": change.version} if key is not None else None
            prompt = PromptRecord(op="remove", object_id=object_id, version=change.version, at=time.time(),
                                  key=key, reply=reply)
            await self._commit(session, prompt)
            if key is not None:
                session.replies[key] = RecordedReply(fingerprint, reply)  # type: ignore[arg-type]
            session.versions.pop(object_id, None)
            session.change_order.pop(object_id, None)
            session.last_used_mono = self._clock()
            self.metrics.prompts.labels(op="remove").inc()
            session.broadcast(ObjectRemoved(object_id=object_id, version=change.version).model_dump_json())
            return change.version

        return await self._mutating(session, body)

    # --- reading --------------------------------------------------------------------------------------------

    async def get_mask(self, session: Session, object_id: int) -> tuple[np.ndarray, int]:
        """The object's (D, H, W) uint8 mask and the version it corresponds to."""

        async def body() -> tuple[np.ndarray, int]:
            self._require_object(session, object_id)
            mask = await self.executor.run(self.predictor.get_mask, session.state, object_id)
            return mask, session.versions.get(object_id, 0)

        return await self._locked(session, body)

    async def segmentation(self, session: Session, overlap: OverlapRule = "confidence",
                           object_ids: Sequence[int] | None = None) -> tuple[np.ndarray, dict[int, int]]:
        """All objects (or those of ``object_ids`` that exist) as one (D, H, W) label map (value = object id)
        and the versions it shows.

        Overlaps (``app.models.label_map``): ``"confidence"``, the object with the highest logit wins, ties to
        the most recently changed; ``"recent"``, the most recently changed object wins.
        dtype uint8 when every id fits, else uint16.
        """

        async def body() -> tuple[np.ndarray, dict[int, int]]:
            shown = session.state.objects if object_ids is None else set(object_ids) & set(session.state.objects)
            order = sorted(shown, key=lambda oid: session.change_order.get(oid, 0))
            labels = await self.executor.run(self.predictor.get_label_map, session.state, order, overlap)
            return labels, {oid: session.versions.get(oid, 0) for oid in order}

        return await self._locked(session, body)

    async def object_summaries(self, session: Session) -> list[tuple[int, int, int, Bbox | None]]:
        """(object id, version, foreground voxels, inclusive bbox) of every object."""

        async def body() -> list[tuple[int, int, int, Bbox | None]]:
            def summarise() -> list[tuple[int, int, int, Bbox | None]]:
                out = []
                for oid in sorted(session.state.objects):
                    mask = self.predictor.get_mask(session.state, oid)
                    out.append((oid, session.versions.get(oid, 0), int(np.count_nonzero(mask)), mask_bbox(mask)))
                return out

            return await self.executor.run(summarise)

        return await self._locked(session, body)

    # --- stream ---------------------------------------------------------------------------------------------

    async def subscribe(self, session: Session) -> tuple[Subscriber, dict[int, int]]:
        """Register a stream subscriber; returns it with the object versions it starts from.

        Taken under the session lock, so every frame the subscriber receives has a higher version than
        the returned ones (no step is half-published at that moment).
        """

        async def body() -> tuple[Subscriber, dict[int, int]]:
            if len(session.subscribers) >= self.limits.max_subscribers:
                raise CapacityExceeded(
                    f"stream: session already has {len(session.subscribers)} subscribers",
                    retry_after_s=self.limits.retry_after_s,
                )
            sub = Subscriber(self.limits.stream_queue_frames,
                             overflow_close=Close(CLOSE_TOO_SLOW, "client too slow: reconnect and resync"))
            session.subscribers.add(sub)
            return sub, dict(session.versions)

        return await self._locked(session, body)

    def unsubscribe(self, session: Session, sub: Subscriber) -> None:
        session.subscribers.discard(sub)

    async def snapshot(self, session: Session, subscriber: Subscriber, object_id: int | None) -> list[int]:
        """Queue snapshot frames (of one object, or of all when None) to ``subscriber``; return their ids.

        Built and queued under the session lock, so the snapshot sits in the subscriber's outbox exactly
        between the frames before it and the frames after it.
        """

        async def body() -> list[int]:
            if object_id is not None:
                self._require_object(session, object_id)
            ids = [object_id] if object_id is not None else sorted(session.state.objects)

            def build() -> list[bytes]:
                return [
                    encode_snapshot(self.predictor.get_mask(session.state, oid), object_id=oid,
                                    version=session.versions.get(oid, 0))
                    for oid in ids
                ]

            frames = await self.executor.run(build)
            for frame in frames:
                subscriber.push(frame)
                self.metrics.stream_frames.labels(kind="snapshot").inc()
                self.metrics.stream_frame_bytes.inc(len(frame))
            return ids

        return await self._locked(session, body)

    # --- internals ------------------------------------------------------------------------------------------

    async def _prompt(
        self,
        session: Session,
        op: str,
        object_id: int,
        args: dict[str, Any],
        run: Callable[[Callable[[Change], None]], list[Change]],
        *,
        creates: bool,
        needs_undo: bool = False,
        before: Callable[[], Awaitable[None]] | None = None,
        key: str | None = None,
        lane: Literal["bulk", "instant"] = "bulk",
        after_commit: Callable[[PromptOutcome, list[Change], str, float], None] | None = None,
    ) -> PromptOutcome:
        """Run one mutating prompt: session lock -> device work -> history append -> frames -> outcome.

        ``before`` runs under the session lock once the prompt was admitted, before any state changes (what
        the replay of this prompt needs on disk is written there). ``key``: the client's idempotency key; a
        key already in the history returns the reply recorded with it, with no device work and no new version
        (checked under the session lock, so two concurrent retries apply the prompt once). ``lane``: the
        executor lane of the device work (``instant``: GRU steps only). ``after_commit(outcome, changes,
        fingerprint, started)`` runs under the session lock once the prompt is recorded; only a deferred
        ``both`` click passes one, and any other prompt drops its object's pending refinement."""
        started = time.perf_counter()
        fingerprint = request_fingerprint(op, object_id, args)
        # Frames wait here until the prompt is in the history: a client must never see a version that a store
        # failure, a lost ownership or a crash before the commit would take back (a restore replays only
        # what the history holds, and mirrors take a frame they already hold for a duplicate).
        ready: list[tuple[Change, bytes | None]] = []

        def on_change(change: Change) -> None:  # device thread: version bookkeeping + frame encoding
            base = session.versions.get(change.object_id, 0)
            session.versions[change.object_id] = change.version
            frame = encode_change(change, shape=session.shape, base_version=base) if session.subscribers else None
            ready.append((change, frame))

        def device_work() -> tuple[list[Change], int]:
            changes = run(on_change)
            return changes, session.state.nbytes

        async def body() -> PromptOutcome:
            if (reply := recorded_reply(session.replies, key, fingerprint)) is not None:
                session.last_used_mono = self._clock()
                return PromptOutcome.from_json(reply)
            if object_id in session.state.objects:
                if needs_undo and not session.state.objects[object_id].undo_stack:
                    raise NothingToUndo(f"object_id: nothing to undo for object {object_id}", field="object_id")
            elif creates:
                self._check_room_for_object()
            else:
                raise ObjectNotFound(f"object_id: no object {object_id} in this session", field="object_id")
            if before is not None:
                await before()
            if after_commit is None:
                session.refinements.drop(object_id)
            device = self.executor.run_instant if lane == "instant" else self.executor.run
            try:
                changes, nbytes = await device(device_work)
            except ValueError as e:  # the predictor validates before touching the state
                raise _invalid_input(e) from e
            except KeyError as e:  # UnknownObjectError, also raised before any change
                raise ObjectNotFound(str(e), field="object_id") from e
            except Exception:
                # A failure inside a step may leave the state ahead of its history: end the session.
                log.exception("session %s: %s failed on the device; closing the session", session.session_id, op)
                await self._end_locked(session, "error")
                raise
            session.nbytes = nbytes
            changed, bbox = net_change(changes, session.shape)
            timings = {f"{c.step}.{k}": v for c in changes for k, v in c.timings_ms.items()}
            # "total" ends before the history append: the reply is recorded with the prompt, and a resend of the
            # prompt gets exactly the reply the first send got.
            timings["total"] = (time.perf_counter() - started) * 1e3
            steps = [StepOutcome(c.step, c.version, c.count, c.bbox, dict(c.timings_ms)) for c in changes]
            outcome = PromptOutcome(object_id, changes[-1].version, changed, bbox, steps, timings)
            prompt = PromptRecord(op=op, object_id=object_id, args=args, version=changes[-1].version,
                                  at=time.time(), key=key, reply=outcome.to_json() if key is not None else None)
            await self._commit(session, prompt)
            if key is not None:
                session.replies[key] = RecordedReply(fingerprint, prompt.reply)  # type: ignore[arg-type]
            for change, frame in ready:  # recorded: the steps' frames may leave now, in the order they ran
                self._published(session, change, frame)
            session.last_used_mono = self._clock()
            session.change_order[object_id] = next(self._change_seq)
            self.metrics.prompts.labels(op=op).inc()
            if after_commit is not None:
                after_commit(outcome, changes, fingerprint, started)
            return outcome

        return await self._mutating(session, body)

    async def _mutating(self, session: Session, body: Callable[[], Awaitable[T]]) -> T:
        """Run a mutating request's ``body`` under the session lock as its own task shielded from cancellation
        (a disconnecting client must not interrupt a prompt between the device and the store). While it waits,
        the session's deferred refinement stays off the device (``PendingRefinements.arriving``)."""
        pending = session.refinements
        pending.arriving()

        async def run() -> T:
            try:
                return await self._locked(session, body)
            finally:
                pending.started()
                if not session.closed:
                    pending.schedule(lambda: self._refine(session))

        return await asyncio.shield(asyncio.ensure_future(run()))

    async def _refine(self, session: Session) -> None:
        """The session's refinement task: refine the due objects once no prompt of the session is arriving."""
        pending = session.refinements
        try:
            while pending.may_start() and not session.closed:
                await self._locked(session, lambda: self._refine_locked(session))
        except ServiceError:  # the session ended meanwhile (its waiters were answered by _end_locked)
            pending.drop_all()
        finally:
            pending.task = None
        if not session.closed:
            pending.schedule(lambda: self._refine(session))

    async def _refine_locked(self, session: Session) -> None:
        """One refinement of every due object (session lock held): bulk lane, withdrawn if a prompt of the
        session arrives first; each object's step recorded as a ``refine`` entry carrying the complete replies
        of the clicks it covers, then streamed; the clicks' replies resolved."""
        pending = session.refinements
        pending.give_up.clear()
        if not pending.may_start():
            return
        ready: list[tuple[Change, bytes | None]] = []

        def device_work() -> int:
            for oid in list(pending.due):
                if oid in session.state.objects:
                    change = self.predictor.refine(session.state, oid)
                    base = session.versions.get(oid, 0)
                    session.versions[oid] = change.version
                    frame = encode_change(change, shape=session.shape, base_version=base) if session.subscribers \
                        else None
                    ready.append((change, frame))
            return session.state.nbytes

        try:
            session.nbytes = await self.executor.run_unless(pending.give_up, device_work)
        except GaveUp:
            return
        except Exception:
            log.exception("session %s: refinement failed on the device; closing the session", session.session_id)
            await self._end_locked(session, "error")
            return
        due = pending.take()
        for change, frame in ready:
            waiters = due.pop(change.object_id, [])
            outcomes = {id(w): self._refined(session, w, change) for w in waiters}
            completes = {w.key: outcomes[id(w)].to_json() for w in waiters if w.key is not None}
            prompt = PromptRecord(op="refine", object_id=change.object_id, version=change.version, at=time.time(),
                                  reply={"completes": completes} if completes else None)
            try:
                await self._commit(session, prompt)
            except ServiceError:
                finish(waiters, None)
                for rest in due.values():
                    finish(rest, None)
                return
            for w in waiters:
                if w.key is not None:
                    session.replies[w.key] = RecordedReply(w.fingerprint, completes[w.key])
            self._published(session, change, frame)
            session.change_order[change.object_id] = next(self._change_seq)
            self.metrics.prompts.labels(op="refine").inc()
            for w in waiters:
                finish([w], outcomes[id(w)])
        for rest in due.values():  # objects removed meanwhile
            finish(rest, None)

    def _refined(self, session: Session, waiter: Waiter[PromptOutcome], change: Change) -> PromptOutcome:
        """A ``both`` click's complete reply: its GRU step and the refinement that covered it."""
        gru = waiter.gru
        changed, bbox = net_change([*waiter.steps, change], session.shape)
        step = StepOutcome(change.step, change.version, change.count, change.bbox, dict(change.timings_ms))
        timings = {k: v for k, v in gru.timings_ms.items() if k != "total"}
        timings.update({f"{change.step}.{k}": v for k, v in change.timings_ms.items()})
        timings["total"] = (time.perf_counter() - waiter.started) * 1e3
        return PromptOutcome(gru.object_id, change.version, changed, bbox, [*gru.steps, step], timings)

    async def _commit(self, session: Session, prompt: PromptRecord) -> None:
        """Append an applied prompt to the history (session lock held); on failure the session's device state
        is ahead of its history, so this process drops it: closed on a store failure (``StoreUnavailable``,
        ``SessionRecordLost``), handed over when another replica owns it now (``SessionMoved``)."""
        try:
            if self.replica_id is None:
                await self.store.commit_prompt(session.session_id, prompt)
            else:
                await self.store.commit_prompt(session.session_id, prompt, owner=self.replica_id)
        except OwnershipLost as e:
            log.warning("session %s: another replica owns it now; prompt not recorded, dropping this copy",
                        session.session_id)
            await self._end_locked(session, "moved")
            raise SessionMoved(f"session_id: session {session.session_id} moved to another replica; nothing was "
                               "recorded, retry the request", retry_after_s=1) from e
        except StoreUnavailable:
            log.error("session %s: prompt not recorded; closing the session", session.session_id)
            await self._end_locked(session, "store")
            raise

    def ended_reason(self, session_id: str) -> str | None:
        """Why this process stopped serving ``session_id`` (its tombstone's reason), or None."""
        tomb = self._tombstones.get(session_id)
        return None if tomb is None else tomb.reason

    def held(self, session_id: str) -> Session | None:
        """The live session ``session_id`` of this process, or None (no checks, no clock reset)."""
        return self._sessions.get(session_id)

    def forget_ended(self, session_id: str) -> None:
        """Forget a tombstone (a session another replica served meanwhile may be taken over again)."""
        tomb = self._tombstones.pop(session_id, None)
        if tomb is not None and self._owners.get(tomb.token_hash) == session_id:
            del self._owners[tomb.token_hash]

    async def drop_moved(self, session: Session) -> None:
        """Let go of a session another replica owns now: streams closed with 1001 (reconnect), device memory
        freed; its store record, history and files stay (they are the new owner's)."""
        await self._end(session, "moved")

    def _published(self, session: Session, change: Change, frame: bytes | None) -> None:
        """A recorded step: metrics, and its frame to every subscriber (event loop thread)."""
        self.metrics.observe_timings(change.step, change.timings_ms)
        if frame is not None and not session.closed:
            session.broadcast(frame)
            n = len(session.subscribers)
            self.metrics.stream_frames.labels(kind="diff").inc(n)
            self.metrics.stream_frame_bytes.inc(n * len(frame))

    async def _locked(self, session: Session, body: Callable[[], Awaitable[T]]) -> T:
        async with session.lock:
            if session.closed:
                tomb = self._tombstones.get(session.session_id)
                if tomb is None and self.replica_id is not None:  # dropped while this request waited
                    raise SessionMoved(f"session_id: session {session.session_id} moved to another replica; "
                                       "retry the request")
                self._raise_ended(session.session_id, tomb or _Tombstone("", "deleted"))
            return await body()

    def _require_object(self, session: Session, object_id: int) -> None:
        if object_id not in session.state.objects:
            raise ObjectNotFound(f"object_id: no object {object_id} in this session", field="object_id")

    def check_room_for_session(self) -> None:
        """Raise ``CapacityExceeded`` now if a new session could not be admitted (cheap; call before
        reading an upload)."""
        self._check_room_for_session()

    def _check_room_for_session(self) -> None:
        if len(self._sessions) + self._creating >= self.limits.max_sessions:
            self.metrics.capacity_rejections.labels(limit="sessions").inc()
            raise CapacityExceeded(
                f"capacity: {self.limits.max_sessions} sessions are open; retry later",
                retry_after_s=self.limits.retry_after_s,
            )
        self.admission.check(self.limits.retry_after_s,
                             lambda limit: self.metrics.capacity_rejections.labels(limit=limit).inc())
        self._check_room_for_object()

    def _check_room_for_object(self) -> None:
        limit = self.limits.max_device_bytes
        if limit is not None and self.device_bytes() >= limit:
            self.metrics.capacity_rejections.labels(limit="device_bytes").inc()
            raise CapacityExceeded(
                f"capacity: sessions hold {self.device_bytes()} of {limit} device bytes; retry later",
                retry_after_s=self.limits.retry_after_s,
            )

    def _overdue(self, session: Session) -> str | None:
        now = self._clock()
        if now - session.created_mono > self.limits.max_session_age_s:
            return "max_age"
        if now - session.last_used_mono > self.limits.idle_timeout_s:
            return "idle"
        return None

    def _check_alive(self, session: Session) -> None:
        reason = self._overdue(session)
        if reason is not None:
            self._forget(session, reason)
            asyncio.get_running_loop().create_task(self._end(session, reason))
            raise SessionExpired(f"session_id: session {session.session_id} expired ({reason})",
                                 field="session_id")

    def _raise_ended(self, session_id: str, tomb: _Tombstone) -> None:
        if tomb.reason == "deleted":
            raise SessionNotFound(f"session_id: session {session_id} was deleted", field="session_id")
        if tomb.reason == "restore_failed":
            raise SessionExpired(f"session_id: session {session_id} could not be restored after a server "
                                 f"restart: {tomb.detail}", field="session_id")
        raise SessionExpired(f"session_id: session {session_id} expired ({tomb.reason})", field="session_id")

    def _forget(self, session: Session, reason: str) -> None:
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
        self._add_tombstone(sid, _Tombstone(session.record.token_hash, reason))

    def _add_tombstone(self, sid: str, tomb: _Tombstone) -> None:
        if self.limits.tombstones <= 0:
            self._owners.pop(tomb.token_hash, None)
            return
        self._tombstones[sid] = tomb
        while len(self._tombstones) > self.limits.tombstones:
            old_sid, old = self._tombstones.popitem(last=False)
            if self._owners.get(old.token_hash) == old_sid:
                del self._owners[old.token_hash]

    async def _end(self, session: Session, reason: str) -> None:
        self._forget(session, reason)
        session.refinements.give_up.set()  # a refinement waiting for the device makes way (it would be dropped)
        async with session.lock:  # wait for the request in flight, if any
            await self._end_locked(session, reason)

    async def _end_locked(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        self._forget(session, reason)
        session.closed = True
        code = CLOSE_GOING_AWAY if reason in ("shutdown", "moved") else CLOSE_SESSION_ENDED
        text = "session moved to another replica; reconnect" if reason == "moved" else f"session {reason}"
        for sub in list(session.subscribers):
            sub.close(Close(code, text))
        session.subscribers.clear()
        session.refinements.drop_all()
        session.state = None  # type: ignore[assignment]  # frees the device tensors
        session.nbytes = 0
        # glibc keeps freed memory in fragmented arenas: without this, RSS ratchets up as sessions come and go.
        await asyncio.to_thread(release_free_memory)
        if reason == "moved":
            return  # the record, history and files are the new owner's
        if reason == "shutdown" and self.persistence is not None and self.persistence.keep_on_shutdown:
            return  # its record, history and files stay: the next process restores it
        try:
            await self.store.delete_session(session.session_id)
        except StoreUnavailable:
            log.warning("session %s: could not delete its store record", session.session_id)
            if reason == "store":
                # Closed by a store outage: its record and acknowledged history are still in the store, so keep
                # its files with them; the next startup restores it (or sweeps the files once the record expired).
                return
        await self._delete_files(session.session_id)

    # --- persistence ----------------------------------------------------------------------------------------

    def _require_persistence(self) -> Persistence:
        if self.persistence is None:
            raise RuntimeError("restore: this manager has no storage (Settings.storage_dir)")
        return self.persistence

    async def _persist_volume(self, record: SessionRecord, volume: np.ndarray, exclusive_objects: bool, *,
                              exclusive: bool = False) -> None:
        if self.persistence is None:
            return
        meta = VolumeMeta(spacing=record.spacing, origin=record.origin, direction=record.direction,
                          seed=self.limits.seed, model=self.persistence.model, exclusive_objects=exclusive_objects)
        try:
            await asyncio.to_thread(self.persistence.storage.save_volume, record.session_id, volume, meta,
                                    exclusive=exclusive)
        except FileExistsError as e:  # a chosen id whose folder exists: never touch another session's files
            raise InvalidInput(f"session_id: session id {record.session_id!r} is taken",
                               field="session_id") from e
        except OSError as e:
            log.error("session %s: cannot write its volume to storage: %s", record.session_id, e)
            await self._delete_files(record.session_id)
            raise StoreUnavailable(f"store: cannot write the volume to storage: {e}") from e

    async def _persist_mask(self, session: Session, mask: np.ndarray) -> None:
        if self.persistence is None:
            return
        try:
            await asyncio.to_thread(self.persistence.storage.save_mask, session.session_id, mask)
        except OSError as e:
            log.error("session %s: cannot write a mask to storage: %s", session.session_id, e)
            raise StoreUnavailable(f"store: cannot write the mask to storage: {e}") from e

    async def _delete_files(self, session_id: str) -> None:
        if self.persistence is not None:
            await asyncio.to_thread(self.persistence.storage.delete, session_id)


def _invalid_input(e: ValueError) -> InvalidInput:
    from app.schemas.errors import field_from_message

    message = str(e)
    return InvalidInput(message, field=field_from_message(message))
