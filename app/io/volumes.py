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

import gzip
import io
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
import SimpleITK as sitk

from app.io.header_geometry import check_direction, check_header_geometry, read_nifti_header
from app.io.inflate import TooLarge, check_declared, inflate_gzip_file, inflate_zlib

if TYPE_CHECKING:
    from pydicom import Dataset

SpacingOrder = Literal["auto", "zyx", "xyz"]
SourceFormat = Literal["nifti", "nrrd", "metaimage", "npz", "dicom"]

_FORMAT_LABEL = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "npz": "npz", "dicom": "DICOM"}
_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET", "US": "US", "NM": "NM", "XA": "XA"}
_NPZ_MODALITY_PREFIXES = ("CT", "MR", "PET", "US", "Microscopy", "Microscope", "XRay", "Endoscopy")


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
    direction: tuple[float, ...] = _IDENTITY_DIRECTION  # 9 values, row-major, ITK axis order (x, y, z)


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


# --- public API --------------------------------------------------------------------------------------


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
            return _load_npz(data, filename, limits, spacing_order)
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
        return _load_npz(path.read_bytes(), filename, limits, spacing_order)
    if kind == "zip":
        with tempfile.TemporaryDirectory(prefix="unzip-") as tmp:
            root = Path(tmp) / "x"
            _safe_extract(path, filename, root, limits)
            return _load_extracted(root, filename, limits)
    if kind in ("nrrd", "metaimage"):
        _check_no_external_data(path, filename, kind)
    return _read_with_sitk(path, filename, kind, limits, expect_shape)


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
        array = _npz_array(source, filename, ("mask",), limits, what="mask", expect_shape=like.shape)
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


# --- readers -----------------------------------------------------------------------------------------


