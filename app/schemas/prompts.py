"""Prompt requests and replies: box, clicks, the reply of every mask-changing route, mask formats.

Voxel coordinates are (z, y, x) indices in SimpleITK ``GetArrayFromImage`` order; boxes are INCLUSIVE
[z0, y0, x0, z1, y1, x1]. With ``world: true`` the same fields carry LPS coordinates in mm instead, ordered
(x, y, z) like ITK points: a box is two opposite corners [x0, y0, z0, x1, y1, z1] and a click is [x, y, z];
the server maps them to voxels. The field rules (shapes, types, label values) and the prompt vocabulary
(modes, step names, mask formats) are the SDK's wire layer (``client.wire.rules``, ``client.wire.vocab``),
defined once and run here; bounds against the volume are checked by the server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from app.schemas.paths import MAX_CLICKS_PER_REQUEST
from app.schemas.sessions import Box6
from client.wire import rules
from client.wire.vocab import (
    MASK_MEDIA_TYPES,
    REFINE_MODES,
    REGION_MODES,
    MaskFormat,
    OverlapRule,
    RefineMode,
    RegionMode,
    StepName,
)

__all__ = [
    "MASK_MEDIA_TYPES",
    "REFINE_MODES",
    "REGION_MODES",
    "BoxRequest",
    "ClicksRequest",
    "MaskFormat",
    "OverlapRule",
    "PromptReply",
    "RefineMode",
    "RegionMode",
    "StepName",
    "StepReply",
    "TextRequest",
]


class BoxRequest(BaseModel):
    """``POST .../objects/{oid}/box``: a 3D box; restarts the object (clears its clicks and memory)."""

    box: list[float] = Field(
        description="Inclusive voxel box [z0, y0, x0, z1, y1, x1], or with world=true two LPS corners "
        "[x0, y0, z0, x1, y1, z1] in mm.",
        json_schema_extra={"minItems": 6, "maxItems": 6},
    )
    world: bool = Field(default=False, strict=True,  # JSON true/false only: 0, "no", ... are refused
                        description="Coordinates are LPS millimetres instead of voxel indices.")

    @field_validator("box", mode="before")
    @classmethod
    def _check_box(cls, value: Any) -> list[int | float]:
        return rules.numbers("box", value, 6)

    @model_validator(mode="after")
    def _check_voxel_box(self) -> BoxRequest:
        if not self.world:
            self.box = rules.voxel_box(self.box)  # type: ignore[assignment]
        return self

    def voxel_box(self) -> Box6:
        """The box as 6 ints (only meaningful when ``world`` is false)."""
        b = [int(v) for v in self.box]
        return (b[0], b[1], b[2], b[3], b[4], b[5])


class TextRequest(BaseModel):
    """``POST .../objects/{oid}/text``: an object by its name ("liver", "left kidney"), SegVol's text prompt,
    alone or with a voxel box and/or clicks; restarts the object. Only for models whose capabilities
    (``GET /readyz`` ``prompt_kinds``) list "text"; others answer 422."""

    text: str = Field(description="The object's name; SegVol wraps it in its sentence.", min_length=1,
                      max_length=rules.MAX_TEXT_LENGTH)
    box: list[int] | None = Field(default=None, description="Optional inclusive voxel box [z0, y0, x0, z1, y1, x1].")
    points: list[list[int]] | None = Field(default=None, description="Optional clicks, each [z, y, x] voxel indices.")
    labels: list[int] | None = Field(default=None, description="One 0/1 label per point.")

    @field_validator("text", mode="before")
    @classmethod
    def _check_text(cls, value: Any) -> str:
        return rules.text_name(value)

    @field_validator("box", mode="before")
    @classmethod
    def _check_box(cls, value: Any) -> list[int] | None:
        return rules.text_box(value)

    @field_validator("points", mode="before")
    @classmethod
    def _check_points(cls, value: Any) -> list[list[int]] | None:
        return rules.text_points(value)

    @model_validator(mode="after")
    def _check_labels(self) -> TextRequest:
        rules.text_labels(self.points, self.labels)
        return self


class ClicksRequest(BaseModel):
    """``POST .../objects/{oid}/clicks``: N clicks applied as one prompt (one version per step run)."""

    points: list[list[float]] = Field(
        description="N points, each [z, y, x] voxel indices (or [x, y, z] LPS mm with world=true).",
        json_schema_extra={"minItems": 1, "maxItems": MAX_CLICKS_PER_REQUEST,
                           "items": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}},
    )
    labels: list[int] = Field(
        description="N labels: 1 = foreground, 0 = background.",
        json_schema_extra={"minItems": 1, "maxItems": MAX_CLICKS_PER_REQUEST,
                           "items": {"type": "integer", "enum": [0, 1]}},
    )
    mode: RefineMode = Field(
        default="both",
        description='"gru": the corrector only (fast); "decoder": the mask decoder only; "both": gru then decoder '
        "(two versions, each streamed once the prompt is recorded).",
    )
    world: bool = Field(default=False, strict=True,
                        description="Points are LPS millimetres instead of voxel indices.")

    @field_validator("points", mode="before")
    @classmethod
    def _check_points(cls, value: Any) -> list[list[int | float]]:
        return rules.click_points(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _check_labels(cls, value: Any) -> list[int]:
        return rules.click_labels(value)

    @model_validator(mode="after")
    def _check_lengths(self) -> ClicksRequest:
        rules.labels_per_point(len(self.points), self.labels)
        if not self.world:
            self.points = rules.click_voxels(self.points)  # type: ignore[assignment]
        return self

    def voxel_points(self) -> list[tuple[int, int, int]]:
        """The points as (z, y, x) int triples (only meaningful when ``world`` is false)."""
        return [(int(p[0]), int(p[1]), int(p[2])) for p in self.points]


class StepReply(BaseModel):
    """One model step of a prompt (a box, or each of "gru" and "decoder" of a click)."""

    step: StepName
    version: int = Field(description="The object's version after this step.")
    changed: int = Field(description="Voxels whose value changed in this step.")
    bbox: Box6 | None = Field(default=None, description="Inclusive bounding box of the changed voxels.")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class PromptReply(BaseModel):
    """Reply of every route that changes a mask (box, clicks, undo, reset, PUT mask).

    ``version`` / ``changed`` / ``bbox`` describe the whole request (changed voxels against the mask before
    the request; bbox their inclusive box, null when nothing changed); ``steps`` lists each model step.
    """

    object_id: int
    version: int
    changed: int
    bbox: Box6 | None = None
    steps: list[StepReply] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
