"""Wire shapes of the MONAI Label compatibility routes and of the DICOMweb store route.

The MONAI Label shapes follow what MONAI Label's server returns and what its clients read: OHIF's MONAI
Label panel (``info.models[m].type/labels``, ``labels`` with "background" first, the ``centroids`` of an
infer reply) and 3D Slicer's MONAILabel module (``models``, ``labels``, ``config``, ``datastore``,
``label_names`` of an infer reply, ``session_id`` of ``PUT /session/``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

INFER_OUTPUTS = ("image", "json", "all", "dicom_seg")
InferOutput = Literal["image", "json", "all", "dicom_seg"]

DEEPEDIT_MODEL = "segvol"
"""The interactive model as MONAI Label type "deepedit" (OHIF point prompts send clicks per label)."""
DEEPGROW_MODEL = "segvol_deepgrow"
"""The same model as type "deepgrow" (foreground/background lists), for clients that only list deepgrow."""


class ModelInfo(BaseModel):
    """One entry of ``info.models`` (MONAI Label's ``InferTask.info()``)."""

    type: Literal["deepedit", "deepgrow"]
    labels: dict[str, int] = Field(description="Label name -> voxel value in results (background 0).")
    dimension: int = 3
    description: str
    config: dict[str, Any] = Field(default_factory=dict)


class DatastoreInfo(BaseModel):
    """``info.datastore``: the images this server currently holds sessions for."""

    total: int
    completed: int = 0
    label_tags: dict[str, int] = Field(default_factory=dict)
    train: int = 0


ACTIVE_LEARNING_STRATEGIES = {
    "first": "the unlabelled datastore image uploaded first",
    "random": "a random unlabelled datastore image",
}
"""``info.strategies``: how ``POST /activelearning/{strategy}`` picks the next image (Slicer's Next Sample)."""


class AppInfo(BaseModel):
    """``GET /info/``."""

    name: str
    description: str
    version: str
    labels: list[str] = Field(description='"background" first, then the model\'s labels (OHIF drops the first).')
    models: dict[str, ModelInfo]
    trainers: dict[str, Any] = Field(default_factory=dict)
    strategies: dict[str, Any] = Field(default_factory=dict)
    scoring: dict[str, Any] = Field(default_factory=dict)
    train_stats: dict[str, Any] = Field(default_factory=dict)
    datastore: DatastoreInfo
    config: dict[str, Any] = Field(default_factory=dict)


class SessionInfoML(BaseModel):
    """MONAI Label's session info (``GET /session/{id}``, and inside the ``PUT /session/`` reply)."""

    name: str = Field(description="The session id.")
    image: str = Field(description="The uploaded file name.")
    meta: dict[str, Any] = Field(default_factory=dict)
    create_ts: int
    last_access_ts: int
    expiry: int = Field(description="Seconds left before the session expires if unused.")


class SessionCreatedML(BaseModel):
    """``PUT /session/``."""

    session_id: str
    session_info: SessionInfoML


class StoredSeg(BaseModel):
    """A DICOM SEG stored on the DICOMweb server (STOW-RS)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class DatastoreLabelSaved(BaseModel):
    """``PUT /datastore/label`` of a datastore image: MONAI Label's ``{image, label}`` (the label id is the
    image id, as upstream)."""

    image: str
    label: str


class LabelSaved(StoredSeg):
    """``PUT /datastore/label`` of a DICOMweb series: MONAI Label's ``{image, label}`` plus the stored SEG's UIDs."""

    image: str
    label: str = Field(description="The stored SEG's SOP Instance UID.")


class ImageAdded(BaseModel):
    """``PUT /datastore/?image=...``."""

    image: str


class TrainStatus(BaseModel):
    """``GET /train/``: this server does not train (``info.trainers`` is empty)."""

    status: Literal["NOT_AVAILABLE"] = "NOT_AVAILABLE"
    detail: str = "training is not offered by this server: info.trainers is empty"
