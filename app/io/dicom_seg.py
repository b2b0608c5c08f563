"""Export masks and label maps as DICOM Segmentation (SEG) instances that reference their source series.

A session created from a DICOM series keeps each slice's header (``LoadedVolume.dicom_headers``, pixel data
dropped, ``headers[k]`` describing ``array[k]``). ``build_seg`` encodes a (D, H, W) array of object ids as
one BINARY SEG with one segment per object id: frame k of segment s references ``headers[k]`` through its
SOP Instance UID, and the SEG joins the source's study and frame of reference, so viewers (OHIF, 3D Slicer)
overlay it on the series it came from. Empty frames are left out (highdicom's default), and so are objects
without a voxel: a segment no frame refers to is not valid DICOM (dciodvfy flags it) and viewers show it as
a broken entry, so an empty object is simply not exported; a SEG with no voxel at all is refused.
The series carries a SeriesDescription (``series_description``), which viewers list the series by.

Segment numbers are 1..n in increasing object id order (DICOM requires consecutive numbers; object ids may
have gaps); the object id is kept as the segment's Tracking ID ("object <id>").
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from app import __version__

if TYPE_CHECKING:
    from pydicom import Dataset

SOFTWARE_NAME = "segvol-interactive"
ALGORITHM_NAME = "SegVol + GRU corrector (interactive)"
DEFAULT_SERIES_DESCRIPTION = "Segmentation (segvol-interactive)"
SEG_SERIES_NUMBER = 1000  # a number viewers sort after the usual source series numbers
# Attributes highdicom needs from the source images to place the frames (a SEG without them is unusable).
_REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                               "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                               "PixelSpacing", "Rows", "Columns")


def build_seg(
    mask_or_labelmap: np.ndarray,
    source_headers: Sequence[Dataset],
    labels: Mapping[int, str] | None = None,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
) -> bytes:
    """Encode a mask or label map as a DICOM SEG file (Part 10 bytes).

    Args:
        mask_or_labelmap: (D, H, W) non-negative integer (or bool) array in the source's slice order
            (``array[k]`` is the image of ``source_headers[k]``, rows y, columns x); each non-zero value is
            an object id.
        source_headers: the D headers of the source series (pixel data not needed).
        labels: object id -> segment label; ids present in the array but not listed are labelled
            "object <id>". Ids without a voxel are left out (see the module docstring).
        series_description: the SEG series' SeriesDescription (at most 64 characters, as DICOM's LO).
    Returns:
        The SEG instance, BINARY, one segment per object id, algorithm type SEMIAUTOMATIC.
    Raises:
        ValueError: "mask: ..." for a bad array or nothing to export, "source_headers: ..." for headers that
            do not match the array or lack the geometry a SEG must reference.
    """
    import highdicom as hd  # server-side only: importing app.io stays cheap
    from pydicom.sr.codedict import codes

    array = np.asarray(mask_or_labelmap)
    headers = list(source_headers)
    _check_inputs(array, headers)
    if labels and min(int(k) for k in labels) < 1:
        raise ValueError(f"labels: object ids must be >= 1, got {min(int(k) for k in labels)}")
    object_ids = sorted(int(v) for v in np.unique(array) if v != 0)
    if not object_ids:
        raise ValueError("mask: nothing to export (every object is empty)")

    # Object ids -> consecutive segment numbers 1..n, as a label map highdicom splits into segments.
    lookup = np.zeros(max(object_ids) + 1, dtype=np.uint16 if len(object_ids) > 255 else np.uint8)
    lookup[object_ids] = np.arange(1, len(object_ids) + 1)
    segment_map = lookup[array.view(np.uint8) if array.dtype == bool else array]  # no widening copy

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=(labels or {}).get(oid) or f"object {oid}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"object {oid}",
        )
        for number, oid in enumerate(object_ids, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=segment_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=__version__,
            device_serial_number="0",
            content_label="SEGMENTATION",
            content_description="Interactive segmentation",
            series_description=series_description[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the source headers
        raise ValueError(f"source_headers: cannot build a DICOM SEG referencing this series ({exc})") from None
    return _to_bytes(seg)


def _check_inputs(array: np.ndarray, headers: list[Dataset]) -> None:
    if array.ndim != 3:
        raise ValueError(f"mask: expected a (D, H, W) array, got shape {array.shape}")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"mask: expected integer object ids, got dtype {array.dtype}")
        if array.size and int(array.min()) < 0:
            raise ValueError("mask: object ids must be >= 0")
    if len(headers) != array.shape[0]:
        raise ValueError(f"source_headers: {len(headers)} headers for {array.shape[0]} slices")
    for k, header in enumerate(headers):
        missing = [name for name in _REQUIRED_SOURCE_ATTRIBUTES if name not in header]
        if missing:
            raise ValueError(f"source_headers: slice {k} lacks {', '.join(missing)}")
        if (int(header.Rows), int(header.Columns)) != array.shape[1:]:
            raise ValueError(f"source_headers: slice {k} is {header.Rows}x{header.Columns}, the array's "
                             f"slices are {array.shape[1]}x{array.shape[2]}")


def _to_bytes(seg: Dataset) -> bytes:
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
