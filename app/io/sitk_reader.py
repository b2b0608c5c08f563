"""The SimpleITK reader of NIfTI, NRRD and MetaImage files: header checks, one inflation, then the voxels."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import SimpleITK as sitk

from app.io.header_geometry import check_header_geometry, read_nifti_header
from app.io.inflate import TooLarge, check_declared, inflate_gzip_file, inflate_zlib
from app.io.truncation import (
    GZIP_MAGIC,
    TRAILING_SLACK_BYTES,
    check_complete,
    check_nifti_finite,
    metaimage_layout,
)
from app.io.volume_checks import check_header, from_image, itk_reason
from app.io.volume_types import LoadedVolume, VolumeLimits, VolumeTooLargeError

_FORMAT_LABEL = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "npz": "npz", "dicom": "DICOM"}
_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}


def read_with_sitk(path: Path, filename: str, kind: str, limits: VolumeLimits,
                    expect_shape: tuple[int, int, int] | None = None) -> LoadedVolume:
    """Header checks (dimensions, sizes in voxels and bytes, geometry), one inflation, then the voxels.

    ``expect_shape``: refuse any other (D, H, W) from the header, before a voxel is read (mask uploads).
    """
    label = _FORMAT_LABEL[kind]
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[kind])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        check_complete(path, filename, kind, limits)  # a cut-off header is better reported as truncated
        check_header_geometry(path, filename, kind)  # ITK's reason for a singular matrix is "(0 0 0)"
        raise ValueError(f"file: could not read {filename!r} as {label} ({itk_reason(exc)})") from None
    size = reader.GetSize()
    check_header(filename, reader.GetDimension(), size, reader.GetNumberOfComponents(), limits)
    if expect_shape is not None and tuple(reversed(size)) != tuple(expect_shape):
        raise ValueError(f"file: shape {tuple(reversed(size))} does not match the volume's {tuple(expect_shape)}")
    declared = math.prod(int(n) for n in size) * reader.GetNumberOfComponents() * _pixel_bytes(reader.GetPixelID())
    try:
        check_declared(filename, declared, _stored_compressed_bytes(path, kind), limits.max_volume_bytes,
                       limits.max_inflate_ratio)
    except TooLarge as exc:
        raise VolumeTooLargeError(str(exc)) from None
    check_header_geometry(path, filename, kind)
    with tempfile.TemporaryDirectory(prefix="inflate-") as tmp:
        plain = _inflated_once(path, filename, kind, Path(tmp), declared)
        check_complete(plain, filename, kind, limits)
        if kind == "nifti":
            check_nifti_finite(plain, filename)
        reader.SetFileName(str(plain))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise ValueError(f"file: could not read {filename!r} as {label} ({itk_reason(exc)})") from None
    return from_image(image, filename, kind, modality=None)


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes per component of an ITK pixel type."""
    return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize)


def _stored_compressed_bytes(path: Path, kind: str) -> int | None:
    """The compressed bytes a volume's voxels are stored in (None when they are not compressed)."""
    if kind == "nifti":
        with path.open("rb") as fh:
            return path.stat().st_size if fh.read(2) == GZIP_MAGIC else None
    if kind == "nrrd":
        with path.open("rb") as fh:
            head = fh.read(1 << 16).split(b"\n\n", 1)[0]
        match = re.search(rb"^encoding\s*:\s*(\w+)", head, re.MULTILINE | re.IGNORECASE)
        compressed = match is not None and match.group(1).lower() in (b"gzip", b"gz", b"bzip2", b"bz2")
        return path.stat().st_size if compressed else None
    if kind == "metaimage":
        layout = metaimage_layout(path)
        if layout is not None and layout.compressed:
            return layout.stored_bytes
    return None


def _inflated_once(path: Path, filename: str, kind: str, tmp: Path, declared: int) -> Path:
    """A plain copy of a gzip NIfTI or a compressed MetaImage in ``tmp``, inflated once; other files as they are."""
    if kind == "nifti" and _stored_compressed_bytes(path, kind) is not None:
        plain = tmp / "volume.nii"
        header = _nifti_header_length(path)
        cap = (header or 0) + declared + TRAILING_SLACK_BYTES  # the header's vox_offset is checked next
        with plain.open("wb") as out:
            inflate_gzip_file(path, out, filename, cap)
        return plain
    if kind == "metaimage":
        layout = metaimage_layout(path)
        if layout is not None and layout.compressed:
            plain = tmp / "volume.mha"
            with plain.open("wb") as out, layout.data_path.open("rb") as src:
                out.write(layout.plain_header())
                src.seek(layout.data_offset)
                inflate_zlib(src, layout.stored_bytes, out, filename, layout.raw_bytes)
            return plain
    return path


def _nifti_header_length(path: Path) -> int | None:
    """``vox_offset`` of a gzip NIfTI, from its first inflated bytes only."""
    header = read_nifti_header(path)
    return int(header.get_data_offset()) if header is not None else None
