"""Coordinates of a prompt: the voxel conventions, the box and click rules, and world (LPS mm) -> voxel mapping.

The one home of these rules on the server: the session services check every prompt with them before any device
work (the edge), and the predictor applies the same functions to its direct callers. The rules that need no
volume (field shapes and types, an inverted box) are the wire's, ``client.wire.rules``, run by the schemas and
the SDK; the prompt vocabulary (modes, step names) is ``client.wire.vocab``. Only numpy is imported.

Conventions:
    * Volume voxel indices are (z, y, x) into the (D, H, W) array (SimpleITK ``GetArrayFromImage`` order).
    * A user box is inclusive ``[z0, y0, x0, z1, y1, x1]``; a ``Bounds`` is half-open ``(z0, y0, x0, z1, y1, x1)``.
    * World coordinates are LPS millimetres ordered (x, y, z) like ITK points; a world box is two opposite
      corners ``[x0, y0, z0, x1, y1, z1]``.

A rule that fails raises ``CoordinateError``: both an ``InvalidInput`` (the service's 422, ``field`` set) and
a ``ValueError`` (what the predictor's callers catch); its message starts with the field name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.errors import InvalidInput
from client.wire.replies import Box6, Shape3
from client.wire.rules import check_box_order

AXES = ("z", "y", "x")
"""Names of the volume array's axes, in array order (SimpleITK ``GetArrayFromImage``)."""
InclusiveBox = Box6
"""A user box: inclusive voxel indices [z0, y0, x0, z1, y1, x1] (the wire's ``Box6``, ``client.wire.replies``)."""
Bounds = tuple[int, int, int, int, int, int]
"""Half-open voxel box (z0, y0, x0, z1, y1, x1)."""

_MAX_INDEX = float(2**31)  # no volume is this long along an axis


class CoordinateError(InvalidInput, ValueError):
    """A prompt's coordinates break a rule; the message starts with ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


def check_box(box: Sequence[int], shape: Shape3) -> InclusiveBox:
    """An inclusive voxel box [z0, y0, x0, z1, y1, x1] inside ``shape`` (D, H, W) and not inverted."""
    _check_length(box)
    b = [int(v) for v in box]
    try:
        check_box_order(b)
    except ValueError as e:
        raise CoordinateError("box", str(e).removeprefix("box: ")) from None
    for axis in range(3):
        lo, hi, size = b[axis], b[axis + 3], shape[axis]
        if lo < 0 or hi >= size:
            raise CoordinateError("box", f"{AXES[axis]} range [{lo}, {hi}] is outside the volume (0..{size - 1})")
    return (b[0], b[1], b[2], b[3], b[4], b[5])


def _check_length(box: Sequence[int]) -> None:
    if len(box) != 6:
        raise CoordinateError("box", f"expected 6 values, got {len(box)}")


def check_points(
    points: Sequence[Sequence[int]], labels: Sequence[int], shape: Shape3
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Voxel clicks (z, y, x) inside ``shape`` with 0/1 labels, one label per point."""
    if len(points) == 0:
        raise CoordinateError("points", "at least one point is required")
    if len(labels) != len(points):
        raise CoordinateError("labels", f"expected {len(points)} labels, got {len(labels)}")
    out: list[tuple[int, int, int]] = []
    for i, p in enumerate(points):
        if len(p) != 3:
            raise CoordinateError("points", f"point {i} has {len(p)} coordinates, expected 3 (z, y, x)")
        zyx = tuple(int(v) for v in p)
        for axis in range(3):
            if not 0 <= zyx[axis] < shape[axis]:
                raise CoordinateError(
                    "points", f"point {i} {AXES[axis]}={zyx[axis]} is outside the volume (0..{shape[axis] - 1})")
        out.append((zyx[0], zyx[1], zyx[2]))
    labs = [int(v) for v in labels]
    for i, lab in enumerate(labs):
        if lab not in (0, 1):
            raise CoordinateError("labels", f"label {i} is {lab}, expected 0 or 1")
    return out, labs


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
        raise CoordinateError(field, "world coordinates map to voxel indices beyond any volume")
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
