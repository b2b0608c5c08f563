"""The field rules of the prompt requests, one function per field: run by the SDK before it sends anything
and by the server's request models (``app.schemas.prompts``, ``app.schemas.regions``) on what arrives.

Each takes the raw JSON-like value and returns it normalised (voxel indices as ints), or raises
``ValueError`` with a message that starts with the field's name ("box: z1 < z0"), which
``errors.field_from_message`` reads back. Voxel coordinates are (z, y, x) indices; boxes are INCLUSIVE
[z0, y0, x0, z1, y1, x1]; with ``world`` true the same fields carry LPS millimetres, (x, y, z) ordered.
Shapes, types and label values are checked here; bounds against the volume are checked by the server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from client.wire.paths import MAX_CLICKS_PER_REQUEST

MAX_SCRIBBLE_VOXELS = 1 << 16
"""Voxels one scribble request may list (a JSON list of triples: a larger region is better sent as a lasso)."""
MAX_LASSO_VERTICES = 4096
MAX_CONTOUR_COORD = 1e6
"""Largest |coordinate| of a lasso vertex, in voxels: a contour may run past the slice's edges (a user drags
off the canvas), but a vertex a million voxels out is a broken client, and arithmetic on it must stay finite."""
MAX_TEXT_LENGTH = 200

_AXES = ("z", "y", "x")


def numbers(name: str, value: Any, n: int | None) -> list[int | float]:
    """``value`` as a list of real numbers (no bools, no strings), of length ``n`` when given."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list of numbers, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise ValueError(f"{name}: expected {n} values, got {len(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name}: expected numbers, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{name}: values must be finite, got {v!r}")
    return list(value)


def voxel_ints(name: str, values: Sequence[float]) -> list[int]:
    """Voxel indices: whole, non-negative numbers, as ints."""
    out = []
    for v in values:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{name}: voxel indices must be integers, got {v!r} (set world=true for mm)")
        if v < 0:
            raise ValueError(f"{name}: voxel indices must be >= 0, got {int(v)}")
        out.append(int(v))
    return out


def check_box_order(box: Sequence[int]) -> None:
    """``ValueError`` naming ``box`` unless each upper corner of the inclusive box is at or past the lower one
    (the one rule the SDK, the server's schemas and its coordinate checks share)."""
    for axis in range(3):
        if box[axis + 3] < box[axis]:
            a = _AXES[axis]
            raise ValueError(f"box: {a}1 < {a}0 ({box[axis + 3]} < {box[axis]})")


def voxel_box(box: Sequence[float]) -> list[int]:
    """A 6-number box as an inclusive voxel box: ints, each upper corner at or past the lower one."""
    ints = voxel_ints("box", box)
    check_box_order(ints)
    return ints


def world_flag(value: Any) -> bool:
    """``world``: JSON true/false only (0, "no", ... are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"world: expected true or false, got {value!r}")
    return value


def click_points(value: Any) -> list[list[int | float]]:
    """1 to MAX_CLICKS_PER_REQUEST points of 3 numbers each (voxel or world: ``click_voxels`` narrows)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"points: expected a list of [z, y, x], got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_CLICKS_PER_REQUEST:
        raise ValueError(f"points: expected 1 to {MAX_CLICKS_PER_REQUEST} points, got {len(value)}")
    return [numbers(f"points[{i}]", p, 3) for i, p in enumerate(value)]


def click_voxels(points: Sequence[Sequence[float]]) -> list[list[int]]:
    return [voxel_ints(f"points[{i}]", list(p)) for i, p in enumerate(points)]


def click_labels(value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"labels: expected a list of 0/1, got {type(value).__name__}")
    for v in value:
        if isinstance(v, bool) or v not in (0, 1) or not isinstance(v, (int, float)):
            raise ValueError(f"labels: values must be 0 (background) or 1 (foreground), got {v!r}")
    return [int(v) for v in value]


def labels_per_point(n_points: int, labels: Sequence[int]) -> None:
    if len(labels) != n_points:
        raise ValueError(f"labels: expected {n_points} labels (one per point), got {len(labels)}")


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """A mode (``vocab.REFINE_MODES``, ``vocab.REGION_MODES``) spelled exactly."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


def text_name(value: Any) -> str:
    """The object's name of a text prompt, stripped: 1 to MAX_TEXT_LENGTH characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"text: expected a non-empty object name such as 'liver', got {value!r}")
    if len(value.strip()) > MAX_TEXT_LENGTH:
        raise ValueError(f"text: at most {MAX_TEXT_LENGTH} characters, got {len(value.strip())}")
    return value.strip()


def text_box(value: Any) -> list[int] | None:
    return None if value is None else voxel_ints("box", numbers("box", value, 6))


def text_points(value: Any) -> list[list[int]] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_CLICKS_PER_REQUEST:
        raise ValueError(f"points: expected 1 to {MAX_CLICKS_PER_REQUEST} points [z, y, x]")
    return [voxel_ints(f"points[{i}]", numbers(f"points[{i}]", p, 3)) for i, p in enumerate(value)]


def text_labels(points: Sequence[Sequence[int]] | None, labels: Sequence[int] | None) -> None:
    labels_per_point(len(points or []), list(labels or []))
    if any(v not in (0, 1) for v in labels or []):
        raise ValueError("labels: values must be 0 (background) or 1 (foreground)")


def region_label(value: Any) -> int:
    """The label of a scribble or lasso: 1 = the region is the object, 0 = it is not."""
    if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, (int, float)):
        raise ValueError(f"label: expected 0 (background) or 1 (foreground), got {value!r}")
    return int(value)


def scribble_voxels(value: Any) -> list[list[int]]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"voxels: expected a list of [z, y, x], got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_SCRIBBLE_VOXELS:
        raise ValueError(f"voxels: expected 1 to {MAX_SCRIBBLE_VOXELS} voxels, got {len(value)}")
    return [voxel_ints(f"voxels[{i}]", numbers(f"voxels[{i}]", v, 3)) for i, v in enumerate(value)]


def integer(name: str, value: Any) -> int:
    """A whole number (a float such as 2.0 passes; bools and strings do not)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def lasso_axis(value: Any) -> int:
    axis = integer("axis", value)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis: expected 0 (z), 1 (y) or 2 (x), got {axis}")
    return axis


def lasso_index(value: Any) -> int:
    index = integer("index", value)
    if index < 0:
        raise ValueError(f"index: must be >= 0, got {index}")
    return index


def lasso_contour(value: Any) -> list[list[float]]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"contour: expected a list of 2D vertices, got {type(value).__name__}")
    if not 3 <= len(value) <= MAX_LASSO_VERTICES:
        raise ValueError(f"contour: expected 3 to {MAX_LASSO_VERTICES} vertices, got {len(value)}")
    out = [[float(c) for c in numbers(f"contour[{i}]", v, 2)] for i, v in enumerate(value)]
    for i, (a, b) in enumerate(out):
        if max(abs(a), abs(b)) > MAX_CONTOUR_COORD:
            raise ValueError(f"contour[{i}]: coordinates must lie within +-{MAX_CONTOUR_COORD:g} voxels, "
                             f"got {[a, b]}")
    return out
