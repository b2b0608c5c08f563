"""What loading a volume produces and the limits it runs under (``app.io.volumes`` is the entry point)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset


SpacingOrder = Literal["auto", "zyx", "xyz"]
SourceFormat = Literal["nifti", "nrrd", "metaimage", "npz", "dicom"]

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class VolumeTooLargeError(ValueError):
    """The upload or the volume is past a configured size limit (HTTP 413)."""


@dataclass(frozen=True)
class VolumeLimits:
    """Size limits applied while loading; defaults suit a single-GPU server."""

    max_bytes: int = 1 << 30  # the uploaded file itself
    max_voxels: int = 512 * 512 * 1024
    max_zip_members: int = 4096
    max_unzipped_bytes: int = 2 << 30  # total bytes extracted from a zip
    max_zip_ratio: int = 200  # unpacked / stored bytes of one zip member (past 8 MiB unpacked)
    max_volume_bytes: int = 1 << 30  # the voxels as the header declares them (what decoding allocates)
    max_inflate_ratio: int | None = 200  # declared / compressed voxel bytes (past 8 MiB); None = not checked


@dataclass(frozen=True)
class VolumeMeta:
    """The geometry a mask needs to be written back in the source's frame."""

    shape: tuple[int, int, int]  # (D, H, W)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS (x, y, z) of voxel [0, 0, 0]
    direction: tuple[float, ...] = IDENTITY_DIRECTION  # 9 values, row-major, ITK axis order (x, y, z)


@dataclass(frozen=True)
class LoadedVolume:
    """A validated volume.

    Attributes:
        array: (D, H, W) real-valued array (the source dtype; bool becomes uint8), all finite.
        spacing: (sz, sy, sx) positive voxel size in mm, in the array's axis order.
        origin: LPS (x, y, z) of voxel [0, 0, 0]; (0, 0, 0) for npz.
        direction: 9 direction cosines, row-major, ITK axis order; identity for npz.
        modality: "CT", "MR", "PET", ... when the file says so (DICOM tag, challenge npz name), else None.
        source_format: which reader was used.
        dicom_headers: for a DICOM series, each slice's header without pixel data, ``dicom_headers[k]``
            describing ``array[k]`` (what a DICOM SEG needs to reference the series); None otherwise.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    modality: str | None
    source_format: SourceFormat
    dicom_headers: tuple[Dataset, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        d, h, w = self.array.shape
        return int(d), int(h), int(w)

    @property
    def meta(self) -> VolumeMeta:
        return VolumeMeta(self.shape, self.spacing, self.origin, self.direction)
