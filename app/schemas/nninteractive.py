"""nnInteractive's remote protocol (``nninteractive-client`` 2.6): paths, header names, what we advertise.

The client appends every path below to the base URL it is given; ours is ``<server>/nninteractive``
(``NNINTERACTIVE_PREFIX``), served only with ``--nninteractive`` (``Settings.nninteractive_enabled``).
Arrays travel in the NNIA packed format (``app.schemas.nnia``); metadata of binary requests and of
prediction replies in the ``X-Meta`` header as compact JSON. ``docs/nninteractive.md`` describes the mapping
onto our sessions and prompts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NNINTERACTIVE_PREFIX = "/nninteractive"

LEASE_HEADER = "X-Lease-Token"
META_HEADER = "X-Meta"
OCTET_STREAM = "application/octet-stream"

PATH_HEALTHZ = "/healthz"
PATH_CAPABILITIES = "/capabilities"
PATH_CLAIM = "/claim"
PATH_RELEASE = "/release"
PATH_HEARTBEAT = "/heartbeat"
PATH_LEASE_STATUS = "/lease_status"
PATH_SET_IMAGE = "/set_image"
PATH_SET_TARGET_BUFFER = "/set_target_buffer"
PATH_RESET_INTERACTIONS = "/reset_interactions"
PATH_UNDO = "/undo"
PATH_PREDICT = "/predict"
PATH_SET_DO_AUTOZOOM = "/set_do_autozoom"
PATH_ADD_BBOX = "/add_bbox_interaction"
PATH_ADD_POINT = "/add_point_interaction"
PATH_ADD_SCRIBBLE = "/add_scribble_interaction"
PATH_ADD_LASSO = "/add_lasso_interaction"
PATH_ADD_INITIAL_SEG = "/add_initial_seg_interaction"

TARGET_DTYPES = ("bool", "uint8", "uint16", "int16", "int32", "float32")
"""Target buffer dtypes a client may declare (the reference server's list)."""

PROTOCOL_VERSION = "segvol-interactive-nninteractive-1"
"""What we answer as ``inference_session_version``: our model is not nnInteractive's, and says so."""


def capabilities(*, liveness_timeout_s: float, idle_timeout_s: float) -> dict[str, Any]:
    """The ``GET /capabilities`` reply. Keys the client requires come first; the interaction-channel fields
    describe nnInteractive's own network and have no meaning for ours, so they carry neutral values."""
    return {
        "supported_interactions": {"scribble": True, "lasso": True, "points": True, "bbox2d": True, "bbox3d": True},
        "channel_mapping": {},
        "num_interaction_channels": 0,
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": [2, 2, 2],
        "interaction_decay": 1.0,
        "inference_session_version": PROTOCOL_VERSION,
        "license": "Apache-2.0 (server); model weights: see docs/model-card.md",
        "supports_undo": True,
        "do_autozoom": True,
        "liveness_timeout_seconds": liveness_timeout_s,
        "idle_timeout_seconds": idle_timeout_s,
    }


# --- JSON request bodies (binary requests carry theirs in X-Meta, checked by ``InteractionFlags``) -----------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InteractionFlags(_Body):
    """Flags every interaction carries."""

    include_interaction: bool = True
    run_prediction: bool = True
    override_capability_checks: bool = False


class BboxBody(InteractionFlags):
    bbox_coords: list[list[int]] = Field(description="[[lo, hi) x 3] voxel indices of the image's axes 1..3.")
    include_interaction: bool


class PointBody(InteractionFlags):
    coordinates: list[int] = Field(description="[a, b, c] voxel indices of the image's axes 1..3.")
    include_interaction: bool


class MaskMeta(InteractionFlags):
    """X-Meta of a scribble or lasso: the mask covers ``interaction_bbox`` when given, else the whole image."""

    interaction_bbox: list[list[int]] | None = None
    include_interaction: bool


class InitialSegMeta(_Body):
    run_prediction: bool = False
    override_capability_checks: bool = False


class ImageMeta(_Body):
    """X-Meta of ``set_image``: free-form properties; we read ``spacing`` (one value per spatial axis)."""

    image_properties: dict[str, Any] | None = None


class TargetBufferBody(_Body):
    shape: list[int]
    dtype: str


class AutozoomBody(_Body):
    do_autozoom: bool


class PredictBody(_Body):
    force_full_refine: bool = False
