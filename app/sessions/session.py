"""One live session and the settings every session is served under (plain data, no behaviour beyond its own fields).

``Session`` is what a route holds between authenticating and replying; the services that act on it live
beside it: ``registry`` (who is served, tokens, clocks), ``lifecycle`` (create and end), ``pipeline``
(prompts), ``stream`` (subscribers), ``reads`` (masks and label maps), composed by ``manager``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.sessions.admission import AdmissionLimits
from app.sessions.idempotency import RecordedReply
from app.sessions.locks import OrderedLock
from app.sessions.outcomes import PromptOutcome
from app.sessions.refinement import PendingRefinements
from app.sessions.store import SessionRecord
from app.sessions.subscribers import Subscriber

if TYPE_CHECKING:
    from app.models import SessionState


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
    idle_trim_s: float | None = 120.0


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
        state: the predictor's device-resident state; touch only under ``lock`` and through the executor
            (the session services do; routes read what they need through the properties below).
        lock: the session lock (taken before the device lock).
        versions: object id -> version of its last step (updated on the device thread, step by step).
        change_order: object id -> sequence number of its last change (label-map overlap rule).
        nbytes: device bytes of ``state`` after the last request (cached for metrics and capacity).
        exclusive_objects: whether the objects are one label map's labels (``SessionState.exclusive_objects``),
            kept here so that it can be read without touching the device state.
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
    exclusive_objects: bool = True
    versions: dict[int, int] = field(default_factory=dict)
    change_order: dict[int, int] = field(default_factory=dict)
    subscribers: set[Subscriber] = field(default_factory=set)
    closed: bool = False
    dicom_headers: tuple[Any, ...] | None = None
    replies: dict[str, RecordedReply] = field(default_factory=dict)
    refinements: PendingRefinements[PromptOutcome] = field(default_factory=PendingRefinements)
    trimmed_idle_since: float | None = None  # last_used_mono of the idle period whose caches were dropped

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.record.shape

    def has_object(self, object_id: int) -> bool:
        """Whether the object exists now (False once the session ended and its state was freed)."""
        return self.state is not None and object_id in self.state.objects

    def object_is_blank(self, object_id: int) -> bool:
        """Whether the object has nothing yet to refine: absent, or neither a box nor logits (a first click on
        it needs a box first)."""
        obj = self.state.objects.get(object_id) if self.state is not None else None
        return obj is None or (obj.box is None and obj.logits is None)

    def broadcast(self, item: bytes | str) -> None:
        """Queue a frame or message to every subscriber (event loop thread only)."""
        for sub in list(self.subscribers):
            sub.push(item)
            if sub.closed:
                self.subscribers.discard(sub)


@dataclass(frozen=True)
class Tombstone:
    """Why this process stopped serving a session id, kept so that its token gets 410/404 rather than 401."""

    token_hash: str
    reason: str  # "idle" | "max_age" | "deleted" | "store" | "error" | "shutdown" | "restore_failed"
    detail: str = ""  # client-safe explanation (restore failures)
