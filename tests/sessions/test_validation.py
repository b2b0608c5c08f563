"""Bounds checks, world -> voxel mapping (against SimpleITK) and the net change of a multi-step request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

from app.coordinates import check_box, check_points, world_box_to_voxel, world_to_voxel
from app.errors import InvalidInput
from app.sessions.changes import net_change

SHAPE = (10, 20, 30)


@pytest.mark.parametrize(("box", "message"), [
    ([0, 0, 0, 10, 5, 5], "z range"),
    ([0, 0, -1, 5, 5, 5], "x range"),
    ([0, 6, 0, 5, 5, 5], "y1 < y0"),
    ([0, 0, 0, 5, 5], "6 values"),
])
def test_check_box_names_the_field(box: list[int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        check_box(box, SHAPE)
    assert info.value.field == "box" and info.value.message.startswith("box:")


def test_a_broken_rule_is_the_services_422_and_the_predictors_value_error() -> None:
    # One rule for both callers: the session services catch InvalidInput, the predictor's callers ValueError.
    with pytest.raises(ValueError, match="^points: point 0 y=20 is outside") as info:
        check_points([[0, 20, 0]], [1], SHAPE)
    assert isinstance(info.value, InvalidInput) and info.value.field == "points"


def test_check_box_accepts_the_whole_volume() -> None:
    assert check_box([0, 0, 0, 9, 19, 29], SHAPE) == (0, 0, 0, 9, 19, 29)


def test_check_points() -> None:
    assert check_points([[9, 19, 29]], [0], SHAPE) == ([(9, 19, 29)], [0])
    with pytest.raises(InvalidInput, match="y=20") as info:
        check_points([[0, 20, 0]], [1], SHAPE)
    assert info.value.field == "points"
    with pytest.raises(InvalidInput) as info:
        check_points([[0, 0, 0]], [3], SHAPE)
    assert info.value.field == "labels"


def test_world_to_voxel_matches_simpleitk() -> None:
    image = sitk.Image(30, 20, 10, sitk.sitkUInt8)  # ITK size (x, y, z)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-100.0, 50.0, 20.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # flipped, permuted axes
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, s, 20) for s in (30, 20, 10)], axis=1)  # (i, j, k)
    points = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in idx])
    got = world_to_voxel(points + 0.2 * (rng.random(points.shape) - 0.5), spacing_zyx=(2.5, 0.8, 0.7),
                         origin_xyz=image.GetOrigin(), direction=image.GetDirection())
    assert np.array_equal(got, idx[:, ::-1])
    lo, hi = points[0], points[1]
    box = world_box_to_voxel([*lo, *hi], spacing_zyx=(2.5, 0.8, 0.7), origin_xyz=image.GetOrigin(),
                             direction=image.GetDirection())
    zyx = idx[:2, ::-1]
    assert box == [*zyx.min(axis=0).tolist(), *zyx.max(axis=0).tolist()]


@dataclass
class _Step:
    indices: np.ndarray
    values: np.ndarray


@pytest.mark.parametrize("coordinate", [1e19, -1e300, 3e9])
def test_world_coordinates_past_any_volume_are_refused_by_name(coordinate: float) -> None:
    """Found by the OpenAPI fuzzer: a float past int64 cast to INT64_MIN, a defined-by-luck refusal."""
    geometry = dict(spacing_zyx=(2.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0), direction=np.eye(3).ravel())
    with pytest.raises(InvalidInput, match="^points: world coordinates map") as info:
        world_to_voxel(np.array([[1.0, coordinate, 2.0]]), **geometry)
    assert info.value.field == "points"
    with pytest.raises(InvalidInput, match="^box: ") as info:
        world_box_to_voxel([0.0, 0.0, 0.0, coordinate, 1.0, 1.0], **geometry)
    assert info.value.field == "box"


def test_net_change_cancels_flips_back() -> None:
    shape = (2, 3, 4)
    gru = _Step(np.array([1, 5, 7]), np.array([1, 1, 0], np.uint8))
    decoder = _Step(np.array([5, 7, 20]), np.array([0, 1, 1], np.uint8))  # 5 and 7 flip back
    count, bbox = net_change([gru, decoder], shape)
    assert count == 2  # voxels 1 and 20
    assert bbox == (0, 0, 0, 1, 2, 1)  # (0, 0, 1) and (1, 2, 0)
    assert net_change([gru], shape)[0] == 3
    assert net_change([], shape) == (0, None)
