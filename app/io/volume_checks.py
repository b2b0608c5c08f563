"""Checks of what a reader produced: a 3D scalar volume within the limits, finite, with a usable geometry.

Messages start with "file: " (``VolumeTooLargeError`` for size limits); ITK's own reasons are shortened and
stripped of the server's paths (``itk_reason``).
"""

from __future__ import annotations

import math
import re

import numpy as np
import SimpleITK as sitk

from app.io.header_geometry import check_direction
from app.io.volume_types import LoadedVolume, SourceFormat, VolumeLimits, VolumeTooLargeError


def check_header(
    filename: str, dim: int, size: tuple[int, ...], components: int, limits: VolumeLimits | None
) -> None:
    """Reject non-3D and oversize volumes from header information (ITK size order x, y, z)."""
    if dim != 3:
        shape = tuple(reversed(size))
        raise ValueError(f"file: expected a 3D volume, got {dim}D {shape} in {filename!r}")
    if components != 1:
        raise ValueError(f"file: expected a scalar volume, got {components} components per voxel")
    if min(size) < 2:
        raise ValueError(f"file: expected a 3D volume, got shape {tuple(reversed(size))} (a single slice)")
    n_voxels = math.prod(int(n) for n in size)  # Python ints: an int64 product of crafted sizes can wrap to 0
    if limits is not None and n_voxels > limits.max_voxels:
        raise VolumeTooLargeError(f"file: {tuple(reversed(size))} is {n_voxels} voxels, over the "
                                  f"{limits.max_voxels}-voxel limit")


def validated(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
    modality: str | None,
    kind: SourceFormat,
    filename: str,
) -> LoadedVolume:
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"file: expected a 3D volume, got {array.ndim}D {tuple(array.shape)} in {filename!r}")
    if min(array.shape) < 2:
        raise ValueError(f"file: expected a 3D volume, got shape {tuple(array.shape)} (a single slice)")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"file: expected real-valued voxels, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not bool(np.isfinite(array).all()):
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"file: {n_bad} voxels are NaN or infinite")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"file: spacing must be 3 positive finite values, got {tuple(spacing)}")
    if not all(np.isfinite(v) for v in (*origin, *direction)):
        raise ValueError("file: origin and direction must be finite")
    check_direction(filename, direction, "as read")  # world-coordinate prompts invert it
    return LoadedVolume(np.ascontiguousarray(array), spacing, origin, tuple(direction), modality, kind)


def from_image(image: sitk.Image, filename: str, kind: str, modality: str | None) -> LoadedVolume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"file: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    check_header(filename, image.GetDimension(), image.GetSize(), 1, None)
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    origin = tuple(float(o) for o in image.GetOrigin())
    direction = tuple(float(d) for d in image.GetDirection())
    return validated(array, spacing, origin, direction, modality, kind, filename)  # type: ignore[arg-type]


def itk_reason(exc: RuntimeError) -> str:
    """The last meaningful line of an ITK exception, without source paths or the server's file paths."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Reason:")]
    text = lines[-1] if lines else "unreadable"
    text = re.sub(r"^.*?(ITK ERROR|sitk::ERROR):\s*", "", text)
    text = re.sub(r"\w+ImageIO\(0x[0-9a-f]+\):\s*", "", text)
    text = re.sub(r"(?<![\w.])/[^\s'\"]+", "the file", text)  # uploads live in temporary folders
    # ITK appends the C library's errno text, "Reason: Success" when there was none: noise to a reader.
    text = re.sub(r"\s*\(?Reason: [^)]*\)?\s*$", "", text).strip(" .:") or "unreadable"
    return text[:200]
