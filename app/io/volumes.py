"""Read uploaded 3D volumes (NIfTI, NRRD, MHA/MHD, CVPR25 npz, DICOM series zip) and write masks.

Every reader goes through SimpleITK (or numpy for ``.npz``) so arrays come out in ``GetArrayFromImage``
order: ``array[z, y, x]``, shape (D, H, W); for a NIfTI with dims (X, Y, Z) that is ``[k, j, i]``.
Geometry is kept as SimpleITK reports it: ``spacing`` reversed to (sz, sy, sx) to match the array, while
``origin`` (x, y, z) and ``direction`` (9 values, row-major) stay in ITK's (x, y, z) axis order, LPS.

Uploads are untrusted: sizes are checked before pixel data is read, zip members are screened (no absolute
or ``..`` paths, no links, bounded member count; declared unpacked sizes and compression ratios checked
before anything is inflated, then bytes counted while extracting), and header
fields that point at other files (NRRD ``data file``, MetaImage ``ElementDataFile``) must stay inside the
upload. Truncated files are refused: ITK zero-fills a short NIfTI (plain or gzip) and reports a short MetaImage
with a misleading reason, so both are measured against what their header declares before ITK reads the
voxels (NRRD's reader already reports a short read). Compressed voxel data (``.nii.gz``, compressed
MetaImage, gzip NRRD) is checked against ``max_volume_bytes`` and ``max_inflate_ratio`` from its header before
anything is inflated, then inflated once into a plain file (``app.io.inflate``); spacing and direction are
checked as the header states them (``app.io.header_geometry``), since ITK silently repairs some bad values.
Problems raise ``ValueError`` starting with "file: " (``VolumeTooLargeError`` for size limits).

CVPR 2025 challenge ``.npz`` (keys ``imgs`` (D, H, W) and ``spacing``): the challenge's own files store
spacing in (x, y, z) order, the project's ``case.npz`` files in (z, y, x). With ``spacing_order="auto"``
the order is inferred from which pair of values is equal (in-plane spacing is almost always isotropic):
``s[1] == s[2]`` -> (z, y, x) (this includes isotropic spacing); otherwise ``s[0] == s[1]`` -> (x, y, z);
otherwise (all three differ: ambiguous) (z, y, x). Pass "zyx" or "xyz" to decide explicitly.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from app.io.archives import check_no_external_data, safe_extract
from app.io.dicom_series import load_extracted
from app.io.npz_volumes import load_npz, npz_array
from app.io.sitk_reader import read_with_sitk
from app.io.volume_types import (
    LoadedVolume,
    SourceFormat,
    SpacingOrder,
    VolumeLimits,
    VolumeMeta,
    VolumeTooLargeError,
)

# The volume types are defined in app.io.volume_types and named here too: this module is the package's entry.
__all__ = [
    "LoadedVolume",
    "SourceFormat",
    "SpacingOrder",
    "VolumeLimits",
    "VolumeMeta",
    "VolumeTooLargeError",
    "detect_format",
    "load_mask",
    "load_volume",
    "save_mask",
]


def detect_format(filename: str) -> SourceFormat | Literal["zip"]:
    """The reader for ``filename`` from its extension; ``ValueError`` naming the accepted ones otherwise."""
    name = filename.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    if name.endswith(".mha"):
        return "metaimage"
    if name.endswith(".mhd"):
        raise ValueError(f"file: {filename!r} is a MetaImage header without its data: upload a .zip holding "
                         "the .mhd and its .raw, or a single .mha")
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".zip"):
        return "zip"
    raise ValueError(f"file: unsupported file type {filename!r}; expected .nii, .nii.gz, .nrrd, .mha, "
                     ".zip (MHD+RAW or a DICOM series) or .npz")


def load_volume(
    source: str | os.PathLike[str] | bytes,
    filename: str | None = None,
    *,
    limits: VolumeLimits = VolumeLimits(),  # noqa: B008 - frozen dataclass
    spacing_order: SpacingOrder = "auto",
    expect_shape: tuple[int, int, int] | None = None,
) -> LoadedVolume:
    """Read and validate a 3D volume from a path or from uploaded bytes.

    Args:
        source: a file path, or the file's bytes.
        filename: the name whose extension picks the reader (defaults to the path's name).
        limits: size limits (file bytes before reading; voxels before pixel data is read).
        spacing_order: how a ``.npz`` stores ``spacing`` (see the module docstring).
        expect_shape: NIfTI, NRRD and MetaImage only: refuse any other (D, H, W) from the header, before
            the voxels are inflated or read.
    Raises:
        ValueError: "file: ..." for unreadable, non-3D, non-finite or otherwise invalid volumes.
        VolumeTooLargeError: past ``limits``.
    """
    if spacing_order not in ("auto", "zyx", "xyz"):
        raise ValueError(f"spacing_order: expected 'auto', 'zyx' or 'xyz', got {spacing_order!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if filename is None:
            raise ValueError("filename: required when loading from bytes")
        data = bytes(source)
        _check_size(len(data), filename, limits)
        kind = detect_format(filename)
        if kind == "npz":
            return load_npz(data, filename, limits, spacing_order)
        with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
            suffix = ".nii.gz" if filename.lower().endswith(".nii.gz") else Path(filename).suffix.lower()
            path = Path(tmp) / f"volume{suffix}"
            path.write_bytes(data)
            return _load_path(path, filename, kind, limits, spacing_order, expect_shape)
    path = Path(source)
    filename = filename or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"file: cannot open {filename!r} ({exc.strerror})") from None
    _check_size(size, filename, limits)
    return _load_path(path, filename, detect_format(filename), limits, spacing_order, expect_shape)


def _check_size(size: int, filename: str, limits: VolumeLimits) -> None:
    if size == 0:
        raise ValueError(f"file: {filename!r} is empty")
    if size > limits.max_bytes:
        raise VolumeTooLargeError(f"file: {size} bytes is over the {limits.max_bytes}-byte upload limit")


def _load_path(
    path: Path, filename: str, kind: str, limits: VolumeLimits, spacing_order: SpacingOrder,
    expect_shape: tuple[int, int, int] | None = None,
) -> LoadedVolume:
    if kind == "npz":
        return load_npz(path.read_bytes(), filename, limits, spacing_order)
    if kind == "zip":
        with tempfile.TemporaryDirectory(prefix="unzip-") as tmp:
            root = Path(tmp) / "x"
            safe_extract(path, filename, root, limits)
            return load_extracted(root, filename, limits)
    if kind in ("nrrd", "metaimage"):
        check_no_external_data(path, filename, kind)
    return read_with_sitk(path, filename, kind, limits, expect_shape)


def load_mask(
    source: bytes, filename: str, like: VolumeMeta, *, limits: VolumeLimits = VolumeLimits()  # noqa: B008
) -> np.ndarray:
    """Read an uploaded binary mask for a session: npz (key ``mask``, or its only array), NIfTI or NRRD.

    Returns a uint8 (D, H, W) array of 0/1 with ``like.shape``. Raises ``ValueError("mask: ...")``.
    The shape is checked from the file's header, before its voxels are inflated; a mask is mostly zeros, so
    it may compress past ``limits.max_inflate_ratio``: its known shape bounds it instead.
    """
    kind = detect_format(filename)
    limits = replace(limits, max_inflate_ratio=None)
    if kind == "npz":
        if len(source) > limits.max_bytes:
            raise VolumeTooLargeError(f"mask: {len(source)} bytes is over the {limits.max_bytes}-byte limit")
        array = npz_array(source, filename, ("mask",), limits, what="mask", expect_shape=like.shape)
    elif kind in ("nifti", "nrrd", "metaimage"):
        try:
            array = load_volume(source, filename, limits=limits, expect_shape=like.shape).array
        except VolumeTooLargeError:
            raise
        except ValueError as exc:
            raise ValueError("mask: " + str(exc).removeprefix("file: ")) from None
    else:
        raise ValueError(f"mask: unsupported mask file {filename!r}; expected .npz, .nii.gz, .nii or .nrrd")
    if array.shape != like.shape:
        raise ValueError(f"mask: shape {tuple(array.shape)} does not match the volume's {like.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number) or not bool(np.isin(array, (0, 1)).all()):
        raise ValueError("mask: values must be 0 or 1")
    return array.astype(np.uint8)


def save_mask(
    mask: np.ndarray, like: VolumeMeta | LoadedVolume, fmt: str, *, npz_key: str = "mask"
) -> bytes:
    """Encode a (D, H, W) mask or label map in ``fmt`` ("npz", "nii.gz" or "nrrd") with ``like``'s geometry.

    npz: ``np.savez_compressed`` with one array under ``npz_key`` (uint8, or uint16 when values exceed 255).
    nii.gz / nrrd: spacing, origin and direction of the source, so the mask overlays the uploaded image.
    """
    meta = like.meta if isinstance(like, LoadedVolume) else like
    if mask.shape != meta.shape:
        raise ValueError(f"mask: shape {mask.shape} does not match the volume's {meta.shape}")
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"mask: values must be in 0..65535, got {lo}..{hi}")
    out_dtype = np.uint8 if hi <= 255 else np.uint16
    arr = np.ascontiguousarray(mask, dtype=out_dtype)
    fmt = str(getattr(fmt, "value", fmt))
    if fmt == "npz":
        buf = io.BytesIO()
        arrays: dict[str, Any] = {npz_key: arr}
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()
    if fmt not in ("nii.gz", "nrrd"):
        raise ValueError(f"format: expected 'npz', 'nii.gz' or 'nrrd', got {fmt!r}")
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(tuple(float(s) for s in reversed(meta.spacing)))
    image.SetOrigin(tuple(float(o) for o in meta.origin))
    image.SetDirection(tuple(float(d) for d in meta.direction))
    with tempfile.TemporaryDirectory(prefix="mask-") as tmp:
        path = Path(tmp) / f"mask.{fmt}"
        sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()
