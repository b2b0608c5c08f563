"""Reply helpers shared by several route modules (one home, so route modules never import each other).

    volume_meta     the session's volume geometry, for writing a mask file or reading an uploaded one
    file_response   a mask or label-map file as an attachment
    dicom_headers   the source series' headers a DICOM SEG needs, or InvalidInput naming ``format``
    dicom_seg       a DICOM SEG built off the event loop; refusals become InvalidInput naming ``format``
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Response

from app.errors import InvalidInput
from app.io.dicom_seg import build_seg
from app.io.volumes import VolumeMeta
from app.schemas.prompts import MaskFormat
from app.sessions.session import Session


def volume_meta(session: Session) -> VolumeMeta:
    r = session.record
    return VolumeMeta(shape=r.shape, spacing=r.spacing, origin=r.origin, direction=r.direction)


def file_response(data: bytes, fmt: MaskFormat, stem: str, headers: dict[str, str] | None = None) -> Response:
    disposition = {"Content-Disposition": f'attachment; filename="{stem}{fmt.extension}"'}
    return Response(content=data, media_type=fmt.media_type, headers={**disposition, **(headers or {})})


def dicom_headers(session: Session) -> tuple[Any, ...]:
    """The source series' headers a DICOM SEG references; ``InvalidInput`` naming ``format`` without them."""
    if session.dicom_headers is not None:
        return session.dicom_headers
    if session.record.source_format == "dicom":
        reason = "its DICOM headers are kept in memory only and this session was restored after a restart"
    else:
        reason = f"this session was created from a {session.record.source_format or 'non-DICOM'} upload"
    raise InvalidInput(f"format: 'dcm' (DICOM SEG) needs a session created from a DICOM series; {reason}. "
                       "Use npz, nii.gz or nrrd.", field="format")


async def dicom_seg(labels: np.ndarray, headers: tuple[Any, ...], names: dict[int, str]) -> bytes:
    """``build_seg`` off the event loop; its refusals become ``InvalidInput`` naming ``format``."""
    try:
        return await asyncio.to_thread(build_seg, labels, headers, names)
    except ValueError as e:
        raise InvalidInput(f"format: cannot export a DICOM SEG ({e})", field="format") from e

