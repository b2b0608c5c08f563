"""The click contract: clicked voxel obeyed, the clicked error region fixed, object size groups."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.click_contract import click_outcome, clicked_error_region, size_group
from evaluation.click_rule import Click


def _blob_case() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: one cube. Prediction: the cube plus a separate 3x3x3 false-positive blob."""
    gt = np.zeros((10, 12, 12), dtype=bool)
    gt[2:6, 2:6, 2:6] = True
    before = gt.copy()
    before[6:9, 8:11, 8:11] = True  # touches nothing of the cube: its own error component
    return gt, before


def test_clicked_error_region_is_the_26_connected_error_component_of_the_click() -> None:
    gt, before = _blob_case()
    before[1, 1, 1] = True  # a second false positive, diagonal to the cube: not part of the blob's region
    region = clicked_error_region(before, gt, (7, 9, 9))
    assert region.sum() == 27 and region[6:9, 8:11, 8:11].all()
    assert not clicked_error_region(before, gt, (3, 3, 3)).any()  # a right voxel has no error region


def test_a_removed_blob_is_fixed_a_dented_one_is_not() -> None:
    gt, before = _blob_case()
    click = Click(point=(7, 9, 9), label=0)
    removed = gt.copy()
    assert click_outcome(before, removed, gt, click).region_fixed == 1.0
    assert click_outcome(before, removed, gt, click).obeyed == 1.0
    dented = before.copy()
    dented[7, 9, 9] = False
    outcome = click_outcome(before, dented, gt, click)
    assert outcome.obeyed == 1.0 and outcome.region_fixed == pytest.approx(1 / 27)
    ignored = click_outcome(before, before, gt, click)
    assert ignored.obeyed == 0.0 and ignored.region_fixed == 0.0


def test_a_foreground_click_is_obeyed_when_the_voxel_joins_the_class() -> None:
    gt, _ = _blob_case()
    before = gt.copy()
    before[2:6, 2:6, 4:6] = False  # half the cube missed: one 32-voxel error region
    click = Click(point=(3, 3, 4), label=1)
    after = before.copy()
    after[2:6, 2:6, 4] = True  # half of the missed part added
    outcome = click_outcome(before, after, gt, click)
    assert outcome.obeyed == 1.0 and outcome.region_fixed == pytest.approx(0.5)
    # Fixing the region while losing the clicked voxel is not obeying.
    after[3, 3, 4] = False
    assert click_outcome(before, after, gt, click).obeyed == 0.0


def test_shapes_must_match() -> None:
    gt, before = _blob_case()
    with pytest.raises(ValueError, match="^after"):
        click_outcome(before, gt[:-1], gt, Click(point=(0, 0, 0), label=0))


@pytest.mark.parametrize(("voxels", "group"), [(50, "<1k"), (999, "<1k"), (1_000, "1k-20k"),
                                                (20_000, "1k-20k"), (20_001, ">20k")])
def test_size_groups(voxels: int, group: str) -> None:
    assert size_group(voxels) == group
