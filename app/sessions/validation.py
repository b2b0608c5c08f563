"""Checks of region prompts (scribbles, lassos) against a session's volume.

Run before any device work, so a bad request never waits for the device and never touches the session.
Messages start with the field name; the field is also set on the raised ``InvalidInput``. Boxes, clicks and
world coordinates follow the rules of ``app.coordinates``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.coordinates import AXES
from app.errors import InvalidInput
from app.models import regions
from client.wire.vocab import REGION_MODES

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
            raise InvalidInput(f"voxels: voxel {i} {AXES[axis]}={int(pts[i, axis])} is outside the volume "
                               f"(0..{shape[axis] - 1})", field="voxels")
    return regions.from_points(pts, shape)


def lasso_region(axis: int, index: int, contour: Sequence[Sequence[float]], shape: tuple[int, int, int]
                 ) -> np.ndarray:
    """The flat indices of a lasso: slice ``index`` along ``axis`` inside the closed ``contour``."""
    if not 0 <= index < shape[axis]:
        raise InvalidInput(f"index: slice {index} along {AXES[axis]} is outside the volume "
                           f"(0..{shape[axis] - 1})", field="index")
    try:
        return regions.fill_lasso(axis, index, contour, shape)
    except ValueError as e:
        raise InvalidInput(str(e), field="contour") from e
