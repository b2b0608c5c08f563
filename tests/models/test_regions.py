"""Region prompts: lasso filling, run-length coding, click sampling, and the predictor's region step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models import Predictor, SessionState, build_predictor, regions

SHAPE = (23, 61, 47)
SPACING = (3.0, 0.8, 0.8)


def test_lasso_fills_a_square_on_its_slice_only() -> None:
    flat = regions.fill_lasso(0, 7, [[10, 10], [10, 20], [20, 20], [20, 10]], SHAPE)
    mask = np.zeros(SHAPE, bool).reshape(-1)
    mask[flat] = True
    mask = mask.reshape(SHAPE)
    assert mask[7, 10:21, 10:21].all()  # inside and on the outline
    assert mask.sum() == 11 * 11
    assert not mask[6].any() and not mask[8].any()


def test_lasso_fills_a_triangle_by_even_odd_and_other_axes() -> None:
    flat = regions.fill_lasso(2, 3, [[0, 0], [0, 20], [20, 0]], SHAPE)  # (z, y) vertices on an x slice
    z, y, x = np.unravel_index(flat, SHAPE)
    assert set(x.tolist()) == {3}
    assert (z + y <= 21).all()  # below the hypotenuse (outline rounded)
    assert ((z == 5) & (y == 5)).any() and not ((z == 15) & (y == 15)).any()


def test_lasso_outside_the_slice_is_refused() -> None:
    with pytest.raises(ValueError, match="contour"):
        regions.fill_lasso(0, 0, [[-30, -30], [-30, -20], [-20, -20]], SHAPE)


def test_lasso_reaching_far_past_the_slice_fills_it_in_bounded_work() -> None:
    # A triangle whose vertices lie a million voxels out covers the whole slice; the outline is clipped to the
    # slice first, so this costs what a slice-sized lasso costs (unclipped it would sample millions of points).
    far = 1e6
    flat = regions.fill_lasso(0, 2, [[-far, -far], [-far, 3 * far], [3 * far, -far]], SHAPE)
    assert flat.size == SHAPE[1] * SHAPE[2]


def test_clipping_keeps_the_outline_of_an_edge_that_crosses_the_slice() -> None:
    # An edge entering from outside: its voxels on the slice are those of the same edge drawn unclipped.
    shape = (1, 20, 20)
    flat = regions.fill_lasso(0, 0, [[-10.0, 5.0], [30.0, 5.4], [30.0, 5.6]], shape)
    _, y, x = np.unravel_index(flat, shape)
    assert set(y.tolist()) == set(range(20)) and set(x.tolist()) <= {5, 6}


def test_runs_round_trip() -> None:
    flat = regions.fill_lasso(0, 4, [[3, 3], [3, 30], [40, 30]], SHAPE)
    runs = regions.to_runs(flat)
    assert len(runs) < flat.size / 5  # one run per row, not one per voxel
    assert np.array_equal(regions.from_runs(runs), flat)


def test_sampled_clicks_spread_over_a_long_scribble() -> None:
    line = regions.from_points([(5, 30, x) for x in range(0, 47)], SHAPE)
    clicks = regions.sample_clicks(line, SHAPE, n=5)
    xs = sorted(int(c[2]) for c in clicks)
    assert len(xs) == 5 and xs[0] == 0 and xs[-1] == 46  # both ends, not five neighbours
    assert abs(int(clicks[0][2]) - 23) <= 1  # the first is the middle


def test_normalise_refuses_empty_and_outside() -> None:
    with pytest.raises(ValueError, match="region"):
        regions.normalise(np.zeros(0, np.int64), SHAPE)
    with pytest.raises(ValueError, match="region"):
        regions.normalise(np.array([int(np.prod(SHAPE))]), SHAPE)


def test_box_around_a_one_slice_lasso_spans_slices() -> None:
    flat = regions.fill_lasso(0, 10, [[20, 20], [20, 30], [30, 30], [30, 20]], SHAPE)
    box = regions.box_around(flat, SHAPE, SPACING)
    assert box[0] < 10 < box[3]  # grown across slices by the in-plane size in mm
    assert box[1] < 20 and box[4] > 30


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


@pytest.fixture
def state(predictor: Predictor) -> SessionState:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    return predictor.init_state(vol, SPACING, seed=7)


def test_region_ends_with_its_label_and_one_undo_reverts_it(predictor: Predictor, state: SessionState) -> None:
    predictor.add_box(state, 1, [5, 20, 10, 14, 39, 29])
    before = predictor.get_mask(state, 1)
    lasso = regions.fill_lasso(0, 9, [[22, 12], [22, 26], [36, 26], [36, 12]], SHAPE)
    changes = predictor.add_region(state, 1, lasso, 0, mode="both")
    assert [c.step for c in changes] == ["gru", "decoder"]
    mask = predictor.get_mask(state, 1).reshape(-1)
    assert not mask[lasso].any()  # a background lasso: every voxel of it is background
    scribble = regions.from_points([(12, 30, x) for x in range(12, 28)], SHAPE)
    predictor.add_region(state, 1, scribble, 1, mode="decoder")
    assert predictor.get_mask(state, 1).reshape(-1)[scribble].all()
    predictor.undo(state, 1)
    predictor.undo(state, 1)
    assert np.array_equal(predictor.get_mask(state, 1), before)


def test_foreground_region_on_a_new_object_gets_a_box(predictor: Predictor, state: SessionState) -> None:
    lasso = regions.fill_lasso(0, 9, [[24, 14], [24, 24], [34, 24], [34, 14]], SHAPE)
    changes = predictor.add_region(state, 2, lasso, 1)
    assert [c.step for c in changes] == ["decoder"]  # nothing to correct yet: the decoder alone
    obj = state.objects[2]
    assert obj.box is not None and obj.box[0] < 9 < obj.box[3]
    assert predictor.get_mask(state, 2).reshape(-1)[lasso].all()


def test_region_modes_and_labels_are_checked(predictor: Predictor, state: SessionState) -> None:
    flat = regions.from_points([(1, 1, 1)], SHAPE)
    with pytest.raises(ValueError, match="mode"):
        predictor.add_region(state, 1, flat, 1, mode="gru")
    with pytest.raises(ValueError, match="label"):
        predictor.add_region(state, 1, flat, 2)
    assert 1 not in state.objects


def test_lasso_clicks_come_from_its_core_not_its_outline() -> None:
    disc = regions.fill_lasso(0, 5, [[30 + 12 * np.sin(t), 23 + 12 * np.cos(t)]
                                     for t in np.linspace(0, 2 * np.pi, 40, endpoint=False)], SHAPE)
    clicks = regions.sample_clicks(disc, SHAPE)
    radius = np.hypot(clicks[:, 1] - 30, clicks[:, 2] - 23)
    assert len(clicks) == 5 and (radius <= 6.5).all()  # within the inner half of the 12-voxel radius
