"""Runs the deferred decoder refinement of a session's ``both`` clicks (the bookkeeping: ``refinement.py``).

One task per session at a time (``PendingRefinements.schedule``). It waits for the session lock, then for the
executor's bulk lane as background work (after every prompt waiting there), and withdraws from that wait when a prompt of the same session arrives (that prompt
runs first; the refinement starts again after it, from the latest state). When its turn comes it refines
every due object once (``Predictor.refine``) and, per object, records a ``refine`` history entry that carries
the complete replies of the keyed clicks it covered, then streams the decoder frame and answers the clicks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.errors import ServiceError
from app.sessions.changes import net_change
from app.sessions.diffs import encode_change
from app.sessions.executor import DeviceExecutor, GaveUp
from app.sessions.idempotency import RecordedReply
from app.sessions.lifecycle import SessionLifecycle
from app.sessions.metrics import ServiceMetrics
from app.sessions.outcomes import PromptOutcome, StepOutcome
from app.sessions.refinement import Waiter, finish
from app.sessions.registry import SessionRegistry
from app.sessions.session import Session
from app.sessions.store import PromptRecord
from app.sessions.stream import ChangeStream

if TYPE_CHECKING:
    from app.models.predictor import Predictor
    from app.models.state import Change

log = logging.getLogger(__name__)


class Refiner:
    """Refines, records and publishes the due objects of a session. Event loop thread only.

    ``commit``: the pipeline's history append (closes or hands over the session when it fails).
    """

    def __init__(self, predictor: Predictor, executor: DeviceExecutor, registry: SessionRegistry,
                 lifecycle: SessionLifecycle, stream: ChangeStream, metrics: ServiceMetrics,
                 commit: Callable[[Session, PromptRecord], Awaitable[None]]) -> None:
        self.predictor = predictor
        self.executor = executor
        self.registry = registry
        self.lifecycle = lifecycle
        self.stream = stream
        self.metrics = metrics
        self.commit = commit

    def schedule(self, session: Session) -> None:
        """Start the session's refinement task if something is due and no prompt of it is arriving."""
        if not session.closed:
            session.refinements.schedule(lambda: self._run(session))

    async def _run(self, session: Session) -> None:
        pending = session.refinements
        try:
            while pending.may_start() and not session.closed:
                await self.registry.locked(session, lambda: self._refine_locked(session))
        except ServiceError:  # the session ended meanwhile (its waiters were answered when it ended)
            pending.drop_all()
        finally:
            pending.task = None
        self.schedule(session)

    async def _refine_locked(self, session: Session) -> None:
        pending = session.refinements
        pending.give_up.clear()
        if not pending.may_start():
            return
        ready: list[tuple[Change, bytes | None]] = []

        def device_work() -> int:  # device thread: one decoder step per due object, frames encoded
            for oid in list(pending.due):
                if oid in session.state.objects:
                    change = self.predictor.refine(session.state, oid)
                    base = session.versions.get(oid, 0)
                    session.versions[oid] = change.version
                    frame = (encode_change(change, shape=session.shape, base_version=base)
                             if session.subscribers else None)
                    ready.append((change, frame))
            return session.state.nbytes

        try:
            session.nbytes = await self.executor.run_unless(pending.give_up, device_work)
        except GaveUp:
            pending.withdrew()
            return
        except Exception:
            # A failure inside a step may leave the state ahead of its history: end the session.
            log.exception("session %s: refinement failed on the device; closing the session", session.session_id)
            await self.lifecycle.end_locked(session, "error")
            return
        pending.refined()
        due = pending.take()
        waiters: list[Waiter[PromptOutcome]] = []
        try:
            for change, frame in ready:
                waiters = due.pop(change.object_id, [])
                outcomes = [self._complete(session, w, change) for w in waiters]
                completes = {w.key: o.to_json() for w, o in zip(waiters, outcomes, strict=True) if w.key is not None}
                await self.commit(session, PromptRecord(op="refine", object_id=change.object_id,
                                                        version=change.version, at=time.time(),
                                                        reply={"completes": completes} if completes else None))
                for w in waiters:
                    if w.key is not None:
                        session.replies[w.key] = RecordedReply(w.fingerprint, completes[w.key])
                self.stream.publish(session, change, frame)  # recorded: the decoder frame may leave now
                self.registry.stamp_change(session, change.object_id)
                self.metrics.prompts.labels(op="refine").inc()
                for w, outcome in zip(waiters, outcomes, strict=True):
                    finish([w], outcome)
        except ServiceError:  # the commit failed: the session was closed or handed over
            finish(waiters, None)
        for waiters in due.values():  # not refined (object removed, or the commit failed): their GRU step
            finish(waiters, None)

    def _complete(self, session: Session, waiter: Waiter[PromptOutcome], change: Change) -> PromptOutcome:
        """A ``both`` click's complete reply: its GRU step and the refinement that covered it."""
        gru = waiter.gru
        changed, bbox = net_change([*waiter.steps, change], session.shape)
        step = StepOutcome(change.step, change.version, change.count, change.bbox, dict(change.timings_ms))
        timings = {k: v for k, v in gru.timings_ms.items() if k != "total"}
        timings.update({f"{change.step}.{k}": v for k, v in change.timings_ms.items()})
        timings["total"] = (time.perf_counter() - waiter.started) * 1e3
        return PromptOutcome(gru.object_id, change.version, changed, bbox, [*gru.steps, step], timings)
