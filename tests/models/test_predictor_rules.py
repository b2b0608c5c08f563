"""Rules of the predictor that no mask comparison shows on its own: the corrector's anchor and per-round
seed (read at the call into Algorithm 1, which runs for real), and the depth of the undo stack."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import app.models.corrector_step as corrector_step_module
from app.models import Predictor, build_predictor
from app.models.sampling import build_corrector_input

SHAPE = (23, 61, 47)
SPACING = (3.0, 0.8, 0.8)
BOX = [4, 18, 8, 16, 42, 31]  # centre (10, 30, 19)
BOX_CENTRE = (10, 30, 19)


def _volume() -> np.ndarray:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    return vol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


@pytest.fixture
def corrector_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[tuple[int, int, int], int]]]:
    """(anchor, generator seed) of every corrector round; the real sampling runs."""
    calls: list[tuple[tuple[int, int, int], int]] = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        anchor, generator = args[5], args[7]
        calls.append((tuple(int(a) for a in anchor), int(generator.initial_seed())))
        return build_corrector_input(*args, **kwargs)

    monkeypatch.setattr(corrector_step_module, "build_corrector_input", recording)
    yield calls


def _three_gru_rounds(predictor: Predictor, seed: int, object_id: int = 1) -> None:
    state = predictor.init_state(_volume(), SPACING, seed=seed)
    predictor.add_box(state, object_id, BOX)
    for point, label in [((6, 19, 9), 1), ((12, 35, 25), 0), ((9, 28, 14), 1)]:
        predictor.add_clicks(state, object_id, [point], [label], mode="gru")


def test_the_anchor_is_the_objects_first_click_not_the_box_centre(predictor: Predictor, corrector_calls) -> None:  # noqa: ANN001
    _three_gru_rounds(predictor, seed=7)
    assert [anchor for anchor, _ in corrector_calls] == [(6, 19, 9)] * 3
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    predictor.add_clicks(state, 1, [(6, 19, 9)], [1], mode="gru")
    predictor.undo(state, 1)  # back to the box alone: the next click is the first one again
    predictor.add_clicks(state, 1, [(12, 35, 25)], [1], mode="gru")
    assert corrector_calls[-1][0] == (12, 35, 25) != BOX_CENTRE


def test_each_round_has_its_own_reproducible_seed(predictor: Predictor, corrector_calls) -> None:  # noqa: ANN001
    _three_gru_rounds(predictor, seed=7)
    first = [seed for _, seed in corrector_calls]
    assert len(set(first)) == 3  # every round samples with another seed
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=7)
    assert [seed for _, seed in corrector_calls] == first  # the same session seed replays the same rounds
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=8)
    assert not set(first) & {seed for _, seed in corrector_calls}  # another session seed: other seeds
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=7, object_id=2)
    assert not set(first) & {seed for _, seed in corrector_calls}  # another object: other seeds


def test_undo_goes_back_exactly_undo_depth_levels(predictor: Predictor) -> None:
    depth = predictor.config.undo_depth
    assert depth == 16  # SPEC: a 16-level undo stack per object
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    masks = [predictor.get_mask(state, 1)]
    rng = np.random.default_rng(1)
    for _ in range(depth + 4):
        point = [int(rng.integers(5, 15)), int(rng.integers(19, 41)), int(rng.integers(9, 30))]
        predictor.add_clicks(state, 1, [point], [int(rng.integers(0, 2))], mode="gru")
        masks.append(predictor.get_mask(state, 1))
    assert len({m.tobytes() for m in masks}) == len(masks)  # every level is told apart by its mask
    assert len(state.objects[1].undo_stack) == depth
    for level in range(1, depth + 1):
        predictor.undo(state, 1)
        assert np.array_equal(predictor.get_mask(state, 1), masks[-1 - level]), f"undo level {level}"
    with pytest.raises(ValueError, match="^object_id: nothing to undo"):
        predictor.undo(state, 1)  # the 17th level was dropped
    predictor.add_clicks(state, 1, [(9, 28, 14)], [1], mode="gru")  # the stack fills again from here
    predictor.undo(state, 1)
    assert np.array_equal(predictor.get_mask(state, 1), masks[-1 - depth])


def test_round_seeds_count_the_objects_corrector_rounds(predictor: Predictor, corrector_calls) -> None:  # noqa: ANN001
    _three_gru_rounds(predictor, seed=7)
    assert [seed for _, seed in corrector_calls] == [corrector_step_module._round_seed(7, 1, r) for r in range(3)]
    # Any non-negative int is a session seed: a huge one still gives the generator a valid (64-bit) seed.
    for base in (2**60, 2**70 + 5):
        corrector_calls.clear()
        _three_gru_rounds(predictor, seed=base)
        seeds = [seed for _, seed in corrector_calls]
        assert len(set(seeds)) == 3 and all(0 <= s < 2**62 for s in seeds)


@pytest.fixture(scope="module")
def moving_predictor() -> Predictor:
    """A corrector with large heads: its offsets move writes by whole voxels (the tiny default heads do not)."""
    p = build_predictor("segvol-test", weights=None)
    with torch.no_grad():  # offsets up to ~1.7 voxels (std 0.5 keeps them under 0.5: rounded to no move)
        p.corrector.prob_head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
        p.corrector.coord_head.weight.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(4))
    return p


def _gru_logits(p: Predictor) -> torch.Tensor:
    state = p.init_state(_volume(), SPACING, seed=3)
    p.add_box(state, 1, BOX)
    for point, label in [((6, 19, 9), 1), ((12, 35, 25), 0)]:
        p.add_clicks(state, 1, [point], [label], mode="gru")
    return state.objects[1].logits.clone()


def test_the_corrector_offsets_move_its_writes_unless_switched_off(moving_predictor: Predictor,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    moved = _gru_logits(moving_predictor)
    with monkeypatch.context() as m:
        m.setattr(moving_predictor, "config", replace(moving_predictor.config, use_offsets=False))
        switched_off = _gru_logits(moving_predictor)
    head = moving_predictor.corrector.coord_head
    kept = head.weight.detach().clone()
    try:
        with torch.no_grad():
            head.weight.zero_()  # delta_c == 0 exactly: every write stays on its sampled voxel
        unmoved = _gru_logits(moving_predictor)
    finally:
        with torch.no_grad():
            head.weight.copy_(kept)
    assert torch.equal(switched_off, unmoved)  # use_offsets=False: the offsets are read but not applied
    assert not torch.equal(moved, unmoved)  # the offset head's output decides where the corrector writes


def test_the_gru_state_is_carried_from_round_to_round(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    forward = predictor.corrector.forward

    def recording(x, hidden=None):  # noqa: ANN001, ANN202
        out = forward(x, hidden)
        seen.append((hidden, out.hidden))
        return out

    monkeypatch.setattr(predictor.corrector, "forward", recording)
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    for point, label in [((6, 19, 9), 1), ((12, 35, 25), 0), ((9, 28, 14), 1)]:
        predictor.add_clicks(state, 1, [point], [label], mode="gru")
    predictor.undo(state, 1)
    predictor.add_clicks(state, 1, [(9, 28, 15)], [1], mode="gru")
    assert seen[0][0] is None  # a box starts the object from the zero state
    assert seen[1][0] is seen[0][1] and seen[2][0] is seen[1][1]  # h_{t-1} of each round is the last round's
    assert seen[3][0] is seen[1][1]  # after an undo, the state of the round before the undone one
    assert state.objects[1].hidden is seen[3][1]


def test_a_gru_click_on_an_unchanged_roi_does_not_scan_it_again(predictor: Predictor,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import app.models.sampling as sampling_module
    import app.models.uncertain_band as band_module

    scans: list[tuple[int, ...]] = []
    find = sampling_module.uncertain_candidates

    def counting(logits, tau):  # noqa: ANN001, ANN202
        scans.append(tuple(logits.shape))
        return find(logits, tau)

    monkeypatch.setattr(sampling_module, "uncertain_candidates", counting)
    monkeypatch.setattr(band_module, "uncertain_candidates", counting)
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    obj = state.objects[1]
    predictor.add_clicks(state, 1, [(10, 30, 19)], [1], mode="gru")
    roi = obj.roi
    scans.clear()
    for point, label in [((9, 28, 18), 0), ((11, 31, 20), 1), ((10, 29, 21), 0)]:
        predictor.add_clicks(state, 1, [point], [label], mode="gru")
        assert obj.roi == roi  # the click's ball lies in the ROI
    assert scans == []  # the band carried over from the last step (``uncertain_band``), no pass over the ROI
    tau = predictor.config.tau
    assert obj.band.source() is obj.logits and torch.equal(obj.band.candidates, find(obj.logits, tau))


def test_a_gru_step_reports_its_stage_timings(predictor: Predictor) -> None:
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    (change,) = predictor.add_clicks(state, 1, [(6, 19, 9)], [1], mode="gru")
    # The reply's timings_ms and the benchmarks (benchmarks/results/case_clicks.json) read these names.
    assert change.step == "gru" and set(change.timings_ms) == {"sample", "corrector", "update", "diff"}
    assert all(v >= 0.0 for v in change.timings_ms.values())
