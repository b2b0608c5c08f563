"""Region prompts of our own API: scribbles and lassos (``POST .../objects/{oid}/scribble`` and ``.../lasso``).

A **scribble** is a set of voxels with a label (what a brush painted); a **lasso** is a closed 2D contour on one
slice, filled to a region, with a label. Both are fed to the model as clicks are (a few of their voxels become
clicks of that label) and every voxel of the region ends with the prompt's label (``app.models.regions``).
Voxel indices only, (z, y, x) as everywhere; shapes, types and labels are checked by the field rules of
``client.wire.rules`` (the SDK runs the same before sending), bounds by the server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from client.wire import rules
from client.wire.rules import MAX_CONTOUR_COORD, MAX_LASSO_VERTICES, MAX_SCRIBBLE_VOXELS
from client.wire.vocab import RegionMode

__all__ = ["MAX_CONTOUR_COORD", "MAX_LASSO_VERTICES", "MAX_SCRIBBLE_VOXELS", "LassoRequest", "ScribbleRequest"]

_LABEL = "1 = the region is the object (foreground), 0 = it is not (background)."
_MODE = ('"decoder": the mask decoder reads the region\'s clicks; "both": the corrector\'s step first (streamed), '
         "then the decoder. The region constraint rides on the decoder step.")


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
        return rules.scribble_voxels(value)

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: Any) -> int:
        return rules.region_label(value)


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
        return rules.integer(info.field_name, value)

    @field_validator("contour", mode="before")
    @classmethod
    def _check_contour(cls, value: Any) -> list[list[float]]:
        return rules.lasso_contour(value)

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: Any) -> int:
        return rules.region_label(value)