def _read_with_sitk(path: Path, filename: str, kind: str, limits: VolumeLimits,
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
        _check_complete(path, filename, kind, limits)  # a cut-off header is better reported as truncated
        check_header_geometry(path, filename, kind)  # ITK's reason for a singular matrix is "(0 0 0)"
        raise ValueError(f"file: could not read {filename!r} as {label} ({_itk_reason(exc)})") from None
    size = reader.GetSize()
    _check_header(filename, reader.GetDimension(), size, reader.GetNumberOfComponents(), limits)
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
        _check_complete(plain, filename, kind, limits)
        if kind == "nifti":
            _check_nifti_finite(plain, filename)
        reader.SetFileName(str(plain))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise ValueError(f"file: could not read {filename!r} as {label} ({_itk_reason(exc)})") from None
    return _from_image(image, filename, kind, modality=None)


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes per component of an ITK pixel type."""
    return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize)


def _stored_compressed_bytes(path: Path, kind: str) -> int | None:
    """The compressed bytes a volume's voxels are stored in (None when they are not compressed)."""
    if kind == "nifti":
        with path.open("rb") as fh:
            return path.stat().st_size if fh.read(2) == _GZIP_MAGIC else None
    if kind == "nrrd":
        with path.open("rb") as fh:
            head = fh.read(1 << 16).split(b"\n\n", 1)[0]
        match = re.search(rb"^encoding\s*:\s*(\w+)", head, re.MULTILINE | re.IGNORECASE)
        compressed = match is not None and match.group(1).lower() in (b"gzip", b"gz", b"bzip2", b"bz2")
        return path.stat().st_size if compressed else None
    if kind == "metaimage":
        layout = _metaimage_layout(path)
        if layout is not None and layout.compressed:
            return layout.stored_bytes
    return None


def _inflated_once(path: Path, filename: str, kind: str, tmp: Path, declared: int) -> Path:
    """A plain copy of a gzip NIfTI or a compressed MetaImage in ``tmp``, inflated once; other files as they are."""
    if kind == "nifti" and _stored_compressed_bytes(path, kind) is not None:
        plain = tmp / "volume.nii"
        header = _nifti_header_length(path)
        cap = (header or 0) + declared + _TRAILING_SLACK_BYTES  # the header's vox_offset is checked next
        with plain.open("wb") as out:
            inflate_gzip_file(path, out, filename, cap)
        return plain
    if kind == "metaimage":
        layout = _metaimage_layout(path)
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


# --- truncated files ---------------------------------------------------------------------------------


def _check_complete(path: Path, filename: str, kind: str, limits: VolumeLimits) -> None:
    """Refuse a file shorter than its header declares (NRRD's reader reports short reads itself)."""
    if kind == "nifti":
        _check_nifti_complete(path, filename, limits)
    elif kind == "metaimage":
        _check_metaimage_complete(path, filename)


_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_HEADER_BYTES = (348, 540)  # NIfTI-1, NIfTI-2: also the first int32 (sizeof_hdr) of the file
_NIFTI_SINGLE_FILE_MAGIC = (b"n+1", b"n+2")
_TRAILING_SLACK_BYTES = 1 << 20  # read this far past the declared data at most, so a gzip bomb stays bounded


def _check_nifti_complete(path: Path, filename: str, limits: VolumeLimits) -> None:
    """Refuse a NIfTI shorter than its header declares (ITK silently pads the missing voxels with zeros).

    The size that counts is the uncompressed one: ``vox_offset + prod(dims) * bytes per voxel``. A gzip
    stream is inflated (and discarded) to its end marker, or to just past the declared size, so a stream cut
    off anywhere, even in its 8-byte trailer, is caught; a plain file is measured by its size. Headers this check cannot parse, and volumes past the voxel limit,
    are left to ITK and ``_check_header`` to report.
    """
    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as stream:
            head = stream.read(max(_NIFTI_HEADER_BYTES))
            header_bytes = _nifti_header_bytes(head)
            if header_bytes is None:
                return
            if len(head) < header_bytes:
                raise ValueError(f"file: {filename!r} is truncated: {len(head)} bytes, shorter than a NIfTI "
                                 "header")
            header = _parse_nifti_header(head[:header_bytes])
            if header is None:
                return
            n_voxels = math.prod(int(n) for n in header.get_data_shape())
            if n_voxels > limits.max_voxels:
                return
            declared = int(header.get_data_offset()) + n_voxels * header.get_data_dtype().itemsize
            if compressed and declared > limits.max_volume_bytes + int(header.get_data_offset()):
                return  # past the byte limit: never inflated, the header check reports it
            have = len(head) if compressed else path.stat().st_size
            while compressed and have <= declared + _TRAILING_SLACK_BYTES and (chunk := stream.read(1 << 20)):
                have += len(chunk)
    except EOFError:
        raise ValueError(f"file: {filename!r} is truncated (the gzip stream ends before its end marker)") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"file: {filename!r} is truncated or corrupt (gzip: {exc})") from None
    if have < declared:
        raise ValueError(f"file: {filename!r} is truncated: {have} bytes of header and voxels, the header "
                         f"declares {declared}")


def _nifti_header_bytes(head: bytes) -> int | None:
    """348 or 540 when ``head`` starts like a NIfTI-1 or NIfTI-2 header (either byte order), else None."""
    if len(head) < 4:
        return None
    sizes = {struct.unpack(f"{order}i", head[:4])[0] for order in "<>"}
    return next((n for n in _NIFTI_HEADER_BYTES if n in sizes), None)


def _parse_nifti_header(block: bytes) -> Any | None:
    """The nibabel header of a single-file NIfTI (``n+1`` / ``n+2``), or None when nibabel cannot use it."""
    import nibabel as nib  # server-side only; keeps the module importable without it until needed

    header_class = nib.Nifti1Header if len(block) == 348 else nib.Nifti2Header
    try:
        header = header_class.from_fileobj(io.BytesIO(block), check=False)
        if header["magic"].item() not in _NIFTI_SINGLE_FILE_MAGIC:
            return None
        header.get_data_dtype()  # raises on an unknown datatype code
    except Exception as exc:  # nibabel raises many types for odd headers; ITK reports them next
        del exc
        return None
    return header


# MetaImage element sizes in bytes (MET_LONG / MET_ULONG are platform-dependent in MetaIO: not checked).
_MET_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                      "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
_META_FIELD = re.compile(rb"^\s*(\w+)\s*=\s*(.*?)\s*$")
_META_FRAGMENT = re.compile(rb"[\w .=+\-]+")
_MAX_META_HEADER_BYTES = 1 << 16


