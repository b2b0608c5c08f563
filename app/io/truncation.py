"""Truncated files: a NIfTI or MetaImage shorter than its header declares is refused before ITK reads it.

ITK zero-fills a short NIfTI (plain or gzip) and reports a short MetaImage with a misleading reason, so both
are measured against their header here (NRRD's reader already reports a short read). A NIfTI's voxels are also
checked finite here, before ITK converts them.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.io.volume_types import VolumeLimits


def check_complete(path: Path, filename: str, kind: str, limits: VolumeLimits) -> None:
    """Refuse a file shorter than its header declares (NRRD's reader reports short reads itself)."""
    if kind == "nifti":
        _check_nifti_complete(path, filename, limits)
    elif kind == "metaimage":
        _check_metaimage_complete(path, filename)


GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_HEADER_BYTES = (348, 540)  # NIfTI-1, NIfTI-2: also the first int32 (sizeof_hdr) of the file
_NIFTI_SINGLE_FILE_MAGIC = (b"n+1", b"n+2")
TRAILING_SLACK_BYTES = 1 << 20  # read this far past the declared data at most, so a gzip bomb stays bounded


def _check_nifti_complete(path: Path, filename: str, limits: VolumeLimits) -> None:
    """Refuse a NIfTI shorter than its header declares (ITK silently pads the missing voxels with zeros).

    The size that counts is the uncompressed one: ``vox_offset + prod(dims) * bytes per voxel``. A gzip
    stream is inflated (and discarded) to its end marker, or to just past the declared size, so a stream cut
    off anywhere, even in its 8-byte trailer, is caught; a plain file is measured by its size. Headers this check cannot parse, and volumes past the voxel limit,
    are left to ITK and ``check_header`` to report.
    """
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
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
            while compressed and have <= declared + TRAILING_SLACK_BYTES and (chunk := stream.read(1 << 20)):
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
class MetaImageLayout:
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


def metaimage_layout(path: Path) -> MetaImageLayout | None:
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
    return MetaImageLayout(tuple(lines), data_path, offset, data_path.stat().st_size - offset,
                            math.prod(dims) * channels * element_bytes,
                            fields.get("CompressedData", "False").lower() == "true")


def check_nifti_finite(path: Path, filename: str) -> None:
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
