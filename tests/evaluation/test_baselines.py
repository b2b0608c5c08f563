"""The training-free floors: box fill and the seeded random walker."""

from __future__ import annotations

import numpy as np

from evaluation.baselines import BoxFillMethod, RandomWalkerMethod, box_mask, random_walker_mask
from evaluation.cases import box_from_mask
from evaluation.click_rule import Click
from evaluation.metrics import dice


def _sphere_volume(shape=(24, 32, 32), centre=(12, 15, 17), radius=7.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.indices(shape)
    gt = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
    rng = np.random.default_rng(seed)
    image = np.clip(40 + 150 * gt + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)
    return image, gt


def test_box_mask_is_inclusive() -> None:
    m = box_mask((4, 5, 6), (1, 1, 2, 2, 3, 2))
    assert m.sum() == 2 * 3 * 1
    assert m[1, 1, 2] and m[2, 3, 2] and not m[3, 3, 2]


def test_random_walker_beats_box_fill_on_an_easy_sphere() -> None:
    image, gt = _sphere_volume()
    box = box_from_mask(gt)
    rw = random_walker_mask(image, (1.0, 1.0, 1.0), box, [])
    assert dice(gt, box_mask(gt.shape, box)) < 0.75  # a ball fills ~52 % of its box
    assert dice(gt, rw) > 0.9
    assert not rw[~box_mask(gt.shape, box)].any()  # outside the box is seeded background


def test_random_walker_on_a_downsampled_grid_still_segments() -> None:
    image, gt = _sphere_volume()
    rw = random_walker_mask(image, (2.0, 1.0, 1.0), box_from_mask(gt), [], max_voxels=10**3)  # ~2x coarser
    assert dice(gt, rw) > 0.95


def test_random_walker_follows_clicks() -> None:
    # Two touching blobs of the same brightness inside one box: a background click on the second removes it.
    shape = (16, 24, 40)
    zz, yy, xx = np.indices(shape)
    left = (zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 25
    right = (zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 27) ** 2 <= 25
    image = np.where(left | right, 200, 30).astype(np.uint8)
    box = box_from_mask(left | right)
    without = random_walker_mask(image, (1.0, 1.0, 1.0), box, [], core_fraction=0.9)
    assert without[8, 12, 27] and without[8, 12, 12]
    with_click = random_walker_mask(
        image, (1.0, 1.0, 1.0), box, [Click((8, 12, 27), 0), Click((8, 12, 12), 1)], core_fraction=0.9
    )
    assert not with_click[8, 12, 27] and with_click[8, 12, 12]
    assert dice(left, with_click) > dice(left, without)


def test_random_walker_without_box_uses_the_clicks() -> None:
    image, gt = _sphere_volume()
    rw = random_walker_mask(image, (1.0, 1.0, 1.0), None, [Click((12, 15, 17), 1)])
    assert rw[12, 15, 17]
    assert random_walker_mask(image, (1.0, 1.0, 1.0), None, []).sum() == 0


def test_method_sessions_answer_boxes_and_clicks() -> None:
    image, gt = _sphere_volume()
    box = box_from_mask(gt)
    fill = BoxFillMethod().open(image, (1.0, 1.0, 1.0))
    fill.add_box(3, box)
    before = fill.mask(3).copy()
    fill.add_click(3, Click((12, 15, 17), 0))
    assert np.array_equal(fill.mask(3), before) and before.sum() == box_mask(gt.shape, box).sum()

    rw = RandomWalkerMethod().open(image, (1.0, 1.0, 1.0))
    rw.add_box(3, box)
    assert dice(gt, rw.mask(3)) > 0.9
    rw.add_click(4, Click((12, 15, 17), 1))  # a new object from a click alone
    assert rw.mask(4)[12, 15, 17]
