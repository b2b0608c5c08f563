"""The model's coordinate work: arguments checked, bounds arithmetic, the zoom-out frame and zoom-in windows.

Conventions (the voxel conventions and the box and click rules are ``app.coordinates``'):
    * The zoom-out view of ``zoom_in="windows"`` / ``"resample"`` is the foreground crop resized with legacy
      nearest interpolation to the model frame (MONAI ``Resize(mode="nearest")`` = ``F.interpolate(mode="nearest")``:
      frame index ``o`` reads crop index ``floor(o * in / out)``). Boxes are mapped exactly through that rule
      (the frame voxels whose source lies inside the box); points map through voxel centres,
      ``f = (v + 0.5) * out / in - 0.5``. SegVol itself resizes with ``nearest-exact`` and maps points
      differently: its rules live in ``app.models.segvol_inference`` (``zoom_in="segvol"``).
    * Zoom-in windows work on the full volume grid at native resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.coordinates import Bounds, CoordinateError, InclusiveBox, Shape3, check_box, check_points

# --- validation (messages start with the argument name) ---------------------------------------------------


def validate_volume(volume: object) -> np.ndarray:
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"volume: expected a 3D (D, H, W) array, got {arr.ndim}D with shape {arr.shape}")
    if min(arr.shape) < 1:
        raise ValueError(f"volume: empty shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise ValueError(f"volume: expected real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("volume: contains NaN or infinite values")
    return arr


def validate_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected 3 positive numbers, got {spacing!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing: expected 3 positive finite numbers (sz, sy, sx), got {spacing!r}")
    return sp  # type: ignore[return-value]


def _as_int_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected integers, got {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integer voxel indices")
    return arr.astype(np.int64)


def validate_box(box: Sequence[int], shape: Shape3) -> InclusiveBox:
    """An inclusive box of integer voxel indices inside the volume (``app.coordinates.check_box``)."""
    arr = _as_int_array(box, "box")
    if arr.ndim != 1:
        raise CoordinateError("box", f"expected 6 integers [z0, y0, x0, z1, y1, x1], got shape {arr.shape}")
    return check_box(arr.tolist(), shape)


def validate_points(points: object, labels: object, shape: Shape3) -> tuple[np.ndarray, np.ndarray]:
    """Clicks of integer voxel indices inside the volume (``app.coordinates.check_points``); returns (N, 3)
    int64 points and (N,) int64 labels in {0, 1}."""
    pts, labs = _as_int_array(points, "points"), _as_int_array(labels, "labels")
    if pts.ndim != 2:
        raise CoordinateError("points", f"expected a non-empty (N, 3) list of [z, y, x], got shape {pts.shape}")
    if labs.ndim != 1:
        raise CoordinateError("labels", f"expected one label per point, got shape {labs.shape}")
    checked, checked_labels = check_points(pts.tolist(), labs.tolist(), shape)
    return np.asarray(checked, dtype=np.int64).reshape(-1, 3), np.asarray(checked_labels, dtype=np.int64)


# --- bounds ------------------------------------------------------------------------------------------------


def box_to_bounds(box: InclusiveBox) -> Bounds:
    z0, y0, x0, z1, y1, x1 = box
    return (z0, y0, x0, z1 + 1, y1 + 1, x1 + 1)


def bounds_shape(b: Bounds) -> Shape3:
    return (b[3] - b[0], b[4] - b[1], b[5] - b[2])


def bounds_union(a: Bounds | None, b: Bounds | None) -> Bounds | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), max(a[4], b[4]), max(a[5], b[5]))


def bounds_intersection(a: Bounds, b: Bounds) -> Bounds | None:
    r = (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]), min(a[4], b[4]), min(a[5], b[5]))
    return r if r[3] > r[0] and r[4] > r[1] and r[5] > r[2] else None


def grow_bounds(b: Bounds, margin: Sequence[int] | int, shape: Shape3) -> Bounds:
    m = (margin,) * 3 if isinstance(margin, int) else tuple(margin)
    return (
        max(b[0] - m[0], 0), max(b[1] - m[1], 0), max(b[2] - m[2], 0),
        min(b[3] + m[0], shape[0]), min(b[4] + m[1], shape[1]), min(b[5] + m[2], shape[2]),
    )


def expand_to_min_size(b: Bounds, min_size: Shape3, shape: Shape3) -> Bounds:
    """Grow ``b`` symmetrically to at least ``min_size`` per axis (clamped to ``shape``, shifted inside it)."""
    lo, hi = list(b[:3]), list(b[3:])
    for ax in range(3):
        need = min(min_size[ax], shape[ax])
        ext = hi[ax] - lo[ax]
        if ext < need:
            start = lo[ax] - (need - ext) // 2
            start = min(max(start, 0), shape[ax] - need)
            lo[ax], hi[ax] = start, start + need
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def ball_bounds(points: np.ndarray, radius: float, shape: Shape3) -> Bounds | None:
    """Bounds covering every point's radius-``radius`` ball, clipped to the volume."""
    if len(points) == 0:
        return None
    r = int(math.ceil(radius))
    lo = np.maximum(points.min(axis=0) - r, 0)
    hi = np.minimum(points.max(axis=0) + r + 1, np.asarray(shape))
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


