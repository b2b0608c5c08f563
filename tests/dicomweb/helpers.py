"""Reading MONAI Label replies the way the viewers do, and DICOM SEGs back from the DICOMweb server."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import SimpleITK as sitk


def read_label_image(data: bytes, extension: str = ".nrrd") -> sitk.Image:
    """A result file as 3D Slicer reads it (SimpleITK, by extension)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"label{extension}"
        path.write_bytes(data)
        return sitk.ReadImage(str(path))


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """name -> (filename, content type, payload) of a multipart/form-data reply (stdlib email parser, as
    Slicer's client reads it with ``cgi.FieldStorage``: parts with a filename are files, others fields)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.is_multipart()
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
    return parts


def ohif_parse(content_type: str, body: bytes) -> dict[str, Any]:
    """OHIF v3's ``parseResponse``: split on the boundary, take the part whose headers say
    ``Content-Type: application/json`` and read ``centroids`` from it."""
    boundary = content_type.split("boundary=")[1].split(";")[0]
    text = body.decode("latin-1")
    parts = [p for p in text.split(f"--{boundary}") if p.strip()]
    json_part = next(p for p in parts if "Content-Type: application/json" in p)
    assert any("Content-Type: application/octet-stream" in p for p in parts)
    data = json.loads(json_part[json_part.index("{"): json_part.rindex("}") + 1])
    assert isinstance(data["centroids"], dict)  # OHIF iterates Object.entries(response.centroids)
    return data


def seg_labelmap(seg_bytes: bytes, sop_uids: list[str]) -> np.ndarray:
    """A stored DICOM SEG back as a (D, H, W) label map (value = segment number), slice k = ``sop_uids[k]``."""
    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=numbers,
                                               combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    return np.asarray(pixels)
