"""Session replies: what ``POST /v1/sessions`` and ``GET /v1/sessions/{sid}`` return.

Geometry follows SimpleITK's ``GetArrayFromImage`` order: ``shape`` is [D, H, W] = (z, y, x) and
``spacing`` is [sz, sy, sx] in mm; ``origin`` is the LPS position (x, y, z) of voxel [0, 0, 0] and
``direction`` the 9 direction-cosine values row-major, both exactly as SimpleITK's ``GetOrigin()`` /
``GetDirection()`` report them (ITK axis order x, y, z). The SDK reads the same replies into the dataclasses
of ``client.wire.replies`` (where the geometry types are defined); ``tests/sdk/test_wire_drift.py`` keeps the two
alike.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from client.wire.replies import Box6, Direction9, Shape3, Vec3

__all__ = ["Box6", "Direction9", "ObjectInfo", "SessionCreated", "SessionInfo", "Shape3", "Vec3", "VolumeGeometry"]


class VolumeGeometry(BaseModel):
    """Where the session's voxels sit: array shape, spacing and the physical frame of the source file."""

    shape: Shape3 = Field(description="[D, H, W] = voxel counts along (z, y, x).")
    spacing: Vec3 = Field(description="[sz, sy, sx] voxel size in mm, same order as shape.")
    origin: Vec3 = Field(default=(0.0, 0.0, 0.0), description="LPS position (x, y, z) in mm of voxel [0, 0, 0].")
    direction: Direction9 = Field(
        default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        description="Direction cosines, row-major 3x3, as SimpleITK GetDirection() (ITK axis order x, y, z).",
    )


_EXCLUSIVE_OBJECTS = (
    "The objects are one label map's labels: one object's foreground click is a background click to the others "
    "(chosen at creation; default: the server's exclusive_objects setting)."
)


class SessionCreated(VolumeGeometry):
    """Reply of ``POST /v1/sessions`` (201). ``token`` is shown once: send it as ``Authorization: Bearer``."""

    session_id: str
    token: str
    modality: str | None = Field(default=None, description="Modality given at upload or guessed, if any.")
    config: str = Field(description="Name of the model configuration serving this session.")
    expires_in_s: float = Field(description="Idle seconds after which the session expires (410).")
    source_format: str | None = Field(default=None, description='Format the upload was read as, e.g. "nifti".')
    exclusive_objects: bool = Field(default=True, description=_EXCLUSIVE_OBJECTS)


class ObjectInfo(BaseModel):
    """One object of a session."""

    model_config = ConfigDict(extra="ignore")

    object_id: int
    version: int = Field(description="Monotonically increasing version; 0 = never changed.")
    voxels: int | None = Field(default=None, description="Foreground voxel count of the current mask.")
    bbox: Box6 | None = Field(default=None, description="Inclusive bounding box of the current mask.")
    n_prompts: int | None = Field(default=None, description="Prompts recorded for this object.")


class SessionInfo(VolumeGeometry):
    """Reply of ``GET /v1/sessions/{sid}``."""

    model_config = ConfigDict(extra="ignore")

    session_id: str
    modality: str | None = None
    config: str
    created_at: float = Field(description="Unix time (s) the session was created.")
    last_used_at: float = Field(description="Unix time (s) of the last request touching the session.")
    expires_in_s: float = Field(description="Seconds left before the session expires if left idle.")
    objects: list[ObjectInfo] = Field(default_factory=list)
    source_format: str | None = None
    exclusive_objects: bool = Field(default=True, description=_EXCLUSIVE_OBJECTS)
