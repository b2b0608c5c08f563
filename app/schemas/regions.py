"""Region prompts of our own API: scribbles and lassos (``POST .../objects/{oid}/scribble`` and ``.../lasso``).

A **scribble** is a set of voxels with a label (what a brush painted); a **lasso** is a closed 2D contour on one
slice, filled to a region, with a label. Both are fed to the model as clicks are (a few of their voxels become
clicks of that label) and every voxel of the region ends with the prompt's label (``app.models.regions``).
Voxel indices only, (z, y, x) as everywhere; shapes, types and labels are checked here, bounds by the server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from app.schemas.prompts import _numbers, _voxel_ints
from app.vocabulary import RegionMode

MAX_SCRIBBLE_VOXELS = 1 << 16
"""Voxels one scribble request may list (a JSON list of triples: a larger region is better sent as a lasso)."""
MAX_LASSO_VERTICES = 4096
MAX_CONTOUR_COORD = 1e6
"""Largest |coordinate| of a lasso vertex, in voxels: a contour may run past the slice's edges (a user drags
off the canvas), but a vertex a million voxels out is a broken client, and arithmetic on it must stay finite."""

_LABEL = "1 = the region is the object (foreground), 0 = it is not (background)."
_MODE = ('"decoder": the mask decoder reads the region\'s clicks; "both": the corrector\'s step first (streamed), '
         "then the decoder. The region constraint rides on the decoder step.")


def _label(value: Any) -> int:
    if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, (int, float)):
        raise ValueError(f"label: expected 0 (background) or 1 (foreground), got {value!r}")
    return int(value)


class ScribbleRequest(BaseModel):
    """A painted set of voxels with one label."""

    voxels: list[list[int]] = Field(
        description="The painted voxels, each [z, y, x] (duplicates allowed).",
        json_schema_extra={"minItems": 1, "maxItems": MAX_SCRIBBLE_VOXELS,
                           "items": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3}},
    )
    label: Literal[0, 1] = Field(description=_LABEL)
    mode: RegionMode = Field(default="both", description=_MODE)

    @field_validator("voxels", mode="before")
    @classmethod
    def _check_voxels(cls, value: Any) -> list[list[int]]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"voxels: expected a list of [z, y, x], got {type(value).__name__}")
        if not 1 <= len(value) <= MAX_SCRIBBLE_VOXELS:
            raise ValueError(f"voxels: expected 1 to {MAX_SCRIBBLE_VOXELS} voxels, got {len(value)}")
        return [_voxel_ints(f"voxels[{i}]", _numbers(f"voxels[{i}]", v, 3)) for i, v in enumerate(value)]

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: Any) -> int:
        return _label(value)


class LassoRequest(BaseModel):
    """A closed contour on slice ``index`` along ``axis``, filled (even-odd rule, outline included)."""

    axis: Literal[0, 1, 2] = Field(description="The slice's normal: 0 = z (an axial slice of a CT), 1 = y, 2 = x.")
    index: int = Field(ge=0, description="The slice's index along ``axis``.")
    contour: list[list[float]] = Field(
        description="Vertices in the slice's two other axes, in volume order (axis 0: [y, x]; axis 1: [z, x]; "
        "axis 2: [z, y]), voxel units, sub-voxel allowed; the last vertex joins the first.",
        json_schema_extra={"minItems": 3, "maxItems": MAX_LASSO_VERTICES,
                           "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
    )
    label: Literal[0, 1] = Field(description=_LABEL)
    mode: RegionMode = Field(default="both", description=_MODE)

    @field_validator("axis", "index", mode="before")
    @classmethod
    def _check_int(cls, value: Any, info: Any) -> int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):
            raise ValueError(f"{info.field_name}: expected an integer, got {value!r}")
        return int(value)

    @field_validator("contour", mode="before")
    @classmethod
    def _check_contour(cls, value: Any) -> list[list[float]]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"contour: expected a list of 2D vertices, got {type(value).__name__}")
        if not 3 <= len(value) <= MAX_LASSO_VERTICES:
            raise ValueError(f"contour: expected 3 to {MAX_LASSO_VERTICES} vertices, got {len(value)}")
        out = [[float(c) for c in _numbers(f"contour[{i}]", v, 2)] for i, v in enumerate(value)]
        for i, (a, b) in enumerate(out):
            if max(abs(a), abs(b)) > MAX_CONTOUR_COORD:
                raise ValueError(f"contour[{i}]: coordinates must lie within +-{MAX_CONTOUR_COORD:g} voxels, "
                                 f"got {[a, b]}")
        return out

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: Any) -> int:
        return _label(value)
