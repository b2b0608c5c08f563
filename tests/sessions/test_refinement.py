"""The instant path under load: GRU steps never wait for other sessions' heavy device work, a ``both`` click's
GRU frame leaves once its own history entry is recorded (before its decoder step), and decoder refinement is
coalesced over the clicks that arrive while it waits, with every click still recorded and answered."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.sessions.diffs import decode_diff
from app.sessions.executor import DeviceExecutor
from app.sessions.idempotency import replies_from_history
from app.sessions.manager import Geometry, PromptOutcome, Session, SessionManager
from app.sessions.persistence import replay_history
from app.sessions.refinement import MAX_WITHDRAWALS
from app.sessions.subscribers import Subscriber

pytestmark = pytest.mark.anyio

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0))
BOX = [6, 20, 20, 17, 43, 43]
WAIT_S = 20.0  # generous on a busy 2-core box; a GRU step takes milliseconds


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 10, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


class HeldBulkLane:
    """Occupies the executor's bulk lane (as another session's long decoder step would) until released."""

    def __init__(self, executor: DeviceExecutor) -> None:
        self._executor = executor
        self._release = threading.Event()
        self._running = threading.Event()
        self.task: asyncio.Task[bool] | None = None

    async def __aenter__(self) -> HeldBulkLane:
        self.task = asyncio.ensure_future(self._executor.run(self._release.wait, 60))
        while not self._running.is_set():
            await asyncio.sleep(0.005)
            if self._executor.bulk.lock.locked():
                self._running.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self.task is not None
        await self.task


def _frames(sub: Subscriber) -> list:
    out = []
    while sub.pending():
        item = sub._queue.get_nowait()  # noqa: SLF001  (what the route would send, without a socket)
        if isinstance(item, bytes):
            out.append(decode_diff(item))
    return out


async def _boxed(manager: SessionManager) -> Session:
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, BOX)
    return session


async def test_a_gru_click_is_answered_while_another_sessions_device_work_runs(manager: SessionManager) -> None:
    session = await _boxed(manager)
    async with HeldBulkLane(manager.executor):
        outcome = await asyncio.wait_for(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="gru"), WAIT_S)
        assert [s.step for s in outcome.steps] == ["gru"]
        assert manager.executor.bulk.lock.locked()  # the heavy work was still running all along


async def test_a_both_clicks_gru_frame_leaves_before_its_decoder_step(manager: SessionManager) -> None:
    session = await _boxed(manager)
    sub, _ = await manager.subscribe(session)
    _frames(sub)
    async with HeldBulkLane(manager.executor):
        click = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both"))
        for _ in range(int(WAIT_S / 0.01)):
            if sub.pending():
                break
            await asyncio.sleep(0.01)
        frames = _frames(sub)
        assert [(f.step, f.version) for f in frames] == [("gru", 2)]  # streamed while the decoder cannot run
        assert not click.done()  # the reply carries both steps: it waits for the refinement
    outcome = await asyncio.wait_for(click, WAIT_S)
    assert [(s.step, s.version) for s in outcome.steps] == [("gru", 2), ("decoder", 3)]
    assert [(f.step, f.version) for f in _frames(sub)] == [("decoder", 3)]
    history = await manager.store.prompt_history(session.session_id)
    assert [(p.op, p.version) for p in history] == [("box", 1), ("clicks", 2), ("refine", 3)]


async def test_clicks_arriving_while_the_refinement_waits_are_refined_once(manager: SessionManager,
                                                                          predictor) -> None:  # noqa: ANN001
    session = await _boxed(manager)
    points = [(12, 30, 30), (8, 25, 25), (10, 28, 33)]
    async with HeldBulkLane(manager.executor):
        clicks = []
        for i, p in enumerate(points):
            clicks.append(asyncio.ensure_future(
                manager.add_clicks(session, 1, [p], [i % 2], mode="both", key=f"click-{i}")))
            while session.versions.get(1) != 2 + i:  # each GRU step is recorded while the device is busy
                await asyncio.sleep(0.01)
    outcomes = await asyncio.wait_for(asyncio.gather(*clicks), WAIT_S)
    # Three GRU steps, one decoder step (version 5), and every click's reply names it.
    assert [[(s.step, s.version) for s in o.steps] for o in outcomes] == [
        [("gru", 2), ("decoder", 5)], [("gru", 3), ("decoder", 5)], [("gru", 4), ("decoder", 5)]]
    history = await manager.store.prompt_history(session.session_id)
    assert [(p.op, p.version) for p in history] == [("box", 1), ("clicks", 2), ("clicks", 3), ("clicks", 4),
                                                   ("refine", 5)]
    # A resend of a click gets its complete reply, here and (from the refine entry) after a restart.
    again = await manager.add_clicks(session, 1, [points[0]], [0], mode="both", key="click-0")
    assert again.replayed and again.to_json() == outcomes[0].to_json()
    recorded = replies_from_history(history)["click-1"].reply
    assert PromptOutcome.from_json(recorded).to_json() == outcomes[1].to_json()
    # The history replays to the same mask (refine entries included).
    state = predictor.init_state(_volume(), GEOMETRY.spacing, seed=0, exclusive_objects=True)
    assert replay_history(predictor, state, history, lambda digest: None) == {1: 5}  # type: ignore[arg-type,return-value]
    mask, _ = await manager.get_mask(session, 1)
    np.testing.assert_array_equal(predictor.get_mask(state, 1), mask)


async def test_a_resend_while_the_refinement_waits_gets_the_complete_reply(manager: SessionManager) -> None:
    """A client whose connection dropped resends its ``both`` click while the decoder step is still queued:
    the resend is not applied again and, like the first send, answers with both steps once they ran."""
    session = await _boxed(manager)
    async with HeldBulkLane(manager.executor):
        first = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="both", key="k"))
        while session.versions.get(1) != 2:  # the GRU step is recorded; the decoder step waits for the device
            await asyncio.sleep(0.01)
        resend = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="both", key="k"))
        await asyncio.sleep(0.2)
        assert not resend.done()  # it waits for the refinement instead of answering with the GRU step alone
    original, again = await asyncio.wait_for(asyncio.gather(first, resend), WAIT_S)
    assert [(s.step, s.version) for s in again.steps] == [("gru", 2), ("decoder", 3)]
    assert again.replayed and again.to_json() == original.to_json()
    history = await manager.store.prompt_history(session.session_id)
    assert [(p.op, p.version) for p in history] == [("box", 1), ("clicks", 2), ("refine", 3)]  # applied once


async def test_a_later_undo_drops_the_pending_refinement(manager: SessionManager) -> None:
    session = await _boxed(manager)
    before, _ = await manager.get_mask(session, 1)
    async with HeldBulkLane(manager.executor):
        click = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both"))
        while session.versions.get(1) != 2:
            await asyncio.sleep(0.01)
        undo = asyncio.ensure_future(manager.undo(session, 1))
        await asyncio.sleep(0.05)
    outcome = await asyncio.wait_for(click, WAIT_S)
    await asyncio.wait_for(undo, WAIT_S)
    assert [s.step for s in outcome.steps] == ["gru"]  # the undo superseded the refinement
    history = await manager.store.prompt_history(session.session_id)
    assert [p.op for p in history] == ["box", "clicks", "undo"]
    after, _ = await manager.get_mask(session, 1)
    np.testing.assert_array_equal(after, before)


async def test_a_session_ending_answers_its_waiting_clicks(manager: SessionManager) -> None:
    session = await _boxed(manager)
    async with HeldBulkLane(manager.executor):
        click = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both"))
        while session.versions.get(1) != 2:
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(manager.close(session))
        outcome = await asyncio.wait_for(click, WAIT_S)  # answered with its recorded GRU step
        assert [s.step for s in outcome.steps] == ["gru"]
    await asyncio.wait_for(closing, WAIT_S)


async def test_a_refinement_makes_way_a_bounded_number_of_times(manager: SessionManager) -> None:
    session = await _boxed(manager)
    clicks: list[asyncio.Future] = []
    blocked_at = None
    async with HeldBulkLane(manager.executor):
        for i in range(MAX_WITHDRAWALS + 3):
            clicks.append(asyncio.ensure_future(
                manager.add_clicks(session, 1, [(12, 30 + i % 4, 30)], [i % 2], mode="both")))
            for _ in range(100):  # its GRU step is recorded while the device's bulk lane is busy ...
                if session.versions.get(1) == 2 + i:
                    break
                await asyncio.sleep(0.02)
            else:  # ... until the refinement stopped making way: this click waits behind it
                blocked_at = i
                break
            await asyncio.sleep(0.05)  # the refinement queues for the device again
        assert blocked_at is not None and blocked_at >= MAX_WITHDRAWALS
    outcomes = await asyncio.wait_for(asyncio.gather(*clicks), WAIT_S)
    assert all(o.steps[-1].step == "decoder" for o in outcomes)  # every click answered, refined


def test_a_both_click_recorded_before_deferred_refinement_still_replays(predictor) -> None:  # noqa: ANN001
    # Histories written before deferred refinement hold a "both" click as one entry at version + 2.
    from app.sessions.store import PromptRecord

    state = predictor.init_state(_volume(), GEOMETRY.spacing, seed=0, exclusive_objects=True)
    predictor.add_box(state, 1, BOX)
    changes = predictor.add_clicks(state, 1, [(12, 30, 30)], [0], mode="both")
    history = [PromptRecord(op="box", object_id=1, args={"box": BOX}, version=1),
               PromptRecord(op="clicks", object_id=1, args={"points": [[12, 30, 30]], "labels": [0], "mode": "both"},
                            version=changes[-1].version)]
    replayed = predictor.init_state(_volume(), GEOMETRY.spacing, seed=0, exclusive_objects=True)
    assert replay_history(predictor, replayed, history, lambda digest: None) == {1: 3}  # type: ignore[arg-type,return-value]
    np.testing.assert_array_equal(predictor.get_mask(replayed, 1), predictor.get_mask(state, 1))
