"""The session manager: one facade over the session services of a process, so that routes stay simple.

    manager = SessionManager(predictor, store, DeviceExecutor(), SessionLimits(...))
    session, token = await manager.create(volume, geometry, modality="CT")
    session = manager.authenticate(session_id, token)       # 401 / 404 / 410 as domain errors
    outcome = await manager.add_clicks(session, 1, [(z, y, x)], [1], mode="gru")

Each concern lives in its own module; this class only builds them and forwards narrow calls:

    registry.py    SessionRegistry    which sessions are served: tokens, idle/liveness clocks, tombstones, capacity
    lifecycle.py   SessionLifecycle   create a session from a volume; every way a session ends
    pipeline.py    PromptPipeline     one prompt: session lock -> device -> history append -> frames -> outcome
    stream.py      ChangeStream       subscribers, snapshots, publishing recorded steps
    reads.py       SessionReads       masks, label maps, summaries, the stored record
    restore.py     SessionRestorer    rebuild stored sessions (startup, replica take-over)
    files.py       SessionFiles       volume and mask files written before the reply

The concurrency policy (**lock order: session lock, then device lock**) and the acknowledgement rule (the
history append before the reply and before any frame) are described in ``app.sessions.pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from app.models.label_map import OverlapRule
from app.sessions.admission import Admission
from app.sessions.changes import Bbox
from app.sessions.executor import DeviceExecutor
from app.sessions.files import SessionFiles
from app.sessions.lifecycle import SessionLifecycle
from app.sessions.metrics import ServiceMetrics
from app.sessions.outcomes import PromptOutcome
from app.sessions.persistence import Persistence
from app.sessions.pipeline import PromptPipeline
from app.sessions.reads import SessionReads
from app.sessions.registry import SessionRegistry
from app.sessions.restore import RestoreSummary, SessionRestorer
from app.sessions.session import Geometry, Session, SessionLimits
from app.sessions.store import MetadataStore, PromptRecord, SessionRecord
from app.sessions.stream import ChangeStream
from app.sessions.subscribers import Subscriber

if TYPE_CHECKING:
    from app.models import Predictor


class SessionManager:
    """Owns every live session of this process. Use from the event loop thread only.

    ``persistence``: durable volumes and masks (``Settings.storage_dir``), None for none.
    ``replica_id``: with several replicas (``app.sessions.replicas``), prompts are recorded only while this
    replica owns the session in the store's directory.
    """

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
        self.metrics = metrics or ServiceMetrics()
        self.files = SessionFiles(persistence, self.limits.seed)
        # The registry hands sessions found expired on access to the lifecycle, built right after it.
        self.registry = SessionRegistry(self.limits, self.metrics, clock, self._end_later, replica_id,
                                        Admission(executor, self.limits.admission))
        self.lifecycle = SessionLifecycle(predictor, store, executor, self.registry, self.files, self.metrics)
        self.stream = ChangeStream(predictor, executor, self.registry, self.metrics)
        self.prompts = PromptPipeline(predictor, store, executor, self.registry, self.lifecycle, self.stream,
                                      self.files, self.metrics)
        self.reads = SessionReads(predictor, store, executor, self.registry)
        self.restorer = SessionRestorer(predictor, store, executor, self.registry, self.files)

    def _end_later(self, session: Session, reason: str) -> None:
        self.lifecycle.end_later(session, reason)

    @property
    def persistence(self) -> Persistence | None:
        return self.files.persistence

    @property
    def replica_id(self) -> str | None:
        return self.registry.replica_id

    @replica_id.setter
    def replica_id(self, value: str | None) -> None:
        self.registry.replica_id = value

    # --- registry -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.registry)

    def session_ids(self) -> list[str]:
        return self.registry.session_ids()

    def device_bytes(self) -> int:
        return self.registry.device_bytes()

    def authenticate(self, session_id: str, token: str | None) -> Session:
        return self.registry.authenticate(session_id, token)

    def get(self, session_id: str) -> Session:
        return self.registry.get(session_id)

    def held(self, session_id: str) -> Session | None:
        return self.registry.held(session_id)

    def mark_used(self, session: Session) -> None:
        self.registry.mark_used(session)

    def expires_in_s(self, session: Session) -> float:
        return self.registry.expires_in_s(session)

    def check_room_for_session(self, *, by_load: bool = True) -> None:
        self.registry.check_room_for_session(by_load=by_load)

    def refuse_restored(self, record: SessionRecord, reason: str, *, detail: str = "") -> None:
        self.registry.refuse_restored(record, reason, detail=detail)

    def ended_reason(self, session_id: str) -> str | None:
        return self.registry.ended_reason(session_id)

    def forget_ended(self, session_id: str) -> None:
        self.registry.forget_ended(session_id)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def create(self, volume: np.ndarray, geometry: Geometry, *, modality: str | None = None,
                     source_format: str | None = None, session_id: str | None = None,
                     exclusive_objects: bool | None = None) -> tuple[Session, str]:
        return await self.lifecycle.create(volume, geometry, modality=modality, source_format=source_format,
                                           session_id=session_id, exclusive_objects=exclusive_objects)

    async def touch(self, session: Session) -> None:
        await self.lifecycle.touch(session)

    async def close(self, session: Session) -> None:
        await self.lifecycle.close(session)

    async def expire_due(self) -> list[str]:
        return await self.lifecycle.expire_due()

    async def shutdown(self) -> None:
        await self.lifecycle.shutdown()

    async def drop_moved(self, session: Session) -> None:
        await self.lifecycle.drop_moved(session)

    # --- restore --------------------------------------------------------------------------------------------

    async def restore(self, record: SessionRecord, history: Sequence[PromptRecord],
                      stored_versions: dict[int, int] | None = None) -> Session:
        return await self.restorer.restore(record, history, stored_versions)

    async def restore_sessions(self) -> RestoreSummary:
        return await self.restorer.restore_sessions()

    # --- prompts --------------------------------------------------------------------------------------------

    async def add_box(self, session: Session, object_id: int, box: Sequence[int], *, key: str | None = None
                      ) -> PromptOutcome:
        return await self.prompts.add_box(session, object_id, box, key=key)

    async def add_text(self, session: Session, object_id: int, text: str, box: Sequence[int] | None = None,
                       points: Sequence[Sequence[int]] | None = None, labels: Sequence[int] | None = None,
                       *, key: str | None = None) -> PromptOutcome:
        return await self.prompts.add_text(session, object_id, text, box, points, labels, key=key)

    async def add_clicks(self, session: Session, object_id: int, points: Sequence[Sequence[int]],
                         labels: Sequence[int], mode: str = "both", *, key: str | None = None) -> PromptOutcome:
        return await self.prompts.add_clicks(session, object_id, points, labels, mode, key=key)

    async def add_region(self, session: Session, object_id: int, region: np.ndarray, label: int,
                         mode: str = "both", *, key: str | None = None) -> PromptOutcome:
        return await self.prompts.add_region(session, object_id, region, label, mode, key=key)

    async def set_mask(self, session: Session, object_id: int, mask: np.ndarray, *, key: str | None = None
                       ) -> PromptOutcome:
        return await self.prompts.set_mask(session, object_id, mask, key=key)

    async def undo(self, session: Session, object_id: int, *, key: str | None = None) -> PromptOutcome:
        return await self.prompts.undo(session, object_id, key=key)

    async def reset(self, session: Session, object_id: int, *, key: str | None = None) -> PromptOutcome:
        return await self.prompts.reset(session, object_id, key=key)

    async def remove_object(self, session: Session, object_id: int, *, key: str | None = None) -> int:
        return await self.prompts.remove_object(session, object_id, key=key)

    # --- reading --------------------------------------------------------------------------------------------

    async def get_mask(self, session: Session, object_id: int) -> tuple[np.ndarray, int]:
        return await self.reads.get_mask(session, object_id)

    async def segmentation(self, session: Session, overlap: OverlapRule = "confidence",
                           object_ids: Sequence[int] | None = None) -> tuple[np.ndarray, dict[int, int]]:
        return await self.reads.segmentation(session, overlap, object_ids)

    async def object_summaries(self, session: Session) -> list[tuple[int, int, int, Bbox | None]]:
        return await self.reads.object_summaries(session)

    async def prompt_counts(self, session: Session) -> dict[int, int]:
        return await self.reads.prompt_counts(session)

    async def stored_record(self, session: Session) -> SessionRecord:
        return await self.reads.stored_record(session)

    # --- stream ---------------------------------------------------------------------------------------------

    async def subscribe(self, session: Session) -> tuple[Subscriber, dict[int, int]]:
        return await self.stream.subscribe(session)

    def unsubscribe(self, session: Session, sub: Subscriber) -> None:
        self.stream.unsubscribe(session, sub)

    async def snapshot(self, session: Session, subscriber: Subscriber, object_id: int | None) -> list[int]:
        return await self.stream.snapshot(session, subscriber, object_id)
