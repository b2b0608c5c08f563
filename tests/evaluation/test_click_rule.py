"""The simulated click: hand-computed cases, and agreement with the official algorithm on random errors."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from evaluation.click_rule import Click, next_click, padded_crop_edt, sample_max_coord


def _official_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int, int], int] | None:
    """The challenge's CVPR25_iter_eval.py steps, on the whole volume, with numpy's global seed."""
    error = (pred != gt).astype(np.uint8)
    if error.sum() == 0:
        return None
    labels = cc3d.connected_components(error, connectivity=26)
    sizes = np.bincount(labels.flat)
    sizes[0] = 0
    component = labels == np.argmax(sizes)
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    shape = hi - lo
    pad = np.maximum((shape * 0.25).astype(int), 1)
    crop = np.zeros(shape + 2 * pad, dtype=np.uint8)
    crop[pad[0] : pad[0] + shape[0], pad[1] : pad[1] + shape[1], pad[2] : pad[2] + shape[2]] = component[
        lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]
    ]
    edt = distance_transform_edt(crop)[pad[0] : pad[0] + shape[0], pad[1] : pad[1] + shape[1], pad[2] : pad[2] + shape[2]]
    full = np.zeros(component.shape, dtype=edt.dtype)
    full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = edt
    np.random.seed(42)
    maxima = np.argwhere(full == full.max())
    centre = tuple(int(v) for v in maxima[np.random.choice(len(maxima))])
    return centre, int(gt[centre])


def test_perfect_prediction_gives_no_click() -> None:
    gt = np.zeros((4, 5, 6), dtype=bool)
    gt[1:3, 1:4, 2:5] = True
    assert next_click(gt.copy(), gt) is None
    assert next_click(np.zeros_like(gt), np.zeros_like(gt)) is None


def test_ties_are_broken_by_a_fresh_seed_42_choice() -> None:
    # A 1x1x4 missed line: padded crop 3x3x6, every voxel is 1 from the zero border -> 4 tied maxima.
    gt = np.zeros((5, 5, 8), dtype=bool)
    gt[2, 2, 1:5] = True
    click = next_click(np.zeros_like(gt), gt)
    # np.random.seed(42); np.random.choice(4) == 2 -> the third voxel in C order.
    assert click == Click(point=(2, 2, 3), label=1)
    # The same answer on every call, whatever numpy's global state is.
    np.random.seed(7)
    np.random.random(10)
    assert next_click(np.zeros_like(gt), gt) == click


def test_sample_max_coord_matches_the_global_seed_form() -> None:
    edt = np.zeros((3, 4, 5))
    edt[0, 1, 1] = edt[1, 2, 3] = edt[2, 0, 4] = edt[2, 3, 0] = 2.0  # 4 ties, plus lower values
    edt[1, 1, 1] = 1.0
    np.random.seed(42)
    expected = tuple(int(v) for v in np.argwhere(edt == 2.0)[np.random.choice(4)])
    assert sample_max_coord(edt) == expected == (2, 0, 4)


def test_largest_of_several_error_components_wins() -> None:
    gt = np.zeros((12, 12, 12), dtype=bool)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1:3] = True  # missed 2x2x2 = 8 voxels
    gt[6:9, 6:9, 6:9] = True  # missed 3x3x3 = 27 voxels: its centre is the unique maximum (distance 2)
    pred[10, 10, 0] = True  # a single false positive
    assert next_click(pred, gt) == Click(point=(7, 7, 7), label=1)


def test_diagonal_voxels_form_one_26_connected_component() -> None:
    # Three voxels touching only at corners are one component of 3, larger than the separate pair.
    gt = np.zeros((8, 8, 8), dtype=bool)
    gt[0, 0, 0] = gt[1, 1, 1] = gt[2, 2, 2] = True
    gt[6, 6, 5] = gt[6, 6, 6] = True
    click = next_click(np.zeros_like(gt), gt)
    assert click is not None and click.point in {(0, 0, 0), (1, 1, 1), (2, 2, 2)}


def test_over_segmentation_gives_a_background_click() -> None:
    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[1:4, 1:4, 1:4] = True
    pred = gt.copy()
    pred[5:10, 5:10, 5:10] = True  # 125 extra voxels, centre (7, 7, 7)
    assert next_click(pred, gt) == Click(point=(7, 7, 7), label=0)


def test_under_segmentation_gives_a_foreground_click() -> None:
    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[2:7, 2:7, 2:7] = True
    pred = gt.copy()
    pred[2:5, 2:5, 4:7] = False  # missed 3x3x3 block: unique maximum at its centre
    assert next_click(pred, gt) == Click(point=(3, 3, 5), label=1)


def test_component_touching_the_volume_border_is_closed_by_the_padding() -> None:
    # The component spans the whole z range: without the zero padding, z would be unbounded.
    gt = np.zeros((6, 10, 10), dtype=bool)
    gt[:, 2:8, 2:8] = True
    edt, origin = padded_crop_edt(gt)
    assert tuple(origin) == (0, 2, 2)
    assert edt.shape == (6, 6, 6)
    assert edt.max() == 3.0
    assert set(map(tuple, np.argwhere(edt == 3.0))) == {
        (z, y, x) for z in (2, 3) for y in (2, 3) for x in (2, 3)
    }
    # 8 tied maxima; np.random.seed(42); np.random.choice(8) == 6 -> (3, 3, 2) in the crop.
    assert next_click(np.zeros_like(gt), gt) == Click(point=(3, 5, 4), label=1)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="^prediction"):
        next_click(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_official_algorithm_on_random_errors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(6, 18, size=3))
    gt = rng.random(shape) < 0.35
    pred = gt ^ (rng.random(shape) < rng.choice([0.02, 0.1, 0.3]))
    click = next_click(pred, gt)
    expected = _official_click(pred, gt)
    assert expected is not None and click is not None
    assert (click.point, click.label) == expected
    assert pred[click.point] != gt[click.point]  # always inside the error


def test_a_single_voxel_error_is_clicked_on_that_voxel() -> None:
    """The smallest error (one voxel, so every component has size 1) is still found, not the background."""
    gt = np.zeros((6, 7, 8), dtype=bool)
    gt[1:5, 2:6, 2:7] = True
    pred = gt.copy()
    pred[3, 4, 4] = False  # one missed voxel inside the object
    assert next_click(pred, gt) == Click((3, 4, 4), 1)
    pred = gt.copy()
    pred[0, 0, 7] = True  # one stray voxel in a corner of the volume
    assert next_click(pred, gt) == Click((0, 0, 7), 0)


def test_masks_given_as_0_1_numbers_are_read_as_booleans() -> None:
    gt = np.zeros((6, 7, 8), dtype=bool)
    gt[1:5, 2:6, 2:7] = True
    pred = gt.copy()
    pred[1:5, 2:6, 5:7] = False
    expected = next_click(pred, gt)
    assert expected is not None and expected.label == 1
    for dtype in (np.float32, np.uint8):
        assert next_click(pred.astype(dtype), gt.astype(dtype)) == expected, dtype
