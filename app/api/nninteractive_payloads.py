"""Decoding and checking nnInteractive request payloads (X-Meta, NNIA bodies, boxes, points, masks).

Everything here runs before the lease's session is touched, so a refused request changes nothing; messages
name the field at fault. Coordinates are voxel indices of the uploaded image's axes 1..3 (= our (D, H, W)).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from app.errors import InvalidInput
from app.models import regions
from app.schemas import nnia
from app.schemas.errors import detail_from_pydantic
from app.schemas.nninteractive import META_HEADER
from app.sessions.nninteractive_leases import Box3

M = TypeVar("M", bound=BaseModel)


def read_meta(raw: str | None, model: type[M]) -> M:
    """The X-Meta header as ``model``; a missing header = the model's defaults."""
    try:
        data: Any = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{META_HEADER}: not valid JSON ({e.msg})", field=META_HEADER) from e
    if not isinstance(data, dict):
        raise InvalidInput(f"{META_HEADER}: expected a JSON object", field=META_HEADER)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        detail = detail_from_pydantic(e.errors())
        raise InvalidInput(f"{META_HEADER}.{detail.message}", field=f"{META_HEADER}.{detail.field}") from e


def read_header(body: bytes, field: str) -> nnia.Header:
    try:
        return nnia.read_header(body, field)
    except ValueError as e:
        raise InvalidInput(str(e), field=field) from e


def unpack_body(body: bytes, field: str, max_voxels: int | None = None) -> np.ndarray:
    """An NNIA body; with ``max_voxels`` the declared shape is checked before anything is decompressed."""
    try:
        header = nnia.read_header(body, field)
        if max_voxels is not None and int(np.prod(header.shape, dtype=np.int64)) > max_voxels:
            raise InvalidInput(f"{field}: shape {list(header.shape)} is larger than this server accepts "
                               f"({max_voxels} voxels)", field=field)
        return nnia.unpack(body, header, field)
    except ValueError as e:
        raise InvalidInput(str(e), field=field) from e


def check_box(coords: Sequence[Sequence[int]], shape: tuple[int, int, int], field: str = "bbox_coords") -> Box3:
    """A half-open box [[lo, hi) x 3], clipped to the image; an axis with nothing left is refused."""
    if len(coords) != 3 or any(len(pair) != 2 for pair in coords):
        raise InvalidInput(f"{field}: expected [[lo, hi], [lo, hi], [lo, hi]]", field=field)
    out = []
    for axis, (lo, hi) in enumerate(coords):
        a, b = max(0, int(lo)), min(shape[axis], int(hi))
        if b <= a:
            raise InvalidInput(f"{field}: axis {axis} [{lo}, {hi}) is empty inside the image (0..{shape[axis]})",
                               field=field)
        out.append((a, b))
    return (out[0], out[1], out[2])


def check_point(coords: Sequence[int], shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(coords) != 3:
        raise InvalidInput(f"coordinates: expected 3 voxel indices, got {len(coords)}", field="coordinates")
    for axis, v in enumerate(coords):
        if not 0 <= int(v) < shape[axis]:
            raise InvalidInput(f"coordinates: axis {axis} index {v} is outside the image (0..{shape[axis] - 1})",
                               field="coordinates")
    return (int(coords[0]), int(coords[1]), int(coords[2]))


def mask_region(mask: np.ndarray, interaction_bbox: Sequence[Sequence[int]] | None,
                shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices of a scribble or lasso mask's non-zero voxels; the mask covers ``interaction_bbox``
    (which must lie inside the image, the mask's shape equal to its size) or, without one, the whole image."""
    if interaction_bbox is None:
        if tuple(mask.shape) != shape:
            raise InvalidInput(f"mask: shape {list(mask.shape)} is not the image's {list(shape)}", field="mask")
        full = mask
    else:
        if len(interaction_bbox) != 3 or any(len(p) != 2 for p in interaction_bbox):
            raise InvalidInput("interaction_bbox: expected [[lo, hi], [lo, hi], [lo, hi]]", field="interaction_bbox")
        box = [(int(lo), int(hi)) for lo, hi in interaction_bbox]
        for axis, (lo, hi) in enumerate(box):
            if not 0 <= lo < hi <= shape[axis]:
                raise InvalidInput(f"interaction_bbox: axis {axis} [{lo}, {hi}) is not inside the image "
                                   f"(0..{shape[axis]})", field="interaction_bbox")
        size = tuple(hi - lo for lo, hi in box)
        if tuple(mask.shape) != size:
            raise InvalidInput(f"mask: shape {list(mask.shape)} is not the interaction_bbox's size {list(size)}",
                               field="mask")
        full = np.zeros(shape, dtype=bool)
        full[tuple(slice(lo, hi) for lo, hi in box)] = mask != 0
    flat = regions.from_mask(full)
    if flat.size == 0:
        raise InvalidInput("mask: the interaction marks no voxel", field="mask")
    return flat


def initial_mask(seg: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if tuple(seg.shape) != shape:
        raise InvalidInput(f"seg: shape {list(seg.shape)} is not the image's {list(shape)}", field="seg")
    return (seg != 0).astype(np.uint8)
