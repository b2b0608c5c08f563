"""Geodesic click propagation (``app.models.propagation``) and its place in the predictor's resample path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from app.models import PredictorConfig, build_predictor, propagation
from app.models.propagation import PropagationConfig, frame_sampling, propagate_clicks

SHAPE = (8, 32, 32)
ISO = (1.0, 1.0, 1.0)


def _two_regions() -> torch.Tensor:
    """Dark left half (0.2), bright right half (0.8): an intensity edge at x = 16."""
    image = torch.full(SHAPE, 0.2)
    image[..., 16:] = 0.8
    return image


def test_a_foreground_click_fills_its_own_region_and_stops_at_the_intensity_edge() -> None:
    logits = torch.full(SHAPE, -5.0)
    out = propagate_clicks(logits, _two_regions(), np.array([[4.0, 16.0, 20.0]]), np.array([1]), ISO,
                           PropagationConfig(reach=12.0))
    bright, dark = out[..., 16:], out[..., :16]
    assert (bright[4, 12:21, 1:9] > 0).all()  # within ~7 voxels of the click, same intensity
    assert (dark < 0).all()  # one step across the edge costs 1 + (0.6 / 0.05)^2: out of reach
    # Within the reach the click's label wins, with a confidence that fades: 11 voxels away, 6 * (1 - 11/12).
    assert out[4, 16, 31] == pytest.approx(0.5)
    assert out[4, 16, 20] == pytest.approx(6.0)  # the click itself gets the full gain
    assert (out[4, 16, 16:] > 0).all() and (out[0, 0, 16:] < 0).all()  # the y = 0 edge, 16+ voxels away: out of reach


def test_a_background_click_removes_the_clicked_structure_not_its_neighbour() -> None:
    logits = torch.full(SHAPE, 3.0)  # the model took both halves
    out = propagate_clicks(logits, _two_regions(), np.array([[4.0, 16.0, 24.0]]), np.array([0]), ISO,
                           PropagationConfig(reach=12.0))
    assert (out[3:6, 10:23, 20:29] < 0).all()  # the bright structure around the click is gone
    assert (out[..., :16] == 3.0).all()  # the dark one keeps exactly what the model said


def test_confident_voxels_of_the_clicks_label_are_kept_and_the_input_is_not_modified() -> None:
    logits = torch.full(SHAPE, 9.0)
    before = logits.clone()
    out = propagate_clicks(logits, _two_regions(), np.array([[4.0, 16.0, 20.0]]), np.array([1]), ISO,
                           PropagationConfig(reach=12.0))
    assert torch.equal(out, before)  # max(9, <= 6) keeps 9
    assert torch.equal(logits, before)


def test_the_geodesically_nearer_click_wins() -> None:
    uniform = torch.full(SHAPE, 0.5)
    out = propagate_clicks(torch.zeros(SHAPE), uniform, np.array([[4.0, 16.0, 8.0], [4.0, 16.0, 24.0]]),
                           np.array([1, 0]), ISO, PropagationConfig(reach=20.0))
    assert (out[4, 16, 4:16] > 0).all()
    assert (out[4, 16, 17:28] < 0).all()


def test_reach_zero_or_no_clicks_returns_the_logits_unchanged() -> None:
    logits = torch.randn(SHAPE)
    image = _two_regions()
    off = propagate_clicks(logits, image, np.array([[4.0, 16.0, 20.0]]), np.array([1]), ISO,
                           PropagationConfig(reach=0.0))
    none = propagate_clicks(logits, image, np.zeros((0, 3)), np.zeros(0), ISO, PropagationConfig())
    assert torch.equal(off, logits) and torch.equal(none, logits)


def test_anisotropic_steps_shorten_the_reach_along_the_coarse_axis() -> None:
    uniform = torch.full((16, 16, 16), 0.5)
    out = propagate_clicks(torch.full((16, 16, 16), -1.0), uniform, np.array([[8.0, 8.0, 8.0]]), np.array([1]),
                           (3.0, 1.0, 1.0), PropagationConfig(reach=6.0, gain=6.0))
    assert out[8, 8, 13] > 0  # 5 in-plane steps < 6
    assert out[10, 8, 8] < 0  # 2 slices = 6 units: at the edge of the reach, strength 0


def test_frame_sampling_is_relative_physical_voxel_size() -> None:
    # 64 slices of 2 mm into 32, 128 pixels of 0.5 mm into 64: 4 mm and 1 mm frame voxels.
    assert frame_sampling((64, 128, 128), (32, 64, 64), (2.0, 0.5, 0.5)) == (4.0, 1.0, 1.0)


def test_cached_reaches_give_the_same_logits_without_reading_the_image_again() -> None:
    logits, image = torch.randn(SHAPE), _two_regions()
    points, labels = np.array([[4.0, 16.0, 20.0], [4.0, 10.0, 6.0]]), np.array([1, 0])
    cache: dict = {}
    first = propagate_clicks(logits, lambda: image, points, labels, ISO, PropagationConfig(), cache, ("v",))
    assert sorted(cache) == [("v", 4, 10, 6), ("v", 4, 16, 20)]

    def no_image() -> torch.Tensor:
        raise AssertionError("the image was read although every click was cached")

    again = propagate_clicks(logits, no_image, points, labels, ISO, PropagationConfig(), cache, ("v",))
    uncached = propagate_clicks(logits, image, points, labels, ISO, PropagationConfig())
    assert torch.equal(first, again) and torch.equal(first, uncached)


@pytest.mark.parametrize(("field", "value"), [("reach", -1.0), ("tolerance", 0.0), ("gain", float("nan"))])
def test_bad_parameters_name_their_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PropagationConfig(**{field: value})
    with pytest.raises(ValueError, match=f"propagation_{field}"):
        PredictorConfig(**{f"propagation_{field}": value})


def test_bad_shapes_and_label_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="logits"):
        propagate_clicks(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5), np.zeros((0, 3)), np.zeros(0), ISO,
                         PropagationConfig())
    with pytest.raises(ValueError, match="labels"):
        propagate_clicks(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), np.zeros((2, 3)), np.zeros(1), ISO,
                         PropagationConfig())


# --- in the predictor (random compact weights: the test is about where propagation acts, not quality) ----------


def _volume() -> np.ndarray:
    vol = np.zeros((24, 48, 48), np.float32)
    vol[6:18, 12:36, 12:36] = 100.0  # a bright cube on a dark background
    vol[22:, :, :] = 50.0  # keeps the foreground normalisation's percentiles apart (cube -> 1, background -> 0)
    return vol


def _clicked_mask(reach: float) -> np.ndarray:
    cfg = PredictorConfig(zoom_in="resample", roi_frame=(8, 32, 32), propagation_reach=reach, k=50,
                          click_region_reach=0.0, click_region_foreground_reach=0.0)  # the propagation alone
    p = build_predictor("compact", weights=None, predictor_config=cfg)  # same seeded init for every reach
    st = p.init_state(_volume(), (1.0, 1.0, 1.0))
    p.add_box(st, 1, [6, 12, 12, 17, 35, 35])
    p.add_clicks(st, 1, [[12, 24, 24]], [1], mode="decoder")
    return p.get_mask(st, 1)


def test_in_the_predictor_a_click_fills_the_cube_around_it_and_nothing_outside_the_cube_changes() -> None:
    torch.set_num_threads(1)
    on, off = _clicked_mask(15.0), _clicked_mask(0.0)
    near = (slice(10, 15), slice(18, 31), slice(18, 31))
    assert on[near].all()  # propagated through the uniform cube
    assert not off[near].all()  # the random decoder alone does not: the check above has teeth
    # The intensity edge stops it: away from the edge's partial-volume band (resampling blurs the frame's
    # image and the logits over about one frame voxel) nothing changed.
    outside = ~binary_dilation(_volume() == 100.0, iterations=4)
    assert np.array_equal(on[outside], off[outside])


def test_a_replayed_session_rebuilds_the_same_logits_and_searches_each_click_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(1)
    cfg = PredictorConfig(zoom_in="resample", roi_frame=(8, 32, 32), k=50)
    p = build_predictor("compact", weights=None, predictor_config=cfg)
    searched: list[tuple[int, ...]] = []
    search = propagation.click_distances

    def spy(image, centre, sampling, config):  # type: ignore[no-untyped-def]
        searched.append(tuple(centre))
        return search(image, centre, sampling, config)

    monkeypatch.setattr(propagation, "click_distances", spy)

    def run():  # type: ignore[no-untyped-def]
        st = p.init_state(_volume(), (1.0, 1.0, 1.0))
        p.add_box(st, 1, [6, 12, 12, 17, 35, 35])
        p.add_clicks(st, 1, [[12, 24, 24]], [1], mode="both")
        p.add_clicks(st, 1, [[8, 14, 30]], [0], mode="both")  # same ROI view: the first click is cached
        return st

    a = run()
    assert len(searched) == 2 and len(a.geodesic_cache) == 2
    b = run()
    assert torch.equal(a.objects[1].logits, b.objects[1].logits)
    cache_bytes = sum(c.nbytes + d.nbytes for c, d in a.geodesic_cache.values())
    before = a.nbytes
    a.geodesic_cache.clear()
    assert cache_bytes > 0 and a.nbytes == before - cache_bytes  # the session's memory counts the cache
