"""The change stream of a session: subscribers, their starting snapshot, and the frames of recorded steps.

A step's frame is encoded on the device thread (``app.sessions.pipeline``) but queued here only once its
prompt is in the history, so no subscriber ever holds a version the store never recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import CapacityExceeded
from app.schemas.paths import StreamCloseCode
from app.sessions.diffs import encode_snapshot
from app.sessions.executor import DeviceExecutor
from app.sessions.metrics import ServiceMetrics
from app.sessions.registry import SessionRegistry
from app.sessions.session import Session
from app.sessions.subscribers import Close, Subscriber

if TYPE_CHECKING:
    from app.models import Change, Predictor

class ChangeStream:
    """Subscribers of the sessions of one registry. Event loop thread only."""

    def __init__(self, predictor: Predictor, executor: DeviceExecutor, registry: SessionRegistry,
                 metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.executor = executor
        self.registry = registry
        self.metrics = metrics

    async def subscribe(self, session: Session) -> tuple[Subscriber, dict[int, int]]:
        """Register a stream subscriber; returns it with the object versions it starts from.

        Taken under the session lock, so every frame the subscriber receives has a higher version than
        the returned ones (no step is half-published at that moment).
        """
        limits = self.registry.limits

        async def body() -> tuple[Subscriber, dict[int, int]]:
            if len(session.subscribers) >= limits.max_subscribers:
                raise CapacityExceeded(
                    f"stream: session already has {len(session.subscribers)} subscribers",
                    retry_after_s=limits.retry_after_s,
                )
            sub = Subscriber(limits.stream_queue_frames,
                             overflow_close=Close(StreamCloseCode.SERVER_BUSY, "client too slow: reconnect and resync"))
            session.subscribers.add(sub)
            return sub, dict(session.versions)

        return await self.registry.locked(session, body)

    def unsubscribe(self, session: Session, sub: Subscriber) -> None:
        session.subscribers.discard(sub)

    async def snapshot(self, session: Session, subscriber: Subscriber, object_id: int | None) -> list[int]:
        """Queue snapshot frames (of one object, or of all when None) to ``subscriber``; return their ids.

        Built and queued under the session lock, so the snapshot sits in the subscriber's outbox exactly
        between the frames before it and the frames after it.
        """

        async def body() -> list[int]:
            if object_id is not None:
                self.registry.require_object(session, object_id)
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

        return await self.registry.locked(session, body)

    def publish(self, session: Session, change: Change, frame: bytes | None) -> None:
        """A recorded step: metrics, and its frame to every subscriber (event loop thread)."""
        self.metrics.observe_timings(change.step, change.timings_ms)
        if frame is not None and not session.closed:
            session.broadcast(frame)
            n = len(session.subscribers)
            self.metrics.stream_frames.labels(kind="diff").inc(n)
            self.metrics.stream_frame_bytes.inc(n * len(frame))

    def publish_message(self, session: Session, message: str) -> None:
        """A JSON message (e.g. an object's removal) to every subscriber."""
        session.broadcast(message)
