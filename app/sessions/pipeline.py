"""The prompt pipeline: one mutating prompt from its checked arguments to its acknowledged outcome.

    session lock -> admitted? (idempotency key, object exists, room) -> files it needs on disk
        -> device work (device lock, on the executor's thread) -> history append -> frames -> outcome

Concurrency: everything that reads or writes a session's model state holds its session lock for the whole
request (device work, prompt-history append, version bookkeeping), so requests on one session are applied
one at a time, in arrival order; a device lock is held only around the blocking model call: the executor's
instant lane for GRU steps, its bulk lane for everything else (``app.sessions.executor``). **Lock order:
session lock, then one device lock** (``app.sessions.locks`` refuses any other order at run time). A ``both``
click's decoder step is not part of its request: it is the session's deferred refinement
(``app.sessions.refiner``), recorded as its own history entry. Nothing awaits
the store while holding the device lock. A prompt runs as its own task shielded from cancellation: once it
reached the device, a client that disconnects cannot leave the model state ahead of the prompt history.

Acknowledgement: the prompt is appended to the store's history (with the object's new version) *before*
the reply is sent. If that append fails the session is closed (its device state would no longer match
its history) and the client gets ``StoreUnavailable``; a replica that lost the session gets ``SessionMoved``.
The stream follows the same rule: a prompt's frames are queued to the subscribers only once its history
append succeeded (``ChangeStream.publish``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from app.coordinates import check_box, check_points
from app.errors import InvalidInput, NothingToUndo, ObjectNotFound, SessionMoved, StoreUnavailable
from app.models import regions
from app.schemas.diffs import ObjectRemoved
from app.sessions.changes import net_change
from app.sessions.diffs import encode_change
from app.sessions.executor import DeviceExecutor
from app.sessions.files import SessionFiles
from app.sessions.idempotency import RecordedReply, recorded_reply, request_fingerprint
from app.sessions.lifecycle import SessionLifecycle
from app.sessions.metrics import ServiceMetrics
from app.sessions.outcomes import PromptOutcome, StepOutcome
from app.sessions.refinement import Waiter
from app.sessions.refiner import Refiner
from app.sessions.registry import SessionRegistry
from app.sessions.session import Session
from app.sessions.store import MetadataStore, OwnershipLost, PromptRecord
from app.sessions.stream import ChangeStream
from app.sessions.validation import check_region
from client.wire.vocab import REFINE_MODES

if TYPE_CHECKING:
    from app.models import Change, Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")


class PromptPipeline:
    """Applies, records and publishes the prompts of the sessions of one registry. Event loop thread only."""

    def __init__(self, predictor: Predictor, store: MetadataStore, executor: DeviceExecutor,
                 registry: SessionRegistry, lifecycle: SessionLifecycle, stream: ChangeStream,
                 files: SessionFiles, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.store = store
        self.executor = executor
        self.registry = registry
        self.lifecycle = lifecycle
        self.stream = stream
        self.files = files
        self.metrics = metrics
        self.refiner = Refiner(predictor, executor, registry, lifecycle, stream, metrics, self._commit)

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
        at once, and the decoder step is left to the session's deferred refinement (``app.sessions.refiner``,
        coalesced with later ``both`` clicks); the reply waits for that refinement and carries both steps (only
        the GRU step when a later prompt superseded the refinement or the session ended first)."""
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
        if not waiters:  # a retry answered from the record: while its refinement is pending, wait for it too
            pending = session.refinements.unresolved(key)
            if pending is None:
                return gru
            refined = await asyncio.shield(pending.future)
            return gru if refined is None else replace(refined, replayed=True)
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
                                  before=lambda: self.files.save_mask(session.session_id, m))

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
                self.registry.mark_used(session)
                return int(reply["version"])
            self.registry.require_object(session, object_id)
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
            self.registry.mark_used(session)
            self.metrics.prompts.labels(op="remove").inc()
            removed = ObjectRemoved(object_id=object_id, version=change.version)
            self.stream.publish_message(session, removed.model_dump_json())
            return change.version

        return await self._mutating(session, body)

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
                self.registry.mark_used(session)
                return PromptOutcome.from_json(reply)
            if object_id in session.state.objects:
                if needs_undo and not session.state.objects[object_id].undo_stack:
                    raise NothingToUndo(f"object_id: nothing to undo for object {object_id}", field="object_id")
            elif creates:
                self.registry.check_room_for_object()
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
                await self.lifecycle.end_locked(session, "error")
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
                self.stream.publish(session, change, frame)
            self.registry.mark_used(session)
            self.registry.stamp_change(session, object_id)
            self.metrics.prompts.labels(op=op).inc()
            if after_commit is not None:
                after_commit(outcome, changes, fingerprint, started)
            return outcome

        return await self._mutating(session, body)

    async def _mutating(self, session: Session, body: Callable[[], Awaitable[T]]) -> T:
        """Run a mutating request's ``body`` under the session lock as its own task, shielded from cancellation
        (a disconnecting client must not interrupt a prompt between the device and the store). While it waits,
        the session's deferred refinement stays off the device (``PendingRefinements.arriving``)."""
        pending = session.refinements
        pending.arriving()

        async def run() -> T:
            try:
                return await self.registry.locked(session, body)
            finally:
                pending.started()
                self.refiner.schedule(session)

        return await asyncio.shield(asyncio.ensure_future(run()))

    async def _commit(self, session: Session, prompt: PromptRecord) -> None:
        """Append an applied prompt to the history (session lock held); on failure the session's device state
        is ahead of its history, so this process drops it: closed on a store failure (``StoreUnavailable``,
        ``SessionRecordLost``), handed over when another replica owns it now (``SessionMoved``)."""
        try:
            if self.registry.replica_id is None:
                await self.store.commit_prompt(session.session_id, prompt)
            else:
                await self.store.commit_prompt(session.session_id, prompt, owner=self.registry.replica_id)
        except OwnershipLost as e:
            log.warning("session %s: another replica owns it now; prompt not recorded, dropping this copy",
                        session.session_id)
            await self.lifecycle.end_locked(session, "moved")
            raise SessionMoved(f"session_id: session {session.session_id} moved to another replica; nothing was "
                               "recorded, retry the request", retry_after_s=1) from e
        except StoreUnavailable:
            log.error("session %s: prompt not recorded; closing the session", session.session_id)
            await self.lifecycle.end_locked(session, "store")
            raise


def _invalid_input(e: ValueError) -> InvalidInput:
    from app.schemas.errors import field_from_message

    message = str(e)
    return InvalidInput(message, field=field_from_message(message))
