"""Click regions: a background click removes the false-positive blob it is in, a foreground click adds the
missed part along its boundaries, and neither crosses the previous mask's side or contradicts a click."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from app.models.click_regions import RegionConfig, apply_click_regions

CONFIG = RegionConfig(reach=30.0, foreground_reach=30.0, tolerance=0.1, gain=2.0, confident=math.inf)
SAMPLING = (1.0, 1.0, 1.0)


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Image: a bright object (0.8) in the middle, a dimmer blob (0.4) beside it, background 0.1."""
    image = torch.full((16, 32, 32), 0.1)
    image[4:12, 4:16, 4:16] = 0.8
    image[4:12, 16:28, 6:14] = 0.4  # touches the object along y = 16
    return image, torch.where(image > 0.5, 5.0, -5.0)


def test_a_background_click_removes_the_whole_blob_and_keeps_the_object() -> None:
    image, truth_logits = _scene()
    previous = torch.where(image > 0.2, 5.0, -5.0)  # the object and the blob: the blob is a false positive
    out = apply_click_regions(previous, previous, image, np.array([[8.0, 22.0, 10.0]]), np.array([0]),
                              SAMPLING, CONFIG)
    assert torch.equal(out > 0, truth_logits > 0)  # every blob voxel flipped, not only a ball around the click
    assert torch.equal(out[image > 0.5], previous[image > 0.5])  # the object was not touched


def test_a_foreground_click_adds_the_missed_part_up_to_its_boundaries() -> None:
    image, truth_logits = _scene()
    previous = truth_logits.clone()
    previous[:, 4:16, 10:16] = -5.0  # the object's right part missed
    out = apply_click_regions(previous, previous, image, np.array([[8.0, 10.0, 13.0]]), np.array([1]),
                              SAMPLING, CONFIG)
    assert torch.equal(out > 0, truth_logits > 0)  # the missed part, and not the blob or the background
    assert float(out[8, 10, 13]) == CONFIG.gain


def test_a_region_that_holds_a_click_of_the_other_label_is_not_written() -> None:
    image, _ = _scene()
    previous = torch.where(image > 0.2, 5.0, -5.0)
    points = np.array([[8.0, 22.0, 10.0], [6.0, 18.0, 8.0]])  # a background and a foreground click in the blob
    out = apply_click_regions(previous, previous, image, points, np.array([0, 1]), SAMPLING, CONFIG)
    assert torch.equal(out, previous)


def test_reach_bounds_the_region_and_zero_turns_it_off() -> None:
    image, _ = _scene()
    previous = torch.where(image > 0.2, 5.0, -5.0)
    short = apply_click_regions(previous, previous, image, np.array([[8.0, 22.0, 10.0]]), np.array([0]),
                                SAMPLING, RegionConfig(reach=3.0, confident=math.inf))
    removed = (previous > 0) & (short <= 0)
    zz, yy, xx = torch.nonzero(removed, as_tuple=True)
    assert removed.any() and int(((zz - 8) ** 2 + (yy - 22) ** 2 + (xx - 10) ** 2).max()) < 9
    off = apply_click_regions(previous, previous, image, np.array([[8.0, 22.0, 10.0]]), np.array([0]),
                              SAMPLING, RegionConfig(reach=0.0, foreground_reach=30.0))
    assert torch.equal(off, previous)


def test_foreground_and_background_clicks_have_their_own_reach() -> None:
    image, truth_logits = _scene()
    previous = truth_logits.clone()
    previous[:, 4:16, 10:16] = -5.0  # the object's right part missed
    background_only = RegionConfig(reach=30.0, foreground_reach=0.0, confident=math.inf)
    fg = apply_click_regions(previous, previous, image, np.array([[8.0, 10.0, 13.0]]), np.array([1]),
                             SAMPLING, background_only)
    assert torch.equal(fg, previous)
    both = torch.where(image > 0.2, 5.0, -5.0)
    bg = apply_click_regions(both, both, image, np.array([[8.0, 22.0, 10.0]]), np.array([0]), SAMPLING,
                             background_only)
    assert torch.equal(bg > 0, truth_logits > 0)


def test_a_region_leaves_the_voxels_the_model_is_confident_of() -> None:
    image, truth_logits = _scene()
    previous = torch.where(image > 0.2, 5.0, -5.0)  # the blob is a false positive
    blob = (image > 0.2) & (image < 0.5)
    sure = torch.zeros_like(blob)
    sure[:, 16:20] = True
    logits = previous.clone()
    logits[blob] = 1.0  # the step's model hesitates over the blob, but is sure of its first rows
    logits[blob & sure] = 4.0
    out = apply_click_regions(logits, previous, image, np.array([[8.0, 22.0, 10.0]]), np.array([0]), SAMPLING,
                              RegionConfig(reach=30.0, confident=3.0))
    assert (out[blob & sure] == 4.0).all() and (out[blob & ~sure] == -2.0).all()


def test_bad_parameters_and_shapes_name_the_field() -> None:
    for field, kwargs in (("reach", {"reach": -1.0}), ("foreground_reach", {"foreground_reach": np.inf}),
                          ("tolerance", {"tolerance": 0.0}), ("gain", {"gain": np.nan}),
                          ("confident", {"confident": 0.0})):
        with pytest.raises(ValueError, match=f"^{field}"):
            RegionConfig(**kwargs)
    image, logits = _scene()
    with pytest.raises(ValueError, match="^logits"):
        apply_click_regions(logits[:-1], logits, image, np.zeros((1, 3)), np.array([0]), SAMPLING, CONFIG)
    with pytest.raises(ValueError, match="^labels"):
        apply_click_regions(logits, logits, image, np.zeros((2, 3)), np.array([0]), SAMPLING, CONFIG)


# --- in the predictor, with the shipped weights (which claim the cube from its box) -----------------------------


def _volume() -> np.ndarray:
    vol = np.zeros((24, 48, 48), np.float32)
    vol[6:18, 12:36, 12:36] = 100.0  # a bright cube on a dark background
    vol[22:, :, :] = 50.0  # keeps the foreground normalisation's percentiles apart (cube -> 1, background -> 0)
    return vol


def _masks_around_a_background_click(click_region_reach: float) -> tuple[np.ndarray, np.ndarray]:
    from app.models import PredictorConfig, build_predictor

    # confident=inf: the whole region is written, so the test sees where it acts, not the model's confidence.
    cfg = PredictorConfig(propagation_reach=0.0, click_region_reach=click_region_reach, click_region_foreground_reach=0.0,
                          click_region_confident=math.inf)
    p = build_predictor("compact", predictor_config=cfg)
    st = p.init_state(_volume(), (1.0, 1.0, 1.0))
    p.add_box(st, 1, [6, 12, 12, 17, 35, 35])
    before = p.get_mask(st, 1)
    p.add_clicks(st, 1, [[12, 24, 24]], [0], mode="decoder")
    return before, p.get_mask(st, 1)


def test_in_the_predictor_a_background_click_clears_the_cube_and_nothing_else_changes() -> None:
    torch.set_num_threads(1)
    before, on = _masks_around_a_background_click(30.0)
    _, off = _masks_around_a_background_click(0.0)
    inner = (slice(8, 16), slice(15, 33), slice(15, 33))  # the cube away from its partial-volume band
    assert before[inner].mean() > 0.9  # the box claimed the cube: the click points at all of it
    assert not on[inner].any()  # removed, not dented
    assert off[inner].mean() > 0.5  # the decoder alone dents it: the check above has teeth
    outside = ~binary_dilation(_volume() == 100.0, iterations=4)
    assert np.array_equal(on[outside], off[outside])
