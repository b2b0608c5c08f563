"""Exclusive sessions: one object's foreground click is a background click to the session's other objects.

Drives the tiny random-weight predictor; what is checked is which prompts each step reads, that nothing is
stored on the other objects, and that the results are deterministic and undoable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models import Click, Predictor, SessionState, build_predictor
from app.models.corrector_step import exclusion_clicks

SHAPE = (23, 61, 47)
SPACING = (3.0, 0.8, 0.8)
OUTER = [3, 15, 6, 18, 45, 35]  # a container
INNER = [8, 25, 15, 12, 35, 25]  # nested inside it
INSIDE_BOTH = [10, 30, 20]


def _volume() -> np.ndarray:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    vol[8:12, 26:34, 16:24] -= 3.0
    return vol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


def _two_objects(predictor: Predictor, exclusive: bool) -> SessionState:
    state = predictor.init_state(_volume(), SPACING, seed=5, exclusive_objects=exclusive)
    predictor.add_box(state, 1, OUTER)
    predictor.add_box(state, 2, INNER)
    return state


def _record_decoder_points(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple]]:
    seen: list[list[tuple]] = []
    decode = predictor.decoder.decode

    def spy(state, obj, box, points, labels, timer, use_old):  # noqa: ANN001, ANN202
        seen.append([(*map(int, p), int(lab)) for p, lab in zip(points, labels, strict=True)])
        return decode(state, obj, box, points, labels, timer, use_old)

    monkeypatch.setattr(predictor.decoder, "decode", spy)
    return seen


def test_another_objects_foreground_click_is_a_background_click_here(predictor: Predictor,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    state = _two_objects(predictor, exclusive=True)
    predictor.add_clicks(state, 2, [INSIDE_BOTH], [1], mode="decoder")  # "this voxel is object 2"
    predictor.add_clicks(state, 2, [[9, 28, 18]], [0], mode="decoder")  # background clicks are not passed on
    assert exclusion_clicks(state, state.objects[1]) == [Click(*INSIDE_BOTH, 0)]
    assert exclusion_clicks(state, state.objects[2]) == []  # object 1 has no clicks

    seen = _record_decoder_points(predictor, monkeypatch)
    predictor.add_clicks(state, 1, [[4, 17, 8]], [1], mode="decoder")
    assert seen == [[(*INSIDE_BOTH, 0), (4, 17, 8, 1)]]  # the exclusion first: the object's own clicks win
    assert [(c.z, c.y, c.x, c.label) for c in state.objects[1].clicks] == [(4, 17, 8, 1)]  # nothing stored


def test_independent_sessions_and_far_or_shared_clicks_pass_nothing(predictor: Predictor) -> None:
    independent = _two_objects(predictor, exclusive=False)
    predictor.add_clicks(independent, 2, [INSIDE_BOTH], [1], mode="decoder")
    assert exclusion_clicks(independent, independent.objects[1]) == []

    state = _two_objects(predictor, exclusive=True)
    far = predictor.init_state(_volume(), SPACING, exclusive_objects=True)
    predictor.add_box(far, 1, [0, 0, 0, 3, 8, 8])
    predictor.add_clicks(far, 2, [[20, 55, 42]], [1], mode="decoder")  # outside object 1's ROI
    assert exclusion_clicks(far, far.objects[1]) == []
    predictor.add_clicks(state, 1, [INSIDE_BOTH], [1], mode="decoder")
    predictor.add_clicks(state, 2, [INSIDE_BOTH], [1], mode="decoder")  # both claim the voxel: each keeps its own
    assert exclusion_clicks(state, state.objects[1]) == []
    assert exclusion_clicks(state, state.objects[2]) == []


def test_the_gru_step_reads_the_exclusions_too(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.models.corrector_step as corrector_step_module

    state = _two_objects(predictor, exclusive=True)
    predictor.add_clicks(state, 2, [INSIDE_BOTH], [1], mode="decoder")
    seen: list[list[tuple]] = []
    build = corrector_step_module.build_corrector_input

    def spy(logits, roi, shape, clicks, labels, *rest):  # noqa: ANN001, ANN202
        seen.append([(*map(int, c), int(lab)) for c, lab in zip(clicks.tolist(), labels.tolist(), strict=True)])
        return build(logits, roi, shape, clicks, labels, *rest)

    monkeypatch.setattr(corrector_step_module, "build_corrector_input", spy)
    predictor.add_clicks(state, 1, [[4, 17, 8]], [1], mode="gru")
    assert seen == [[(*INSIDE_BOTH, 0), (4, 17, 8, 1)]]


def test_exclusive_results_are_deterministic_and_undoable(predictor: Predictor) -> None:
    def run(exclusive: bool) -> SessionState:
        state = _two_objects(predictor, exclusive)
        predictor.add_clicks(state, 2, [INSIDE_BOTH], [1], mode="both")
        predictor.add_clicks(state, 1, [[4, 17, 8]], [1], mode="both")
        return state

    a, b, independent = run(True), run(True), run(False)
    assert torch.equal(a.objects[1].logits, b.objects[1].logits)  # a replay in order rebuilds the same result
    assert a.objects[1].roi == independent.objects[1].roi
    assert not torch.equal(a.objects[1].logits, independent.objects[1].logits)  # the exclusion was used
    assert torch.equal(a.objects[2].logits, independent.objects[2].logits)  # object 2 clicked first: unaffected
    before = predictor.get_mask(a, 1)
    predictor.add_clicks(a, 1, [[14, 40, 30]], [0], mode="both")
    predictor.undo(a, 1)
    assert np.array_equal(predictor.get_mask(a, 1), before)


def test_init_state_validates_the_flag(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="^exclusive_objects: expected a bool"):
        predictor.init_state(_volume(), SPACING, exclusive_objects="yes")  # type: ignore[arg-type]
    assert predictor.init_state(_volume(), SPACING).exclusive_objects is True  # the default


def test_only_clicks_inside_the_half_open_roi_count_each_voxel_once(predictor: Predictor) -> None:
    state = predictor.init_state(_volume(), SPACING, seed=5, exclusive_objects=True)
    predictor.add_clicks(state, 1, [INSIDE_BOTH], [1], mode="gru")  # no box: the ROI is the click's ball
    z0, y0, x0, z1, y1, x1 = state.objects[1].roi
    assert 0 < z0 and z1 < SHAPE[0] and 0 < y0 and y1 < SHAPE[1] and 0 < x0 and x1 < SHAPE[2]  # edges inside
    cz, cy, cx = INSIDE_BOTH
    first = [[z0, cy, cx], [z1 - 1, cy, cx], [cz, y0, cx], [cz, y1 - 1, cx], [cz, cy, x0], [cz, cy, x1 - 1]]
    outside = [[z0 - 1, cy, cx], [z1, cy, cx], [cz, y0 - 1, cx], [cz, y1, cx], [cz, cy, x0 - 1], [cz, cy, x1]]
    predictor.add_box(state, 2, OUTER)
    predictor.add_clicks(state, 2, first + outside, [1] * 12, mode="decoder")
    predictor.add_box(state, 3, OUTER)
    shared = [cz + 1, cy, cx]
    predictor.add_clicks(state, 3, [shared, first[0], INSIDE_BOTH], [1, 1, 1], mode="decoder")
    # The ROI's first voxel on each axis is in, the voxel at its (exclusive) end is out; a voxel two other
    # objects claim is one background click; the object's own click stays its own; the objects' order, then
    # their clicks'.
    assert exclusion_clicks(state, state.objects[1]) == [Click(*p, 0) for p in [*first, shared]]