def mask_bounds(mask: np.ndarray) -> Bounds | None:
    """Half-open bounds of the nonzero voxels of a (D, H, W) mask, None if empty."""
    idx = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(len(i) == 0 for i in idx):
        return None
    return (int(idx[0][0]), int(idx[1][0]), int(idx[2][0]), int(idx[0][-1]) + 1, int(idx[1][-1]) + 1,
            int(idx[2][-1]) + 1)


def slices_of(b: Bounds) -> tuple[slice, slice, slice]:
    return (slice(b[0], b[3]), slice(b[1], b[4]), slice(b[2], b[5]))


# --- zoom-out frame mapping ----------------------------------------------------------------------------------


def roi_bounds(box: InclusiveBox, margin: float, shape: Shape3) -> Bounds:
    """The resampled ROI of a box: each side grown by ``margin`` x the box extent (+1 voxel), inside ``shape``.

    Shared by the predictor's ``zoom_in="resample"`` path and the training's ROI views, so both crop alike.
    """
    b = box_to_bounds(box)
    return grow_bounds(b, [int(round(margin * e)) + 1 for e in bounds_shape(b)], shape)


def box_to_frame(box: InclusiveBox, crop: Bounds, frame: Shape3) -> tuple[float, ...] | None:
    """Map an inclusive volume box into the zoom-out frame (inclusive frame voxel box), None if outside the crop.

    Exactly the frame voxels whose nearest-resize source lies inside the box; a box thinner than one frame
    voxel maps to the single frame voxel nearest its centre.
    """
    cs = bounds_shape(crop)
    out = []
    for ax in range(3):
        a, b = box[ax] - crop[ax], box[ax + 3] - crop[ax]
        if b < 0 or a >= cs[ax]:
            return None
        a, b = max(a, 0), min(b, cs[ax] - 1)
        n_in, n_out = cs[ax], frame[ax]
        lo = math.ceil(a * n_out / n_in - 1e-9)
        hi = math.ceil((b + 1) * n_out / n_in - 1e-9) - 1
        if hi < lo:
            lo = hi = min(int(((a + b + 1) / 2) * n_out / n_in), n_out - 1)
        out.append((float(lo), float(hi)))
    return (out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1])


def points_to_frame(points: np.ndarray, crop: Bounds, frame: Shape3) -> np.ndarray:
    """(N, 3) volume voxel indices -> (N, 3) float frame coordinates through voxel centres."""
    cs = np.asarray(bounds_shape(crop), dtype=np.float64)
    rel = points.astype(np.float64) - np.asarray(crop[:3], dtype=np.float64)
    f = (rel + 0.5) * (np.asarray(frame, dtype=np.float64) / cs) - 0.5
    return np.clip(f, 0.0, np.asarray(frame, dtype=np.float64) - 1)


def frame_bounds_to_volume(fb: Bounds, crop: Bounds, frame: Shape3) -> Bounds:
    """Conservative volume bounds of the region that trilinear upsampling of frame voxels ``fb`` can reach."""
    cs = bounds_shape(crop)
    lo, hi = [], []
    for ax in range(3):
        s = cs[ax] / frame[ax]
        lo.append(max(int(math.floor((fb[ax] - 0.5) * s)), 0) + crop[ax])
        hi.append(min(int(math.ceil((fb[ax + 3] + 0.5) * s)), cs[ax]) + crop[ax])
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


# --- zoom-in windows ---------------------------------------------------------------------------------------------


def box_in_window(box: InclusiveBox, window: Bounds) -> tuple[float, ...] | None:
    """The part of an inclusive volume box inside a window, in window coordinates (inclusive), or None."""
    inter = bounds_intersection(box_to_bounds(box), window)
    if inter is None:
        return None
    return tuple(float(inter[ax] - window[ax % 3]) if ax < 3 else float(inter[ax] - 1 - window[ax % 3])
                 for ax in range(6))


def points_in_window(points: np.ndarray, labels: np.ndarray, window: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """Points inside a window, in window coordinates (float), with their labels."""
    lo, hi = np.asarray(window[:3]), np.asarray(window[3:])
    inside = np.all((points >= lo) & (points < hi), axis=1)
    return (points[inside] - lo).astype(np.float64), labels[inside]
