"""The prompt pipeline's own rules, through the session manager with the real tiny predictor: what each prompt
records (op, args, key, reply), what a resend with its idempotency key gets, the exact errors, the reply's
net change and timings, which executor lane runs which prompt, and what a removal leaves behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import numpy as np
import pytest

from app.errors import InvalidInput, NothingToUndo, ObjectNotFound
from app.models.state import Change
from app.sessions.diffs import decode_diff
from app.sessions.idempotency import replies_from_history
from app.sessions.manager import Session, SessionManager
from app.sessions.subscribers import Subscriber
from tests.sessions.test_refinement import BOX, GEOMETRY, SHAPE, WAIT_S, HeldBulkLane, _volume

pytestmark = pytest.mark.anyio


def _count_encodes(monkeypatch: pytest.MonkeyPatch, module: object, seen: Callable[[Change], object]) -> list:
    """Wrap ``module.encode_change`` so that each frame it encodes is noted (as ``seen(change)``)."""
    encoded: list = []
    encode = module.encode_change  # type: ignore[attr-defined]

    def counting(change: Change, **kwargs: object) -> bytes:
        encoded.append(seen(change))
        return encode(change, **kwargs)

    monkeypatch.setattr(module, "encode_change", counting)
    return encoded


async def _boxed(manager: SessionManager) -> Session:
    session, _ = await manager.create(_volume(), GEOMETRY)
    await manager.add_box(session, 1, BOX)
    return session


def _items(sub: Subscriber) -> list:
    out = []
    while sub.pending():
        item = sub._queue.get_nowait()  # noqa: SLF001  (what the route would send, without a socket)
        out.append(decode_diff(item) if isinstance(item, bytes) else json.loads(item))
    return out


def _prompts_total(manager: SessionManager, op: str) -> float:
    return manager.metrics.registry.get_sample_value("segsvc_prompts_total", {"op": op}) or 0.0


async def test_a_resent_removal_gets_its_recorded_version_here_and_after_a_restart(manager: SessionManager) -> None:
    session = await _boxed(manager)
    await manager.add_box(session, 2, BOX)
    sub, _ = await manager.subscribe(session)
    _items(sub)
    before = session.nbytes
    removals = _prompts_total(manager, "remove")
    version = await manager.remove_object(session, 1, key="rm")
    assert version == 2  # the box (1), then the removal (2)
    assert session.nbytes == session.state.nbytes < before  # the object's device bytes are given back
    assert _prompts_total(manager, "remove") == removals + 1
    assert _items(sub) == [{"type": "removed", "object_id": 1, "version": 2}]
    history = await manager.store.prompt_history(session.session_id)
    last = history[-1]
    assert (last.op, last.object_id, last.version, last.key) == ("remove", 1, 2, "rm")
    # The reply a restarted process rebuilds from the history is the one this process answers with.
    rebuilt = replies_from_history(history)["rm"]
    assert rebuilt.reply == {"object_id": 1, "version": 2}
    assert rebuilt == session.replies["rm"]
    # A resend (the object is gone) answers the recorded version and records nothing.
    assert await manager.remove_object(session, 1, key="rm") == 2
    assert len(await manager.store.prompt_history(session.session_id)) == len(history)
    with pytest.raises(InvalidInput, match="already used for a different prompt"):
        await manager.remove_object(session, 2, key="rm")  # the key names another object's removal
    # A removal without a key records no reply.
    await manager.remove_object(session, 2)
    assert (await manager.store.prompt_history(session.session_id))[-1].reply is None
    # The id starts a new object at version 1; its first frame is a diff from nothing (base version 0).
    _items(sub)
    outcome = await manager.add_box(session, 1, BOX)
    frames = [f for f in _items(sub) if not isinstance(f, dict)]
    assert outcome.version == 1 and [(f.version, f.base_version) for f in frames] == [(1, 0)]


async def test_resends_of_keyed_prompts_are_answered_from_the_record(manager: SessionManager) -> None:
    session = await _boxed(manager)
    mask = np.zeros(SHAPE, np.uint8)
    mask[8:12, 25:30, 25:30] = 1
    sends = [
        lambda: manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="gru", key="gru"),
        lambda: manager.add_clicks(session, 1, [(10, 28, 28)], [0], mode="decoder", key="decoder"),
        lambda: manager.undo(session, 1, key="undo"),
        lambda: manager.reset(session, 1, key="reset"),
        lambda: manager.set_mask(session, 2, mask, key="mask"),
    ]
    for send in sends:
        first = await send()
        count = len(await manager.store.prompt_history(session.session_id))
        again = await send()
        assert again.replayed and again.to_json() == first.to_json()
        assert len(await manager.store.prompt_history(session.session_id)) == count  # applied once
    history = await manager.store.prompt_history(session.session_id)
    assert [p.op for p in history] == ["box", "clicks", "clicks", "undo", "reset", "mask"]
    assert [p.args for p in history[3:5]] == [{}, {}]
    assert history[-1].args == {"sha256": history[-1].args["sha256"], "voxels": 100}
    assert history[0].reply is None  # a prompt without a key records no reply


async def test_clicks_create_their_object_in_every_mode(manager: SessionManager) -> None:
    session, _ = await manager.create(_volume(), GEOMETRY)
    for object_id, mode in [(1, "gru"), (2, "decoder"), (3, "both")]:
        outcome = await manager.add_clicks(session, object_id, [(12, 30, 30)], [1], mode=mode)
        assert outcome.object_id == object_id and outcome.steps[0].version == 1
    assert sorted(session.state.objects) == [1, 2, 3]


async def test_prompts_on_a_missing_object_or_an_empty_undo_stack_fail_with_exact_errors(
        manager: SessionManager) -> None:
    session = await _boxed(manager)
    for call in (manager.undo, manager.reset):
        with pytest.raises(ObjectNotFound, match=r"^object_id: no object 9 in this session$") as info:
            await call(session, 9)
        assert info.value.field == "object_id"
    await manager.undo(session, 1)  # back to before the box: the object stays, its undo stack is empty
    with pytest.raises(NothingToUndo, match=r"^object_id: nothing to undo for object 1$") as undo_info:
        await manager.undo(session, 1)
    assert undo_info.value.field == "object_id"
    with pytest.raises(InvalidInput, match=r"^mode: expected one of \['gru', 'decoder', 'both'\], got 'fast'$"):
        await manager.add_clicks(session, 1, [(0, 1, 0)], [1], mode="fast")
    with pytest.raises(InvalidInput, match=r"^file: mask shape \[2, 2, 2\] does not match the volume \[24, 64, 64\]"):
        await manager.set_mask(session, 1, np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(InvalidInput, match=r"^mask: ") as mask_info:  # the predictor's own check, passed on
        await manager.set_mask(session, 1, np.full(SHAPE, 2, np.uint8))
    assert mask_info.value.field == "mask"
    # An object whose undo stack is empty still takes any other prompt.
    assert (await manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="gru")).version == 3


async def test_the_reply_carries_the_net_change_its_steps_and_the_total_time(manager: SessionManager) -> None:
    session = await _boxed(manager)
    before, _ = await manager.get_mask(session, 1)
    t0 = time.perf_counter()
    outcome = await manager.add_clicks(session, 1, [(12, 30, 30), (7, 22, 40)], [0, 1], mode="decoder")
    wall_ms = (time.perf_counter() - t0) * 1e3
    after, _ = await manager.get_mask(session, 1)
    zyx = np.argwhere(before != after)
    assert outcome.changed == len(zyx) > 0
    assert outcome.bbox == (*map(int, zyx.min(0)), *map(int, zyx.max(0)))
    (step,) = outcome.steps
    assert (step.step, step.changed, step.bbox) == ("decoder", outcome.changed, outcome.bbox)
    steps_ms = sum(v for k, v in outcome.timings_ms.items() if k != "total")
    assert set(outcome.timings_ms) == {"total"} | {f"decoder.{k}" for k in step.timings_ms}
    assert steps_ms <= outcome.timings_ms["total"] <= wall_ms


async def test_the_reply_total_is_the_time_since_the_prompt_arrived_in_milliseconds(
        manager: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    session = await _boxed(manager)
    ticks = iter(range(10**6, 10**7))  # every clock reading one second after the last
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    outcome = await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="decoder")
    monkeypatch.undo()
    total = outcome.timings_ms["total"]
    assert 0 < total < 1e6 and total % 1000 == 0  # whole seconds, in milliseconds


async def test_only_gru_steps_take_the_instant_lane(manager: SessionManager) -> None:
    session = await _boxed(manager)
    async with HeldBulkLane(manager.executor):
        gru = await asyncio.wait_for(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="gru"), WAIT_S)
        heavy = [asyncio.ensure_future(manager.add_clicks(session, 1, [(10, 28, 28)], [1], mode="decoder")),
                 asyncio.ensure_future(manager.add_box(session, 2, BOX))]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in heavy)  # the decoder step and the box wait for the bulk lane
    await asyncio.wait_for(asyncio.gather(*heavy), WAIT_S)
    assert [s.step for s in gru.steps] == ["gru"]


async def test_no_frame_is_encoded_for_a_session_nobody_watches(manager: SessionManager,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sessions.pipeline as pipeline_module

    encoded = _count_encodes(monkeypatch, pipeline_module, lambda change: change.version)
    session = await _boxed(manager)
    await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="gru")
    assert encoded == []
    sub, _ = await manager.subscribe(session)
    await manager.add_clicks(session, 1, [(10, 28, 28)], [1], mode="gru")
    assert encoded == [3]
    manager.unsubscribe(session, sub)


async def test_a_resend_whose_refinement_was_superseded_gets_the_gru_step(manager: SessionManager) -> None:
    session = await _boxed(manager)
    async with HeldBulkLane(manager.executor):
        first = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="both", key="k"))
        while session.versions.get(1) != 2:  # the GRU step is recorded; the decoder step waits for the device
            await asyncio.sleep(0.01)
        resend = asyncio.ensure_future(manager.add_clicks(session, 1, [(12, 30, 30)], [1], mode="both", key="k"))
        await asyncio.sleep(0.2)
        undo = asyncio.ensure_future(manager.undo(session, 1))  # supersedes the pending refinement
        original, again = await asyncio.wait_for(asyncio.gather(first, resend), WAIT_S)
    await asyncio.wait_for(undo, WAIT_S)
    assert [(s.step, s.version) for s in original.steps] == [("gru", 2)]
    assert again.replayed and again.to_json() == original.to_json()


async def test_each_acknowledged_prompt_is_counted_under_its_op(manager: SessionManager) -> None:
    session = await _boxed(manager)
    counts = {op: _prompts_total(manager, op) for op in ("clicks", "undo", "reset")}
    await manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="gru")
    await manager.undo(session, 1)
    await manager.reset(session, 1)
    assert {op: _prompts_total(manager, op) - n for op, n in counts.items()} == {"clicks": 1, "undo": 1, "reset": 1}


@pytest.fixture
def failures_logged(caplog: pytest.LogCaptureFixture):  # noqa: ANN201
    caplog.set_level("ERROR", logger="app.sessions.refiner")
    return lambda sid: sum(r.getMessage() == f"session {sid}: refinement failed on the device; closing the session"
                           and r.exc_info is not None for r in caplog.records)


async def test_a_refinement_that_fails_on_the_device_closes_the_session(
        manager: SessionManager, monkeypatch: pytest.MonkeyPatch, failures_logged) -> None:  # noqa: ANN001
    session = await _boxed(manager)

    def failing(state, object_id):  # noqa: ANN001, ANN202
        raise RuntimeError("device lost")

    monkeypatch.setattr(manager.predictor, "refine", failing)
    outcome = await asyncio.wait_for(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both"), WAIT_S)
    assert [s.step for s in outcome.steps] == ["gru"]  # answered with its recorded GRU step
    for _ in range(int(WAIT_S / 0.01)):
        if session.closed:
            break
        await asyncio.sleep(0.01)
    assert session.closed
    assert manager.metrics.registry.get_sample_value("segsvc_sessions_ended_total", {"reason": "error"}) == 1.0
    assert failures_logged(session.session_id) == 1


async def test_a_both_reply_carries_the_net_change_of_both_steps_and_the_time_since_it_arrived(
        manager: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    session = await _boxed(manager)
    sub, _ = await manager.subscribe(session)
    before, _ = await manager.get_mask(session, 1)
    _items(sub)
    # Every clock reading one second after the last: the reply's total is then a whole number of seconds.
    ticks = iter(range(10**6, 10**7))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    outcome = await asyncio.wait_for(
        manager.add_clicks(session, 1, [(12, 30, 30), (7, 22, 40)], [0, 1], mode="both"), WAIT_S)
    monkeypatch.undo()
    after, _ = await manager.get_mask(session, 1)
    zyx = np.argwhere(before != after)
    assert outcome.changed == len(zyx) > 0
    assert outcome.bbox == (*map(int, zyx.min(0)), *map(int, zyx.max(0)))
    gru_frame, decoder_frame = (f for f in _items(sub) if not isinstance(f, dict))
    assert [(s.step, s.version) for s in outcome.steps] == [("gru", gru_frame.version),
                                                             ("decoder", decoder_frame.version)]
    refine = outcome.steps[1]
    assert (refine.changed, refine.bbox) == (len(decoder_frame.indices), decoder_frame.bbox)
    assert set(outcome.timings_ms) == ({f"gru.{k}" for k in outcome.steps[0].timings_ms}
                                       | {f"decoder.{k}" for k in refine.timings_ms} | {"total"})
    total = outcome.timings_ms["total"]
    assert 0 < total < 1e6 and total % 1000 == 0  # milliseconds since the click arrived, in whole seconds


async def test_a_refinement_is_recorded_counted_and_stamped_as_the_latest_change(
        manager: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sessions.refiner as refiner_module

    encoded = _count_encodes(monkeypatch, refiner_module, lambda change: change.step)
    session = await _boxed(manager)
    await manager.add_box(session, 2, BOX)
    refines = _prompts_total(manager, "refine")
    unkeyed = await asyncio.wait_for(manager.add_clicks(session, 1, [(12, 30, 30)], [0], mode="both"), WAIT_S)
    keyed = await asyncio.wait_for(manager.add_clicks(session, 1, [(7, 22, 40)], [1], mode="both", key="k"), WAIT_S)
    assert encoded == []  # nobody watches: no decoder frame is encoded
    assert _prompts_total(manager, "refine") == refines + 2
    history = [r for r in await manager.store.prompt_history(session.session_id) if r.op == "refine"]
    assert [(r.object_id, r.version) for r in history] == [(1, unkeyed.version), (1, keyed.version)]
    assert history[0].reply is None  # no keyed click to answer from the record
    assert history[1].reply == {"completes": {"k": json.loads(json.dumps(keyed.to_json()))}}
    assert set(session.change_order) == {1, 2}
    assert session.change_order[1] > session.change_order[2]  # the refined object is the latest change
