"""GRU steps with their per-object caches (the kept uncertainty band, logits written in place) give exactly the
results of steps that start cold (band scanned from the ROI, logits copied), click after click.

A fixed sequence of 40 GRU clicks, mixed labels, on three objects of an exclusive session (one started by a
click at the volume's edge), with undos, a decoder click and a "both" click between them, runs twice: once as the
predictor runs it, once with the caches dropped before every click. Every change, every object's logits, hidden
state and undo record must be bit-identical; the undo entries' tensors must never change once stored.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from app.models import Predictor, SessionState, build_predictor
from app.models.sampling import uncertain_candidates

SHAPE = (23, 61, 47)
SPACING = (3.0, 0.8, 0.8)
BOX = [4, 15, 8, 16, 44, 33]
INNER_BOX = [7, 22, 14, 12, 36, 27]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    p = build_predictor("segvol-test", weights=None)
    with torch.no_grad():  # large heads: the corrector moves many voxels across the band and the mask edge
        p.corrector.prob_head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
        p.corrector.coord_head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
    return p


def _volume() -> np.ndarray:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    return vol


def _run(p: Predictor, cold: bool) -> list[dict]:
    state = p.init_state(_volume(), SPACING, seed=11)
    p.add_box(state, 1, BOX)
    p.add_box(state, 2, INNER_BOX)
    rng = np.random.default_rng(5)
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    records: list[dict] = []
    for i in range(40):
        object_id = (1, 2, 3)[i % 3]
        if object_id == 3:
            point = (np.array([0, 2, 44]) + rng.integers(-2, 3, 3)).clip(0, np.array(SHAPE) - 1).tolist()
        else:
            point = rng.integers(lo, hi + 1).tolist()
        label = int(rng.integers(0, 2)) if i > 2 else 1
        if cold:
            for obj in state.objects.values():
                obj.band, obj.own_logits = None, None
        records.append(_record(state, p.add_clicks(state, object_id, [point], [label], mode="gru")))
        if i == 10:  # a click whose GRU step may not write in place: its undo entry keeps the logits whole
            records.append(_record(state, p.add_clicks(state, 2, [rng.integers(lo, hi + 1).tolist()], [0],
                                                       mode="both")))
            records.append(_record(state, [p.undo(state, 2)]))
        if i == 17:
            records.append(_record(state, [p.undo(state, 1)]))
        if i == 25:
            records.append(_record(state, p.add_clicks(state, 2, [rng.integers(lo, hi + 1).tolist()], [1],
                                                       mode="decoder")))
        if i == 30:
            records.append(_record(state, [p.undo(state, 2), p.undo(state, 2)]))
    _check_undo_entries_unchanged(state, records)
    return records


def _record(state: SessionState, changes: list) -> dict:
    out: dict = {"changes": [(c.object_id, c.version, c.step, c.indices.copy(), c.values.copy(), c.bbox)
                             for c in changes], "undo_logits": {}}
    for oid, obj in sorted(state.objects.items()):
        top = obj.undo_stack[-1] if obj.undo_stack else None
        out[oid] = (obj.roi, obj.rounds, obj.version, _copy(obj.logits), _copy(obj.hidden),
                    None if top is None or top.sparse_index is None else (top.sparse_index.clone(),
                                                                          top.sparse_values.clone()))
        out["undo_logits"][oid] = [(id(e.logits), e.logits.clone()) for e in obj.undo_stack if e.logits is not None]
    return out


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _check_undo_entries_unchanged(state: SessionState, records: list[dict]) -> None:
    """Every whole tensor an undo entry holds at the end equals the copy taken when it was first seen."""
    first_seen: dict[int, torch.Tensor] = {}
    for rec in records:
        for entries in rec["undo_logits"].values():
            for key, copy in entries:
                first_seen.setdefault(key, copy)
    for obj in state.objects.values():
        for e in obj.undo_stack:
            if e.logits is not None and id(e.logits) in first_seen:
                assert torch.equal(e.logits, first_seen[id(e.logits)])


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_same(x, y)
    else:
        assert a == b


def test_forty_gru_clicks_with_caches_equal_cold_steps(predictor: Predictor):
    warm, cold = _run(predictor, cold=False), _run(predictor, cold=True)
    assert len(warm) == len(cold) == 45
    changed = 0
    for w, c in zip(warm, cold, strict=True):
        _assert_same(w["changes"], c["changes"])
        for oid in (1, 2, 3):
            if oid in w:
                _assert_same(w[oid], c[oid])
        changed += sum(len(ch[3]) for ch in w["changes"])
    assert changed > 100  # the sequence does move the masks


def test_gru_clicks_write_in_place_only_into_logits_no_undo_entry_holds(predictor: Predictor):
    state = predictor.init_state(_volume(), SPACING, seed=1)
    predictor.add_box(state, 1, BOX)
    obj = state.objects[1]
    after_box = obj.logits
    box_values = after_box.clone()
    predictor.add_clicks(state, 1, [[10, 30, 20]], [1], mode="gru")
    # The box's tensor, held by the object alone: written in place, the undo entry keeps the old values only.
    assert obj.logits is after_box and not torch.equal(after_box, box_values)
    assert obj.undo_stack[-1].logits is None
    predictor.undo(state, 1)
    assert torch.equal(obj.logits, box_values)
    predictor.add_clicks(state, 1, [[9, 25, 20]], [1], mode="decoder")
    held = obj.undo_stack[-1].logits  # the decoder click's undo entry keeps the tensor before it whole
    kept = held.clone()
    obj.own_logits = weakref.ref(held)  # as if the object made it: the undo entry holding it still forbids writes
    obj.logits = held
    predictor.add_clicks(state, 1, [[12, 31, 21]], [1], mode="gru")
    assert obj.logits is not held and torch.equal(held, kept)
    made = obj.logits  # the last GRU step's own tensor
    made_values = made.clone()
    predictor.add_clicks(state, 1, [[11, 28, 21]], [0], mode="both")  # GRU step in place, then the decoder step
    assert not torch.equal(made, made_values)  # the GRU step wrote into it
    entry = obj.undo_stack[-1]
    assert entry.sparse_index is None and torch.equal(entry.logits, made_values)  # whole again after the decoder
    predictor.undo(state, 1)
    assert torch.equal(obj.logits, made_values)


def test_decoder_steps_leave_the_band_of_their_logits_for_the_next_gru_click(predictor: Predictor):
    state = predictor.init_state(_volume(), SPACING, seed=1)
    predictor.add_box(state, 1, BOX)
    obj = state.objects[1]
    for step in ("box", "decoder", "both"):
        if step == "decoder":
            predictor.add_clicks(state, 1, [[10, 30, 20]], [0], mode="decoder")
        elif step == "both":
            predictor.add_clicks(state, 1, [[11, 28, 21]], [1], mode="both")
        assert obj.band is not None and obj.band.source() is obj.logits
        assert torch.equal(obj.band.candidates, uncertain_candidates(obj.logits, predictor.config.tau))


def test_a_kept_band_is_used_only_for_its_own_tensor_and_tau():
    from app.models.uncertain_band import band_for, band_of, carry_band

    logits = torch.tensor([0.1, 0.5, 1.0, 3.0]).reshape(1, 1, 4)
    kept = band_for(None, logits, 0.1)
    assert kept.tau == 0.1 and kept.candidates.tolist() == [0]
    assert band_for(kept, logits, 0.1).candidates is kept.candidates  # found again without a pass
    assert band_of(kept, logits, 0.4).tolist() == uncertain_candidates(logits, 0.4).tolist() == [0, 1, 2]
    new = logits.clone()
    new.view(-1)[3] = 0.0
    carried = carry_band(kept.candidates, new, torch.tensor([3]), 0.1)
    assert carried.tau == 0.1 and carried.candidates.tolist() == [0, 3]
