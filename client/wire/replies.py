"""The JSON replies of the session and prompt routes, as frozen dataclasses (the SDK returns these).

Geometry follows SimpleITK's ``GetArrayFromImage`` order: ``shape`` is (D, H, W) = (z, y, x) and ``spacing``
is (sz, sy, sx) in mm; ``origin`` is the LPS position (x, y, z) of voxel (0, 0, 0) and ``direction`` the 9
direction-cosine values row-major, as SimpleITK's ``GetOrigin()`` / ``GetDirection()`` report them. Boxes are
inclusive (z0, y0, x0, z1, y1, x1).

The server builds these replies with its pydantic models (``app.schemas.sessions``, ``app.schemas.prompts``,
which carry the OpenAPI descriptions); ``tests/sdk/test_wire_drift.py`` fails when a field differs in name,
type or default between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client.wire.vocab import StepName

Shape3 = tuple[int, int, int]
Vec3 = tuple[float, float, float]
Direction9 = tuple[float, float, float, float, float, float, float, float, float]
Box6 = tuple[int, int, int, int, int, int]
"""Inclusive voxel box (z0, y0, x0, z1, y1, x1)."""

IDENTITY_DIRECTION: Direction9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class SessionCreated:
    """Reply of ``POST /v1/sessions``. ``token`` is shown once: the SDK sends it as ``Authorization: Bearer``."""

    shape: Shape3
    spacing: Vec3
    session_id: str
    token: str
    config: str
    """Name of the model configuration serving this session."""
    expires_in_s: float
    """Idle seconds after which the session expires (410)."""
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: Direction9 = IDENTITY_DIRECTION
    modality: str | None = None
    source_format: str | None = None
    exclusive_objects: bool = True
    """One object's foreground click is a background click to the others."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a session."""

    object_id: int
    version: int
    """Monotonically increasing version; 0 = never changed."""
    voxels: int | None = None
    bbox: Box6 | None = None
    n_prompts: int | None = None


@dataclass(frozen=True)
class SessionInfo:
    """Reply of ``GET /v1/sessions/{sid}``."""

    shape: Shape3
    spacing: Vec3
    session_id: str
    config: str
    created_at: float
    last_used_at: float
    expires_in_s: float
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: Direction9 = IDENTITY_DIRECTION
    modality: str | None = None
    objects: list[ObjectInfo] = field(default_factory=list)
    source_format: str | None = None
    exclusive_objects: bool = True


@dataclass(frozen=True)
class StepReply:
    """One model step of a prompt (a box, or each of "gru" and "decoder" of a click)."""

    step: StepName
    version: int
    """The object's version after this step."""
    changed: int
    bbox: Box6 | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptReply:
    """Reply of every route that changes a mask (box, clicks, text, scribble, lasso, undo, reset, PUT mask).

    ``version`` / ``changed`` / ``bbox`` describe the whole request (changed voxels against the mask before
    it; bbox their inclusive box, None when nothing changed); ``steps`` lists each model step."""

    object_id: int
    version: int
    changed: int
    bbox: Box6 | None = None
    steps: list[StepReply] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
