"""A zip's contents as a volume: its one MetaImage, else its one DICOM series (with each slice's header)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from app.io.archives import check_no_external_data
from app.io.sitk_reader import read_with_sitk
from app.io.volume_checks import check_header, from_image, itk_reason
from app.io.volume_types import LoadedVolume, VolumeLimits

if TYPE_CHECKING:
    from pydicom import Dataset


_DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET", "US": "US", "NM": "NM", "XA": "XA"}


def load_extracted(root: Path, filename: str, limits: VolumeLimits) -> LoadedVolume:
    files = [p for p in root.rglob("*") if p.is_file()]
    headers = [p for p in files if p.suffix.lower() in (".mhd", ".mha")]
    if len(headers) > 1:
        raise ValueError(f"file: {filename!r} holds {len(headers)} MetaImage headers; expected one")
    if headers:
        check_no_external_data(headers[0], filename, "metaimage", inside=root)
        return read_with_sitk(headers[0], filename, "metaimage", limits)
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
        raise ValueError(f"file: could not read {filename!r} as DICOM ({itk_reason(exc)})") from None
    w, h = first.GetSize()[:2]
    check_header(filename, 3, (w, h, len(files)), first.GetNumberOfComponents(), limits)
    modality = None
    if first.HasMetaDataKey("0008|0060"):
        modality = _DICOM_MODALITIES.get(first.GetMetaData("0008|0060").strip().upper())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"file: could not read {filename!r} as DICOM ({itk_reason(exc)})") from None
    volume = from_image(image, filename, "dicom", modality)
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
