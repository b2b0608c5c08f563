"""Region prompts (scribbles and lassos) as voxel sets: filling, run-length coding, click sampling, boxes.

A region is a set of voxels of the (D, H, W) volume, held as ascending unique flat C-order indices (int64):

* a **scribble** is the voxels a user painted (any shape, any thickness, one or several slices);
* a **lasso** is a closed 2D contour on one slice, filled (even-odd rule, boundary included) to a region.

The predictor feeds a region to the model the way it feeds clicks (a few voxels sampled from it become clicks
with the region's label) and then constrains the result (every voxel of the region ends with that label).
Histories record a region as runs ``[[start, length], ...]`` of consecutive flat indices: a filled lasso is one
run per row, so even a large region stays small in the prompt log. numpy and scipy (shared by the service, the
evaluation and the nnInteractive adapter; scipy for the click sampling's depth).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from app.coordinates import Bounds, Shape3

REGION_CLICKS = 5
"""Clicks sampled from a region: enough to tell the decoder where the region lies, few enough to leave the
decision at the boundary to the model (the region constraint takes care of the region itself)."""


def normalise(flat: np.ndarray | Sequence[int], shape: Shape3) -> np.ndarray:
    """Ascending unique int64 flat indices inside ``shape``; raises ``ValueError`` naming ``region``."""
    arr = np.asarray(flat)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("region: expected a 1D array of integer flat voxel indices")
    if arr.size == 0:
        raise ValueError("region: the region is empty (no voxel)")
    total = int(np.prod(shape))
    if int(arr.min()) < 0 or int(arr.max()) >= total:
        raise ValueError(f"region: voxel indices must lie in 0..{total - 1} for a volume of shape {list(shape)}")
    arr = arr.astype(np.int64, copy=False)
    if bool((arr[1:] > arr[:-1]).all()):
        return arr  # already ascending and unique (checked once at the service's edge): a linear pass, no sort
    return np.unique(arr)


def from_mask(mask: np.ndarray) -> np.ndarray:
    """The flat indices of the non-zero voxels of a (D, H, W) mask."""
    return np.flatnonzero(np.asarray(mask).reshape(-1)).astype(np.int64)


def from_points(points: np.ndarray | Sequence[Sequence[int]], shape: Shape3) -> np.ndarray:
    """The region of (N, 3) voxel indices (z, y, x), already checked against ``shape``."""
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    return np.unique(np.ravel_multi_index(tuple(pts.T), shape)).astype(np.int64)


def fill_lasso(axis: int, index: int, contour: np.ndarray | Sequence[Sequence[float]], shape: Shape3) -> np.ndarray:
    """Flat indices of the slice ``index`` along ``axis`` inside the closed polygon ``contour``.

    ``contour``: (N >= 3, 2) vertices in the slice's two remaining axes, in volume order (axis 0 -> (y, x),
    axis 1 -> (z, x), axis 2 -> (z, y)); the last vertex joins the first. A voxel belongs to the lasso when its
    centre is inside (even-odd rule) or its centre lies on the contour's outline (so a thin lasso never fills
    to nothing). Raises ``ValueError`` when the fill is empty.
    """
    verts = np.asarray(contour, dtype=np.float64).reshape(-1, 2)
    rest = [s for a, s in enumerate(shape) if a != axis]
    plane = (rest[0], rest[1])
    rows, cols = np.mgrid[0:plane[0], 0:plane[1]]
    inside = _even_odd(verts, rows.astype(np.float64), cols.astype(np.float64)) | _on_outline(verts, plane)
    if not inside.any():
        raise ValueError("contour: the lasso encloses no voxel centre of the slice")
    grid = np.zeros(shape, dtype=bool)
    where: list[slice | int] = [slice(None)] * 3
    where[axis] = index
    grid[tuple(where)] = inside
    return from_mask(grid)


def _even_odd(verts: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Point-in-polygon by ray crossing along +c for every (r, c) grid centre."""
    inside = np.zeros(r.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        r0, c0 = verts[i]
        r1, c1 = verts[(i + 1) % n]
        if r0 == r1:
            continue  # a horizontal edge never crosses a horizontal ray
        crosses = (r0 > r) != (r1 > r)
        c_at = c0 + (r - r0) * (c1 - c0) / (r1 - r0)
        inside ^= crosses & (c < c_at)
    return inside


def _on_outline(verts: np.ndarray, plane: tuple[int, int]) -> np.ndarray:
    """The slice voxels the contour's edges pass through (sampled at half-voxel steps, rounded).

    Each edge is first clipped to the slice (one voxel of margin), so the work is bounded by the slice's size
    whatever the coordinates: an edge from far outside costs no more than one that crosses the slice.
    """
    out = np.zeros(plane, dtype=bool)
    n = len(verts)
    for i in range(n):
        clipped = _clip_segment(verts[i], verts[(i + 1) % n], plane)
        if clipped is None:
            continue
        a, b = clipped
        steps = int(np.ceil(2 * np.abs(b - a).max())) + 1
        t = np.linspace(0.0, 1.0, steps)[:, None]
        pts = np.rint(a + t * (b - a)).astype(np.int64)
        ok = (pts[:, 0] >= 0) & (pts[:, 0] < plane[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < plane[1])
        out[pts[ok, 0], pts[ok, 1]] = True
    return out


def _clip_segment(a: np.ndarray, b: np.ndarray, plane: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The part of segment a-b inside [-1, plane] on both axes (Liang-Barsky), or None when it misses."""
    d = b - a
    t0, t1 = 0.0, 1.0
    for axis in range(2):
        lo, hi = -1.0, float(plane[axis])
        if d[axis] == 0.0:
            if not lo <= a[axis] <= hi:
                return None
            continue
        ta, tb = (lo - a[axis]) / d[axis], (hi - a[axis]) / d[axis]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
        if t0 > t1:
            return None
    return a + t0 * d, a + t1 * d


def to_runs(flat: np.ndarray) -> list[list[int]]:
    """Ascending unique flat indices -> ``[[start, length], ...]`` of consecutive indices."""
    if flat.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [flat.size]))
    return [[int(flat[s]), int(e - s)] for s, e in zip(starts, ends, strict=True)]


def from_runs(runs: Sequence[Sequence[int]]) -> np.ndarray:
    """Inverse of ``to_runs``."""
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(int(s), int(s) + int(n), dtype=np.int64) for s, n in runs])


def bounds(flat: np.ndarray, shape: Shape3) -> Bounds:
    """Half-open bounding box of a non-empty region."""
    zyx = np.stack(np.unravel_index(flat, shape), axis=1)
    lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


def sample_clicks(flat: np.ndarray, shape: Shape3, n: int = REGION_CLICKS) -> np.ndarray:
    """Up to ``n`` voxels of the region as (K, 3) clicks (z, y, x), deterministic.

    Only the region's core is sampled: the voxels at least half the region's largest depth (distance to its
    outside) inside it. A click reads as "this spot is the object", and clicks on the outline of a lasso sit
    where the object ends, which leads the decoder past it; a thin scribble is all core. The first click is
    the core voxel nearest to the core's centroid (inside a lasso, the middle of what was drawn), the others
    are picked by farthest-point sampling so that they spread over the core (a long scribble is read along
    its length, not at one end).
    """
    zyx = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    if len(zyx) <= n:
        return zyx
    zyx = zyx[_core(zyx)]
    if len(zyx) <= n:
        return zyx
    centre = zyx.mean(axis=0)
    picked = [int(np.argmin(((zyx - centre) ** 2).sum(axis=1)))]
    dist = ((zyx - zyx[picked[0]]) ** 2).sum(axis=1)
    while len(picked) < n:
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, ((zyx - zyx[nxt]) ** 2).sum(axis=1))
    return zyx[picked]


def _core(zyx: np.ndarray) -> np.ndarray:
    """Which of the region voxels ``zyx`` lie at least half the region's largest depth inside it (measured in
    the axes the region spans: a lasso's depth is in its slice's plane)."""
    lo = zyx.min(axis=0)
    spans = [a for a in range(3) if zyx[:, a].max() > lo[a]]
    if len(spans) < 2:  # a straight stroke: its depth would run along it, it is all core
        return np.ones(len(zyx), dtype=bool)
    rel = zyx[:, spans] - lo[spans] + 1
    grid = np.zeros(tuple(rel.max(axis=0) + 2), dtype=bool)  # one voxel of outside on every side
    local = tuple(rel.T)
    grid[local] = True
    depth = distance_transform_edt(grid)[local]
    return depth >= max(1.0, 0.5 * float(depth.max()))


def box_around(flat: np.ndarray, shape: Shape3, spacing: Sequence[float], margin: float = 0.5
               ) -> tuple[int, int, int, int, int, int]:
    """An inclusive box for a region that starts an object: its bounding box grown on every axis by
    ``margin`` times the region's largest physical extent (at least one voxel).

    Why: the boxed models need a box, and a lasso drawn on one slice outlines a structure that also extends
    across slices; growing by the in-plane size (in mm, so anisotropic spacing is respected) covers that.
    """
    b = bounds(flat, shape)
    extent_mm = max((b[a + 3] - b[a]) * float(spacing[a]) for a in range(3))
    out = []
    for a in range(3):
        grow = max(1, int(np.ceil(margin * extent_mm / float(spacing[a]))))
        out.append((max(0, b[a] - grow), min(shape[a] - 1, b[a + 3] - 1 + grow)))
    return (out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1])
