"""Bounds checks of prompts against a session's volume, and world (LPS mm) -> voxel mapping.

Run before any device work, so a bad request never waits for the device and never touches the session.
Messages start with the field name; the field is also set on the raised ``InvalidInput``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.errors import InvalidInput
from app.models import regions
from app.schemas.prompts import REGION_MODES

_AXES = ("z", "y", "x")
_MAX_INDEX = float(2**31)  # no volume is this long along an axis


def check_box(box: Sequence[int], shape: tuple[int, int, int]) -> tuple[int, int, int, int, int, int]:
    """An inclusive voxel box [z0, y0, x0, z1, y1, x1] inside ``shape`` (D, H, W) and not inverted."""
    if len(box) != 6:
        raise InvalidInput(f"box: expected 6 values, got {len(box)}", field="box")
    b = [int(v) for v in box]
    for axis in range(3):
        lo, hi, size, a = b[axis], b[axis + 3], shape[axis], _AXES[axis]
        if hi < lo:
            raise InvalidInput(f"box: {a}1 < {a}0 ({hi} < {lo})", field="box")
        if lo < 0 or hi >= size:
            raise InvalidInput(f"box: {a} range [{lo}, {hi}] is outside the volume (0..{size - 1})", field="box")
    return (b[0], b[1], b[2], b[3], b[4], b[5])


def check_points(
    points: Sequence[Sequence[int]], labels: Sequence[int], shape: tuple[int, int, int]
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Voxel clicks (z, y, x) inside ``shape`` with 0/1 labels, one label per point."""
    if len(points) == 0:
        raise InvalidInput("points: at least one point is required", field="points")
    if len(labels) != len(points):
        raise InvalidInput(f"labels: expected {len(points)} labels, got {len(labels)}", field="labels")
    out: list[tuple[int, int, int]] = []
    for i, p in enumerate(points):
        if len(p) != 3:
            raise InvalidInput(f"points: point {i} has {len(p)} coordinates, expected 3 (z, y, x)", field="points")
        zyx = tuple(int(v) for v in p)
        for axis in range(3):
            if not 0 <= zyx[axis] < shape[axis]:
                raise InvalidInput(
                    f"points: point {i} {_AXES[axis]}={zyx[axis]} is outside the volume (0..{shape[axis] - 1})",
                    field="points",
                )
        out.append((zyx[0], zyx[1], zyx[2]))
    labs = [int(v) for v in labels]
    for i, lab in enumerate(labs):
        if lab not in (0, 1):
            raise InvalidInput(f"labels: label {i} is {lab}, expected 0 or 1", field="labels")
    return out, labs


MAX_REGION_VOXELS = 1 << 22
"""Voxels one scribble or lasso may cover (a 2048 x 2048 slice): its flat indices are checked and held in memory
before any device work."""


def check_region(region: np.ndarray, label: int, mode: str, shape: tuple[int, int, int]) -> np.ndarray:
    """A region prompt's flat voxel indices (ascending, unique, inside ``shape``), its 0/1 label and its mode."""
    if label not in (0, 1) or isinstance(label, bool):
        raise InvalidInput(f"label: expected 0 or 1, got {label!r}", field="label")
    if mode not in REGION_MODES:
        raise InvalidInput(f"mode: expected one of {list(REGION_MODES)} for a region, got {mode!r}", field="mode")
    if np.asarray(region).size > MAX_REGION_VOXELS:
        raise InvalidInput(f"region: {np.asarray(region).size} voxels, at most {MAX_REGION_VOXELS} per prompt",
                           field="region")
    try:
        return regions.normalise(region, shape)
    except ValueError as e:
        raise InvalidInput(str(e), field="region") from e


def scribble_region(voxels: Sequence[Sequence[int]], shape: tuple[int, int, int]) -> np.ndarray:
    """The flat indices of a scribble's (z, y, x) voxels, each inside ``shape``."""
    pts = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    for axis in range(3):
        bad = np.flatnonzero((pts[:, axis] < 0) | (pts[:, axis] >= shape[axis]))
        if bad.size:
            i = int(bad[0])
            raise InvalidInput(f"voxels: voxel {i} {_AXES[axis]}={int(pts[i, axis])} is outside the volume "
                               f"(0..{shape[axis] - 1})", field="voxels")
    return regions.from_points(pts, shape)


def lasso_region(axis: int, index: int, contour: Sequence[Sequence[float]], shape: tuple[int, int, int]
                 ) -> np.ndarray:
    """The flat indices of a lasso: slice ``index`` along ``axis`` inside the closed ``contour``."""
    if not 0 <= index < shape[axis]:
        raise InvalidInput(f"index: slice {index} along {_AXES[axis]} is outside the volume "
                           f"(0..{shape[axis] - 1})", field="index")
    try:
        return regions.fill_lasso(axis, index, contour, shape)
    except ValueError as e:
        raise InvalidInput(str(e), field="contour") from e


def world_to_voxel(
    points_xyz: np.ndarray | Sequence[Sequence[float]],
    *,
    spacing_zyx: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
    field: str = "points",
) -> np.ndarray:
    """LPS points (N, 3) as (x, y, z) mm -> nearest voxel indices (N, 3) as (z, y, x).

    ITK's model: ``point = origin + direction @ diag(spacing_xyz) @ index_ijk`` with index (i, j, k) =
    (x, y, z) voxel indices; the array order used everywhere else is (k, j, i).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    s = np.asarray(spacing_zyx, dtype=np.float64)[::-1]
    m = d @ np.diag(s)
    ijk = np.linalg.solve(m, (np.asarray(points_xyz, dtype=np.float64) - np.asarray(origin_xyz)).T).T
    zyx = np.rint(ijk[:, ::-1])
    # A float past int64 has no defined integer cast (x86 gives INT64_MIN): refuse it here, by name.
    if zyx.size and not (np.isfinite(zyx).all() and np.abs(zyx).max() < _MAX_INDEX):
        raise InvalidInput(f"{field}: world coordinates map to voxel indices beyond any volume", field=field)
    return zyx.astype(np.int64)


def world_box_to_voxel(
    box_xyz: Sequence[float],
    *,
    spacing_zyx: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
) -> list[int]:
    """Two opposite LPS corners [x0, y0, z0, x1, y1, z1] -> inclusive voxel box [z0, y0, x0, z1, y1, x1]."""
    corners = np.asarray(box_xyz, dtype=np.float64).reshape(2, 3)
    vox = world_to_voxel(corners, spacing_zyx=spacing_zyx, origin_xyz=origin_xyz, direction=direction, field="box")
    lo, hi = vox.min(axis=0), vox.max(axis=0)
    return [int(v) for v in (*lo, *hi)]
