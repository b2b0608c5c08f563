"""The words of the prompt API that both sides spell: refine and region modes, step names, mask formats,
overlap rules."""

from __future__ import annotations

from enum import Enum
from typing import Literal

RefineMode = Literal["gru", "decoder", "both"]
REFINE_MODES: tuple[str, ...] = ("gru", "decoder", "both")
RegionMode = Literal["decoder", "both"]
REGION_MODES: tuple[str, ...] = ("decoder", "both")
"""Modes of a scribble or lasso: the region constraint rides on the decoder step."""
StepName = Literal["box", "gru", "decoder", "mask", "undo", "reset", "remove"]


class OverlapRule(str, Enum):
    """How the segmentation label map resolves voxels claimed by several objects (``app.models.label_map``).

    confidence (default): the object with the highest logit there wins (ties: the most recently changed);
    recent: the most recently changed object wins everywhere it overlaps another."""

    CONFIDENCE = "confidence"
    RECENT = "recent"


OverlapRuleName = Literal["confidence", "recent"]
"""``OverlapRule``'s values, for code that passes them as strings (the model's label map, the evaluation CLI)."""
OVERLAP_RULES: tuple[str, ...] = tuple(rule.value for rule in OverlapRule)


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