def _check_metaimage_complete(path: Path, filename: str) -> None:
    """Refuse binary MetaImage data shorter than its header declares (ITK fails with a misleading reason).

    Covers ``ElementDataFile = LOCAL`` (data right after the header, in the ``.mha``) and one data file next
    to the ``.mhd``: raw data must hold ``prod(DimSize) * channels * element bytes``, compressed data
    ``CompressedDataSize`` bytes. A header that ends before its (mandatory, last) ``ElementDataFile`` line is
    truncated. Other layouts (ASCII data, ``HeaderSize``, file lists) are left to ITK.
    """
    fields: dict[str, str] = {}
    header_bytes = 0
    with path.open("rb") as fh:
        while header_bytes <= _MAX_META_HEADER_BYTES and (line := fh.readline(_MAX_META_HEADER_BYTES)):
            header_bytes += len(line)
            match = _META_FIELD.match(line)
            if not line.endswith(b"\n") and (match is None or match.group(1) != b"ElementDataFile"):
                if _META_FRAGMENT.fullmatch(line) and (fields or line[:10] == b"ObjectType"[: len(line)]):
                    break  # the file ends inside a header line
                return
            if match is None:
                return  # not a header line: ITK reports it
            fields[match.group(1).decode("latin-1")] = match.group(2).decode("latin-1")
            if "ElementDataFile" in fields:
                break
    if "ElementDataFile" not in fields:
        if header_bytes <= _MAX_META_HEADER_BYTES:
            raise ValueError(f"file: {filename!r} is truncated: the MetaImage header ends before ElementDataFile")
        return
    target = fields["ElementDataFile"]
    if target.upper() == "LOCAL":
        have = path.stat().st_size - header_bytes
    elif re.fullmatch(r"[\w.\-]+", target) and (path.parent / target).is_file():
        have = (path.parent / target).stat().st_size
    else:
        return
    if "HeaderSize" in fields or fields.get("BinaryData", "True").lower() != "true":
        return
    try:
        if fields.get("CompressedData", "False").lower() == "true":
            declared = int(fields["CompressedDataSize"])
        else:
            element_bytes = _MET_ELEMENT_BYTES[fields["ElementType"]]
            dims = [int(v) for v in fields["DimSize"].split()]
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            declared = math.prod(dims) * channels * element_bytes
    except (KeyError, ValueError):
        return  # a field this check does not know: ITK decides
    if have < declared:
        raise ValueError(f"file: {filename!r} is truncated: {have} bytes of voxel data, the header declares "
                         f"{declared}")


@dataclass(frozen=True)
class _MetaImageLayout:
    """Where a MetaImage's binary voxels are and how they are stored (LOCAL or one data file beside it)."""

    header_lines: tuple[tuple[str, bytes], ...]  # (field, the line as written), up to ElementDataFile
    data_path: Path
    data_offset: int
    stored_bytes: int  # bytes of voxel data present in the file (compressed or not)
    raw_bytes: int  # bytes the voxels take unpacked: prod(DimSize) * channels * element bytes
    compressed: bool

    def plain_header(self) -> bytes:
        """The header of the same image with its voxels stored raw, right after it (ElementDataFile = LOCAL)."""
        kept = [line for key, line in self.header_lines
                if key not in ("CompressedData", "CompressedDataSize", "ElementDataFile")]
        return b"".join(kept) + b"CompressedData = False\nElementDataFile = LOCAL\n"


def _metaimage_layout(path: Path) -> _MetaImageLayout | None:
    """The layout of a binary MetaImage with LOCAL data or one data file beside it; None for other layouts
    (ASCII data, ``HeaderSize``, file lists, unknown element types), which ITK reads and checks itself."""
    lines: list[tuple[str, bytes]] = []
    fields: dict[str, str] = {}
    header_bytes = 0
    with path.open("rb") as fh:
        while header_bytes <= _MAX_META_HEADER_BYTES and (line := fh.readline(_MAX_META_HEADER_BYTES)):
            header_bytes += len(line)
            match = _META_FIELD.match(line)
            if match is None or not line.endswith(b"\n"):
                return None
            key = match.group(1).decode("latin-1")
            fields[key] = match.group(2).decode("latin-1")
            lines.append((key, line))
            if key == "ElementDataFile":
                break
    target = fields.get("ElementDataFile")
    if target is None or "HeaderSize" in fields or fields.get("BinaryData", "True").lower() != "true":
        return None
    if target.upper() == "LOCAL":
        data_path, offset = path, header_bytes
    elif re.fullmatch(r"[\w.\-]+", target) and (path.parent / target).is_file():
        data_path, offset = path.parent / target, 0
    else:
        return None
    try:
        element_bytes = _MET_ELEMENT_BYTES[fields["ElementType"]]
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return None
    return _MetaImageLayout(tuple(lines), data_path, offset, data_path.stat().st_size - offset,
                            math.prod(dims) * channels * element_bytes,
                            fields.get("CompressedData", "False").lower() == "true")


