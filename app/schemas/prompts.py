"""Prompt requests and replies: box, clicks, the reply of every mask-changing route, mask formats.

Voxel coordinates are (z, y, x) indices in SimpleITK ``GetArrayFromImage`` order; boxes are INCLUSIVE
[z0, y0, x0, z1, y1, x1]. With ``world: true`` the same fields carry LPS coordinates in mm instead, ordered
(x, y, z) like ITK points: a box is two opposite corners [x0, y0, z0, x1, y1, z1] and a click is [x, y, z];
the server maps them to voxels. Shapes, types and label values are checked here; bounds against the volume
are checked by the server (both with the rules of ``app.coordinates``). Validation messages start with the field name ("box: z1 < z0").
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from app.coordinates import InclusiveBox, check_box_order
from app.schemas.paths import MAX_CLICKS_PER_REQUEST

# RefineMode and RegionMode are re-exported: the SDK imports them from here.
from app.vocabulary import RefineMode as RefineMode
from app.vocabulary import RegionMode as RegionMode
from app.vocabulary import StepName


def _numbers(name: str, value: Any, n: int | None) -> list[int | float]:
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


def _voxel_ints(name: str, values: list[int | float]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{name}: voxel indices must be integers, got {v!r} (set world=true for mm)")
        if v < 0:
            raise ValueError(f"{name}: voxel indices must be >= 0, got {int(v)}")
        out.append(int(v))
    return out


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
        return _numbers("box", value, 6)

    @model_validator(mode="after")
    def _check_voxel_box(self) -> BoxRequest:
        if not self.world:
            ints = _voxel_ints("box", self.box)
            check_box_order(ints)
            self.box = ints  # type: ignore[assignment]
        return self

    def voxel_box(self) -> InclusiveBox:
        """The box as 6 ints (only meaningful when ``world`` is false)."""
        b = [int(v) for v in self.box]
        return (b[0], b[1], b[2], b[3], b[4], b[5])


class TextRequest(BaseModel):
    """``POST .../objects/{oid}/text``: an object by its name ("liver", "left kidney"), SegVol's text prompt,
    alone or with a voxel box and/or clicks; restarts the object. Only for models whose capabilities
    (``GET /readyz`` ``prompt_kinds``) list "text"; others answer 422."""

    text: str = Field(description="The object's name; SegVol wraps it in its sentence.", min_length=1,
                      max_length=200)
    box: list[int] | None = Field(default=None, description="Optional inclusive voxel box [z0, y0, x0, z1, y1, x1].")
    points: list[list[int]] | None = Field(default=None, description="Optional clicks, each [z, y, x] voxel indices.")
    labels: list[int] | None = Field(default=None, description="One 0/1 label per point.")

    @field_validator("text", mode="before")
    @classmethod
    def _check_text(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"text: expected a non-empty object name such as 'liver', got {value!r}")
        return value.strip()

    @field_validator("box", mode="before")
    @classmethod
    def _check_box(cls, value: Any) -> list[int] | None:
        return None if value is None else _voxel_ints("box", _numbers("box", value, 6))

    @field_validator("points", mode="before")
    @classmethod
    def _check_points(cls, value: Any) -> list[list[int]] | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_CLICKS_PER_REQUEST:
            raise ValueError(f"points: expected 1 to {MAX_CLICKS_PER_REQUEST} points [z, y, x]")
        return [_voxel_ints(f"points[{i}]", _numbers(f"points[{i}]", p, 3)) for i, p in enumerate(value)]

    @model_validator(mode="after")
    def _check_labels(self) -> TextRequest:
        n = len(self.points or [])
        if len(self.labels or []) != n:
            raise ValueError(f"labels: expected {n} labels (one per point), got {len(self.labels or [])}")
        if any(v not in (0, 1) for v in self.labels or []):
            raise ValueError("labels: values must be 0 (background) or 1 (foreground)")
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
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"points: expected a list of [z, y, x], got {type(value).__name__}")
        if not 1 <= len(value) <= MAX_CLICKS_PER_REQUEST:
            raise ValueError(f"points: expected 1 to {MAX_CLICKS_PER_REQUEST} points, got {len(value)}")
        return [_numbers(f"points[{i}]", p, 3) for i, p in enumerate(value)]

    @field_validator("labels", mode="before")
    @classmethod
    def _check_labels(cls, value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"labels: expected a list of 0/1, got {type(value).__name__}")
        for v in value:
            if isinstance(v, bool) or v not in (0, 1) or not isinstance(v, (int, float)):
                raise ValueError(f"labels: values must be 0 (background) or 1 (foreground), got {v!r}")
        return [int(v) for v in value]

    @model_validator(mode="after")
    def _check_lengths(self) -> ClicksRequest:
        if len(self.labels) != len(self.points):
            raise ValueError(f"labels: expected {len(self.points)} labels (one per point), got {len(self.labels)}")
        if not self.world:
            self.points = [_voxel_ints(f"points[{i}]", p) for i, p in enumerate(self.points)]  # type: ignore[misc]
        return self

    def voxel_points(self) -> list[tuple[int, int, int]]:
        """The points as (z, y, x) int triples (only meaningful when ``world`` is false)."""
        return [(int(p[0]), int(p[1]), int(p[2])) for p in self.points]


class StepReply(BaseModel):
    """One model step of a prompt (a box, or each of "gru" and "decoder" of a click)."""

    step: StepName
    version: int = Field(description="The object's version after this step.")
    changed: int = Field(description="Voxels whose value changed in this step.")
    bbox: InclusiveBox | None = Field(default=None, description="Inclusive bounding box of the changed voxels.")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class PromptReply(BaseModel):
    """Reply of every route that changes a mask (box, clicks, undo, reset, PUT mask).

    ``version`` / ``changed`` / ``bbox`` describe the whole request (changed voxels against the mask before
    the request; bbox their inclusive box, null when nothing changed); ``steps`` lists each model step.
    """

    object_id: int
    version: int
    changed: int
    bbox: InclusiveBox | None = None
    steps: list[StepReply] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)


class OverlapRule(str, Enum):
    """How the segmentation label map resolves voxels claimed by several objects (``app.models.label_map``).

    confidence (default): the object with the highest logit there wins (ties: the most recently changed);
    recent: the most recently changed object wins everywhere it overlaps another."""

    CONFIDENCE = "confidence"
    RECENT = "recent"


class MaskFormat(str, Enum):
    """Download / upload formats of masks. npz holds key ``mask`` (uint8 (D, H, W)); the others carry the
    source volume's geometry. dcm (download only, sessions created from a DICOM series): a DICOM SEG
    referencing the source series, one segment per object."""

    NPZ = "npz"
    NIFTI_GZ = "nii.gz"
    NRRD = "nrrd"
    DCM = "dcm"

    @property
    def media_type(self) -> str:
        return MASK_MEDIA_TYPES[self]

    @property
    def extension(self) -> str:
        return "." + self.value


MASK_MEDIA_TYPES: dict[MaskFormat, str] = {
    MaskFormat.NPZ: "application/x-npz",
    MaskFormat.NIFTI_GZ: "application/gzip",
    MaskFormat.NRRD: "application/octet-stream",
    MaskFormat.DCM: "application/dicom",
}
