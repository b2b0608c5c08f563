"""The stateful predictor on the tiny SegVol config (random weights: these tests check mechanics, not quality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resize

from app.models import Predictor, PredictorConfig, SessionState, UnknownObjectError, build_predictor
from app.models import geometry as geo
from app.models.sampling import build_corrector_input

SHAPE = (23, 61, 47)  # odd, anisotropic, smaller than the frame on axis 0 and larger on the others
SPACING = (3.0, 0.8, 0.8)


def _volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    vol = rng.normal(0, 1, size=shape).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    return vol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


@pytest.fixture
def state(predictor: Predictor) -> SessionState:
    return predictor.init_state(_volume(), SPACING, seed=7)


def _rebuild(mask: np.ndarray, changes) -> np.ndarray:
    flat = mask.copy().reshape(-1)
    for c in changes:
        flat[c.indices] = c.values
    return flat.reshape(mask.shape)


def _snapshot(p: Predictor, st: SessionState) -> dict:
    snap = {}
    for oid, obj in st.objects.items():
        snap[oid] = (obj.version, len(obj.undo_stack), len(obj.clicks), obj.box, obj.roi, p.get_mask(st, oid),
                     None if obj.hidden is None else obj.hidden.clone())
    return snap


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y)
            elif isinstance(x, torch.Tensor):
                assert torch.equal(x, y)
            else:
                assert x == y


def test_every_change_rebuilds_the_mask_exactly(predictor: Predictor, state: SessionState) -> None:
    mask = np.zeros(SHAPE, np.uint8)
    steps = [predictor.add_box(state, 1, [4, 18, 8, 16, 42, 31])]
    steps += predictor.add_clicks(state, 1, [[10, 30, 20]], [1], mode="both")
    steps += predictor.add_clicks(state, 1, [[6, 19, 9]], [0], mode="gru")
    steps += predictor.add_clicks(state, 1, [[12, 35, 25], [5, 20, 10]], [1, 0], mode="decoder")
    steps.append(predictor.undo(state, 1))
    steps.append(predictor.reset(state, 1))
    versions = [c.version for c in steps]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for c in steps:
        mask = _rebuild(mask, [c])
        assert np.all(np.diff(c.indices) > 0), "indices must be strictly ascending"
        if c.count:
            zyx = np.stack(np.unravel_index(c.indices, SHAPE), axis=1)
            assert tuple(zyx.min(0)) == c.bbox[:3] and tuple(zyx.max(0)) == c.bbox[3:]
    assert np.array_equal(mask, predictor.get_mask(state, 1))


def test_gru_steps_that_grow_the_roi_send_exactly_the_changed_voxels(predictor: Predictor,
                                                                    state: SessionState) -> None:
    """A GRU step that grows the ROI diffs the old and the new ROI whole, not only the voxels it wrote."""
    start = np.zeros(SHAPE, np.uint8)
    start[9:12, 28:33, 18:23] = 1
    predictor.set_mask(state, 1, start)  # the ROI: the mask's box grown by one voxel
    mask = start
    for point, label in [((10, 30, 20), 1), ((16, 30, 20), 0), ((10, 45, 35), 1), ((10, 30, 20), 0)]:
        old_roi = state.objects[1].roi
        (change,) = predictor.add_clicks(state, 1, [point], [label], mode="gru")
        new = predictor.get_mask(state, 1)
        assert state.objects[1].roi != old_roi or point == (10, 30, 20)  # the far clicks grow the ROI
        assert np.array_equal(change.indices, np.flatnonzero(new != mask))
        assert np.array_equal(_rebuild(mask, [change]), new)
        mask = new
    assert mask.any()


def test_replay_is_bit_identical(predictor: Predictor) -> None:
    def run() -> SessionState:
        st = predictor.init_state(_volume(), SPACING, seed=3)
        predictor.add_box(st, 2, [4, 18, 8, 16, 42, 31])
        predictor.add_clicks(st, 2, [[10, 30, 20]], [1], mode="gru")
        predictor.add_clicks(st, 2, [[7, 22, 12]], [0], mode="both")
        predictor.add_clicks(st, 2, [[11, 33, 22]], [1], mode="gru")
        return st

    a, b = run(), run()
    oa, ob = a.objects[2], b.objects[2]
    assert oa.roi == ob.roi and oa.version == ob.version
    assert torch.equal(oa.logits, ob.logits)
    assert torch.equal(oa.hidden, ob.hidden)


def test_gru_mode_changes_only_sampled_voxels(state: SessionState) -> None:
    base = build_predictor("segvol-test", weights=None)
    p = Predictor(base.backbone, base.corrector, PredictorConfig(use_offsets=False, k=50))
    st = p.init_state(_volume(), SPACING, seed=11)
    p.add_box(st, 1, [4, 18, 8, 16, 42, 31])
    obj = st.objects[1]
    before_roi, before = obj.roi, obj.logits.clone()
    click = [10, 30, 20]
    # The clicks' balls already lie inside the box ROI, so the ROI does not grow and sampling sees `before`.
    assert geo.bounds_union(before_roi, geo.ball_bounds(np.array([click]), p.config.radius, SHAPE)) == before_roi
    p.add_clicks(st, 1, [click], [1], mode="gru")
    gen = torch.Generator().manual_seed((11 * 1_000_003 + 1 * 10_007 + 0) % (2**62))
    inp = build_corrector_input(before, before_roi, SHAPE, torch.tensor([click]), torch.tensor([1]),
                                tuple(click), p.config.sampling, gen)
    sampled = {tuple(c) for c, v in zip(inp.coords.tolist(), inp.valid.tolist(), strict=True) if v}
    changed = torch.nonzero(obj.logits != before) + torch.tensor(before_roi[:3])
    assert len(changed) > 0
    assert {tuple(c) for c in changed.tolist()} <= sampled
    assert len(obj.undo_stack[-1].sparse_index) <= 2 * p.config.k  # sparse undo record, not a full copy


def test_undo_restores_every_level_exactly(predictor: Predictor, state: SessionState) -> None:
    masks = []
    predictor.add_box(state, 1, [4, 18, 8, 16, 42, 31])
    masks.append(predictor.get_mask(state, 1))
    predictor.add_clicks(state, 1, [[10, 30, 20]], [1], mode="gru")
    masks.append(predictor.get_mask(state, 1))
    predictor.add_clicks(state, 1, [[6, 19, 9]], [0], mode="both")
    masks.append(predictor.get_mask(state, 1))
    ext = np.zeros(SHAPE, np.uint8)
    ext[0:3, 0:5, 40:47] = 1
    predictor.set_mask(state, 1, ext)
    assert np.array_equal(predictor.get_mask(state, 1), ext)
    masks.append(ext)
    predictor.reset(state, 1)
    assert predictor.get_mask(state, 1).sum() == 0
    for expected in reversed(masks):
        predictor.undo(state, 1)
        assert np.array_equal(predictor.get_mask(state, 1), expected)
    predictor.undo(state, 1)  # before the box: empty
    assert predictor.get_mask(state, 1).sum() == 0
    with pytest.raises(ValueError, match="^object_id: nothing to undo"):
        predictor.undo(state, 1)


@pytest.mark.parametrize("box", [[0, 0, 0, 3, 5, 4], [19, 55, 42, 22, 60, 46]])
def test_corner_boxes_paste_back_inside_the_volume(predictor: Predictor, state: SessionState, box) -> None:
    c = predictor.add_box(state, 5, box)
    obj = state.objects[5]
    roi = obj.roi
    assert roi is not None and 0 <= min(roi[:3]) and all(roi[3 + a] <= SHAPE[a] for a in range(3))
    assert obj.logits.shape == geo.bounds_shape(roi)
    # the ROI reaches at least one window (clamped to the volume) around the box
    frame = predictor.frame
    assert all(roi[3 + a] - roi[a] >= min(frame[a], SHAPE[a]) for a in range(3))
    assert geo.bounds_intersection(roi, geo.box_to_bounds(tuple(box))) == geo.box_to_bounds(tuple(box))
    assert np.array_equal(_rebuild(np.zeros(SHAPE, np.uint8), [c]), predictor.get_mask(state, 5))


def test_box_to_frame_matches_monai_nearest_resize() -> None:
    crop = (2, 3, 1, 21, 58, 44)
    frame = (16, 64, 64)
    cs = geo.bounds_shape(crop)
    for box in [(2, 3, 1, 2, 3, 1), (5, 10, 7, 9, 40, 30), (20, 57, 43, 20, 57, 43), (2, 3, 1, 20, 57, 43)]:
        cube = np.zeros(cs, np.float32)
        cube[box[0] - 2: box[3] - 1, box[1] - 3: box[4] - 2, box[2] - 1: box[5]] = 1
        resized = np.asarray(Resize(frame, mode="nearest")(cube[None]))[0]
        fb = geo.box_to_frame(box, crop, frame)
        expected = geo.mask_bounds(resized)
        if expected is not None:  # box thick enough to survive the resize: the mapping is exact
            assert fb == tuple(float(v) for v in (*expected[:3], *(e - 1 for e in expected[3:])))
        else:  # thinner than a frame voxel: a single voxel near its centre
            assert fb[:3] == fb[3:]


def test_cached_windows_are_reused(predictor: Predictor, state: SessionState) -> None:
    predictor.add_box(state, 1, [4, 18, 8, 16, 42, 31])
    n = len(state.window_cache)
    assert n > 0
    calls = []
    original = predictor.backbone.encode
    predictor.backbone.encode = lambda x: calls.append(1) or original(x)  # type: ignore[method-assign]
    try:
        predictor.add_box(state, 2, [4, 18, 8, 16, 42, 31])
        predictor.add_clicks(state, 2, [[10, 30, 20]], [1], mode="both")
    finally:
        del predictor.backbone.encode
    assert calls == [] and len(state.window_cache) == n


BAD_CALLS = [
    ("add_box", dict(box=[1, 2, 3, 4, 5]), "^box:"),
    ("add_box", dict(box=[5, 5, 5, 4, 6, 6]), "^box: z1 < z0"),
    ("add_box", dict(box=[0, 0, 0, 23, 10, 10]), "^box: .*outside"),
    ("add_box", dict(box=[-1, 0, 0, 3, 10, 10]), "^box: .*outside"),
    ("add_box", dict(box=[0.5, 0, 0, 3, 10, 10]), "^box: expected integer"),
    ("add_clicks", dict(points=[[1, 2, 3]], labels=[2]), "^labels:"),
    ("add_clicks", dict(points=[[1, 2, 3]], labels=[1, 0]), "^labels:"),
    ("add_clicks", dict(points=[[1, 2, 99]], labels=[1]), "^points: .*outside"),
    ("add_clicks", dict(points=[[1, 2]], labels=[1]), "^points:"),
    ("add_clicks", dict(points=[], labels=[]), "^points:"),
    ("add_clicks", dict(points=[[1, 2, 3]], labels=[1], mode="magic"), "^mode:"),
    ("set_mask", dict(mask=np.zeros((3, 3, 3), np.uint8)), "^mask: shape"),
    ("set_mask", dict(mask=np.full(SHAPE, 2, np.uint8)), "^mask: expected a binary"),
]


@pytest.mark.parametrize(("verb", "kwargs", "message"), BAD_CALLS)
def test_bad_input_names_the_argument_and_changes_nothing(predictor, state, verb, kwargs, message) -> None:
    predictor.add_box(state, 1, [4, 18, 8, 16, 42, 31])
    predictor.add_clicks(state, 1, [[10, 30, 20]], [1], mode="gru")
    before = _snapshot(predictor, state)
    with pytest.raises(ValueError, match=message):
        getattr(predictor, verb)(state, 1, **kwargs)
    _assert_same(before, _snapshot(predictor, state))


def test_bad_object_ids(predictor: Predictor, state: SessionState) -> None:
    with pytest.raises(UnknownObjectError, match="object_id: no object 9"):
        predictor.undo(state, 9)
    with pytest.raises(ValueError, match="^object_id:"):
        predictor.add_box(state, 0, [1, 1, 1, 2, 2, 2])
    assert state.objects == {}


@pytest.mark.parametrize(
    ("volume", "spacing", "message"),
    [
        (np.zeros((10, 10)), (1, 1, 1), "^volume: expected a 3D"),
        (np.zeros((2, 10, 10, 10)), (1, 1, 1), "^volume: expected a 3D"),
        (np.full((5, 5, 5), np.nan, np.float32), (1, 1, 1), "^volume: contains NaN"),
        (np.full((5, 5, 5), np.inf, np.float32), (1, 1, 1), "^volume: contains NaN"),
        (np.zeros((5, 5, 5)), (1, 0, 1), "^spacing:"),
        (np.zeros((5, 5, 5)), (1, 1), "^spacing:"),
    ],
)
def test_init_state_rejects_bad_volumes(predictor: Predictor, volume, spacing, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.init_state(volume, spacing)