def _check_nifti_finite(path: Path, filename: str) -> None:
    """ITK's NIfTI reader silently turns NaN and +-inf into 0: look at the stored floats with nibabel."""
    import nibabel as nib  # server-side only; keeps the module importable without it until needed

    n_bad = 0
    try:
        image: Any = nib.load(str(path))
        if not np.issubdtype(image.get_data_dtype(), np.floating) or len(image.shape) < 3:
            return
        depth = image.shape[2]
        step = max(1, (1 << 24) // max(1, math.prod(image.shape[:2])))  # ~16M voxels at a time: bounded memory
        for k in range(0, depth, step):
            slab = np.asanyarray(image.dataobj[:, :, k:k + step])
            n_bad += int(slab.size - np.count_nonzero(np.isfinite(slab)))
    except Exception as exc:  # nibabel raises many types for corrupt files; ITK reports them next
        del exc
        return
    if n_bad:
        raise ValueError(f"file: {n_bad} voxels are NaN or infinite")


def _load_extracted(root: Path, filename: str, limits: VolumeLimits) -> LoadedVolume:
    files = [p for p in root.rglob("*") if p.is_file()]
    headers = [p for p in files if p.suffix.lower() in (".mhd", ".mha")]
    if len(headers) > 1:
        raise ValueError(f"file: {filename!r} holds {len(headers)} MetaImage headers; expected one")
    if headers:
        _check_no_external_data(headers[0], filename, "metaimage", inside=root)
        return _read_with_sitk(headers[0], filename, "metaimage", limits)
    return _read_dicom_dir(root, filename, limits)


def _read_dicom_dir(root: Path, filename: str, limits: VolumeLimits) -> LoadedVolume:
    series: list[tuple[str, list[str]]] = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file()}):
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
            series.append((sid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))))
    if not series:
        raise ValueError(f"file: could not read {filename!r} as DICOM (no DICOM series, .mhd or .mha inside)")
    if len(series) > 1:
        raise ValueError(f"file: {filename!r} holds {len(series)} DICOM series; upload one series per zip")
    files = series[0][1]
    if len(files) < 2:
        raise ValueError(f"file: expected a 3D volume, {filename!r} holds a single DICOM slice")
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"file: could not read {filename!r} as DICOM ({_itk_reason(exc)})") from None
    w, h = first.GetSize()[:2]
    _check_header(filename, 3, (w, h, len(files)), first.GetNumberOfComponents(), limits)
    modality = None
    if first.HasMetaDataKey("0008|0060"):
        modality = _DICOM_MODALITIES.get(first.GetMetaData("0008|0060").strip().upper())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"file: could not read {filename!r} as DICOM ({_itk_reason(exc)})") from None
    volume = _from_image(image, filename, "dicom", modality)
    return replace(volume, dicom_headers=_dicom_headers(files, filename))


