"""Voxel spacing and axis directions as an uploaded header states them, checked before ITK reads it.

ITK repairs or rejects bad geometry in ways that hide the problem: a NIfTI ``pixdim`` of 0, a negative one,
NaN or inf becomes 1.0, so does an NRRD ``spacings`` of NaN or -1; an exactly singular MetaImage
``TransformMatrix`` is refused with a bare "(0 0 0)", a near-singular or sheared one is accepted and later
breaks the world-to-voxel transform of every prompt. So the header's own numbers are read here: spacing
must be three positive finite millimetre values, the direction matrix orthonormal (a rotation, possibly
with a reflection). Problems raise ``ValueError`` starting with "file: " and saying which value is wrong.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ORTHONORMAL_TOLERANCE = 1e-3  # |D^T D - I|: float32 headers round-trip to ~1e-7; a shear or a scale is far off
_MAX_TEXT_HEADER_BYTES = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_NUMBER = re.compile(r"[-+]?(?:nan|inf|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)", re.IGNORECASE)


def check_spacing(filename: str, spacing: Sequence[float], where: str) -> None:
    """Refuse spacing values that are not positive finite millimetres; ``where`` names the header field."""
    values = [float(s) for s in spacing]
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        shown = ", ".join(f"{s:g}" for s in values)
        raise ValueError(f"file: spacing ({where} in {filename!r}) must be 3 positive finite values in mm, "
                         f"got ({shown})")


def check_direction(filename: str, direction: Sequence[float], where: str) -> None:
    """Refuse a 3x3 direction matrix (9 values) that is not orthonormal, saying how far off it is."""
    values = [float(d) for d in direction]
    if len(values) != 9 or not all(math.isfinite(d) for d in values):
        raise ValueError(f"file: the direction matrix ({where} in {filename!r}) must be 9 finite values, "
                         f"got {len(values)}: {values}")
    matrix = np.asarray(values, dtype=np.float64).reshape(3, 3)
    determinant = float(np.linalg.det(matrix))
    off = float(np.abs(matrix.T @ matrix - np.eye(3)).max())
    if abs(determinant) < 1e-6:
        raise ValueError(f"file: the direction matrix ({where} in {filename!r}) is singular (determinant "
                         f"{determinant:.3g}): its axes do not span 3D space")
    if off > ORTHONORMAL_TOLERANCE:
        raise ValueError(f"file: the direction matrix ({where} in {filename!r}) is not orthonormal (determinant "
                         f"{determinant:.3g}, axes off unit length or perpendicular by up to {off:.3g}); "
                         "expected a rotation")


def check_header_geometry(path: Path, filename: str, kind: str) -> None:
    """Check the spacing and direction a NIfTI, NRRD or MetaImage header states (others: nothing to do)."""
    if kind == "nifti":
        _check_nifti(path, filename)
    elif kind == "nrrd":
        _check_nrrd(path, filename)
    elif kind == "metaimage":
        _check_metaimage(path, filename)


def _check_nifti(path: Path, filename: str) -> None:
    header = read_nifti_header(path)
    if header is None:
        return  # not a header nibabel understands: ITK reports it
    check_spacing(filename, header["pixdim"][1:4], "pixdim")


def read_nifti_header(path: Path) -> Any | None:
    """The NIfTI-1/2 header of a plain or gzip file as stored (nibabel's checks would repair ``pixdim``), from
    its first bytes only; None when the file does not start like one or nibabel cannot parse it."""
    import nibabel as nib  # server-side only

    try:
        with path.open("rb") as fh:
            compressed = fh.read(2) == _GZIP_MAGIC
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as stream:
            head = stream.read(540)
        sizes = {struct.unpack(f"{order}i", head[:4])[0] for order in "<>"} if len(head) >= 4 else set()
        for header_class, length in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
            if length in sizes and len(head) >= length:
                header = header_class.from_fileobj(io.BytesIO(head[:length]), check=False)
                header.get_data_dtype()  # raises on an unknown datatype code
                return header
    except Exception as exc:  # gzip and nibabel raise many types for odd files; ITK reports them next
        del exc
    return None


def _text_header(path: Path) -> list[str]:
    with path.open("rb") as fh:
        head = fh.read(_MAX_TEXT_HEADER_BYTES)
    return head.decode("latin-1").splitlines()


def _check_nrrd(path: Path, filename: str) -> None:
    fields: dict[str, str] = {}
    for line in _text_header(path)[1:]:
        if not line.strip():
            break  # the blank line ends the header
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.lstrip("=").strip()
    if "spacings" in fields:
        check_spacing(filename, [float(v) for v in _NUMBER.findall(fields["spacings"])], "spacings")
    if "space directions" in fields:
        vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
        columns = [[float(v) for v in _NUMBER.findall(vec)] for vec in vectors]
        if len(columns) == 3 and all(len(c) == 3 for c in columns):
            norms = [math.sqrt(sum(v * v for v in c)) if all(math.isfinite(v) for v in c) else math.nan
                     for c in columns]
            check_spacing(filename, norms, "the lengths of space directions")
            unit = [v / n for c, n in zip(columns, norms, strict=True) for v in c]
            check_direction(filename, unit, "space directions")


def _check_metaimage(path: Path, filename: str) -> None:
    fields: dict[str, str] = {}
    for line in _text_header(path):
        key, sep, value = line.partition("=")
        if not sep:
            break
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    for key in ("ElementSpacing", "ElementSize"):
        if key in fields:
            values = [float(v) for v in _NUMBER.findall(fields[key])]
            if len(values) == 3:
                check_spacing(filename, values, key)
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        if key in fields:
            values = [float(v) for v in _NUMBER.findall(fields[key])]
            if len(values) == 9:
                check_direction(filename, values, key)