def _dicom_headers(files: list[str], filename: str) -> tuple[Dataset, ...]:
    """The headers of ``files`` without pixel data, in the reader's (slice) order."""
    import pydicom  # server-side only, like nibabel
    from pydicom.errors import InvalidDicomError

    headers = []
    for name in files:
        try:
            headers.append(pydicom.dcmread(name, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError) as exc:
            reason = re.sub(r"(?<![\w.])/[^\s'\"]+", "the file", str(exc))[:200]  # no server paths
            raise ValueError(f"file: could not read a DICOM header in {filename!r} ({reason})") from None
    return tuple(headers)


def _from_image(image: sitk.Image, filename: str, kind: str, modality: str | None) -> LoadedVolume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"file: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    _check_header(filename, image.GetDimension(), image.GetSize(), 1, None)
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    origin = tuple(float(o) for o in image.GetOrigin())
    direction = tuple(float(d) for d in image.GetDirection())
    return _validated(array, spacing, origin, direction, modality, kind, filename)  # type: ignore[arg-type]


def _load_npz(raw: bytes, filename: str, limits: VolumeLimits, spacing_order: SpacingOrder) -> LoadedVolume:
    imgs = _npz_array(raw, filename, ("imgs",), limits, what="file")
    if imgs.ndim != 3:
        raise ValueError(f"file: expected a 3D volume, got {imgs.ndim}D 'imgs' of shape {imgs.shape}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            stored = np.asarray(npz["spacing"], dtype=np.float64) if "spacing" in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"file: could not read 'spacing' of {filename!r} ({exc})") from None
    if stored is None:
        spacing = (1.0, 1.0, 1.0)
    else:
        if stored.shape != (3,):
            raise ValueError(f"file: 'spacing' must hold 3 values, got shape {stored.shape}")
        order = spacing_order if spacing_order != "auto" else _guess_spacing_order(stored)
        values = stored[::-1] if order == "xyz" else stored
        spacing = (float(values[0]), float(values[1]), float(values[2]))
    stem = Path(filename).name
    modality = next((m for m in _NPZ_MODALITY_PREFIXES if stem.startswith(m + "_")), None)
    if modality in ("Microscope",):
        modality = "Microscopy"
    return _validated(imgs, spacing, (0.0, 0.0, 0.0), _IDENTITY_DIRECTION, modality, "npz", filename)


def _guess_spacing_order(spacing: np.ndarray) -> Literal["zyx", "xyz"]:
    """See the module docstring: the equal pair is the in-plane (y, x) spacing."""
    if np.isclose(spacing[1], spacing[2], rtol=1e-4):
        return "zyx"
    if np.isclose(spacing[0], spacing[1], rtol=1e-4):
        return "xyz"
    return "zyx"


def _npz_array(raw: bytes, filename: str, keys: tuple[str, ...], limits: VolumeLimits, what: str,
               expect_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """One array of an npz, its size (and ``expect_shape``) checked from the .npy header before inflating."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
            key = next((k for k in keys if k in names), None)
            if key is None and what == "mask" and len(names) == 1:
                key = names[0]
            if key is None:
                raise ValueError(f"{what}: {filename!r} has no {' or '.join(repr(k) for k in keys)} array "
                                 f"(found {names})")
            with zf.open(key + ".npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise ValueError(f"{what}: {key!r} holds Python objects, expected a numeric array")
            n_voxels = math.prod(int(n) for n in shape)
            if n_voxels > limits.max_voxels or n_voxels * dtype.itemsize > limits.max_unzipped_bytes:
                raise VolumeTooLargeError(f"{what}: {key!r} of shape {shape} is over the "
                                          f"{limits.max_voxels}-voxel limit")
            if expect_shape is not None and tuple(shape) != tuple(expect_shape):
                raise ValueError(f"{what}: shape {tuple(shape)} does not match the volume's {tuple(expect_shape)}")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return np.asarray(npz[key])
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{what}: could not read {filename!r} as npz ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(f"{what}:"):
            raise
        raise ValueError(f"{what}: could not read {filename!r} as npz ({exc})") from None


# --- validation --------------------------------------------------------------------------------------


def _check_header(
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


def _validated(
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


# --- untrusted archives and headers ------------------------------------------------------------------

_EXTERNAL_DATA_KEYS = {
    "nrrd": re.compile(rb"^\s*data ?file\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE),
    "metaimage": re.compile(rb"^\s*ElementDataFile\s*=\s*(.*)$", re.MULTILINE),
}


def _check_no_external_data(path: Path, filename: str, kind: str, inside: Path | None = None) -> None:
    """Refuse headers that make the reader open files outside the upload (a path-traversal read)."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    header = head.split(b"\n\n", 1)[0] if kind == "nrrd" else head
    match = _EXTERNAL_DATA_KEYS[kind].search(header)
    if match is None:
        return
    target = match.group(1).strip().decode("latin-1")
    if kind == "metaimage" and target.upper() == "LOCAL":
        return
    if kind == "metaimage" and inside is not None and re.fullmatch(r"[\w.\-]+", target):
        if (path.parent / target).is_file() and (path.parent / target).resolve().is_relative_to(inside.resolve()):
            return
    raise ValueError(f"file: {filename!r} refers to external data {target!r}; upload a single-file volume "
                     "or a zip holding the header and its data")


def _safe_extract(source: Path, filename: str, dest: Path, limits: VolumeLimits) -> None:
    """Extract a zip, refusing traversal, links, too many members and more than the byte budget."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"file: could not read {filename!r} as zip ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_zip_members:
            raise ValueError(f"file: {filename!r} has {len(members)} members, over the "
                             f"{limits.max_zip_members} limit")
        _check_declared_sizes(members, filename, limits)
        dest.mkdir(parents=True)
        budget = limits.max_unzipped_bytes
        for info in members:
            name = info.filename
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                raise ValueError(f"file: zip member {name!r} escapes the archive")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"file: zip member {name!r} is a symbolic link")
            if info.is_dir():
                continue
            target = dest.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    budget = _copy_bounded(src, out, budget, filename, limits)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise ValueError(f"file: corrupt zip member {name!r} ({exc})") from None
            except OSError as exc:  # a file where a folder is expected, a name too long, ...
                raise ValueError(f"file: cannot extract zip member {name!r} ({exc.strerror})") from None


def _check_declared_sizes(members: list[zipfile.ZipInfo], filename: str, limits: VolumeLimits) -> None:
    """Refuse a zip bomb from its central directory, before inflating anything.

    A member never inflates past the size it declares (``zipfile`` stops there and reports a CRC error), so
    the declared total bounds the work; an archive or a member that declares far more than it stores
    (deflate reaches ~1000:1 on constant bytes, medical images ~2-10:1) is refused once past
    ``_RATIO_FLOOR_BYTES`` unpacked.
    """
    declared = sum(info.file_size for info in members)
    if declared > limits.max_unzipped_bytes:
        raise VolumeTooLargeError(f"file: {filename!r} unpacks to more than {limits.max_unzipped_bytes} bytes "
                                  f"(its members declare {declared})")
    stored = sum(info.compress_size for info in members)
    whole = [(f"{filename!r}", declared, stored)]  # many small members, each under the floor, add up here
    for name, unpacked, packed in whole + [(f"zip member {i.filename!r}", i.file_size, i.compress_size)
                                           for i in members]:
        ratio = unpacked / max(packed, 1)
        if unpacked > _RATIO_FLOOR_BYTES and ratio > limits.max_zip_ratio:
            raise VolumeTooLargeError(f"file: {name} unpacks {ratio:.0f} times its stored size (over "
                                      f"{limits.max_zip_ratio}:1): refused as a zip bomb")


_RATIO_FLOOR_BYTES = 8 << 20  # members this small are cheap to inflate whatever their ratio


def _copy_bounded(src: IO[bytes], out: IO[bytes], budget: int, filename: str,
                  limits: VolumeLimits) -> int:
    while chunk := src.read(1 << 20):
        budget -= len(chunk)
        if budget < 0:
            raise VolumeTooLargeError(f"file: {filename!r} unpacks to more than {limits.max_unzipped_bytes} "
                                      "bytes")
        out.write(chunk)
    return budget


def _itk_reason(exc: RuntimeError) -> str:
    """The last meaningful line of an ITK exception, without source paths or the server's file paths."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Reason:")]
    text = lines[-1] if lines else "unreadable"
    text = re.sub(r"^.*?(ITK ERROR|sitk::ERROR):\s*", "", text)
    text = re.sub(r"\w+ImageIO\(0x[0-9a-f]+\):\s*", "", text)
    text = re.sub(r"(?<![\w.])/[^\s'\"]+", "the file", text)  # uploads live in temporary folders
    # ITK appends the C library's errno text, "Reason: Success" when there was none: noise to a reader.
    text = re.sub(r"\s*\(?Reason: [^)]*\)?\s*$", "", text).strip(" .:") or "unreadable"
    return text[:200]
