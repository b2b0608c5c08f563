"""DICOMweb for v1 sessions: open a session from a series on the DICOMweb server, store SEGs back (STOW-RS).

    POST /v1/sessions/dicomweb                      form: series_uid, modality?  -> 201 SessionCreated
    POST /v1/sessions/{sid}/dicomweb/store          ?object_id=N (else every object) -> StoredSeg

Both need ``dicomweb_url`` (404 otherwise). The series is read as an uploaded DICOM zip would be
(``app.io.dicomweb``), so the session keeps each slice's header and its objects export as DICOM SEG; the
store route sends exactly the SEG ``GET .../mask?format=dcm`` (or ``.../segmentation?format=dcm``) returns.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, Query

from app.api.deps import ExclusiveObjectsForm, ManagerDep, RouterSessionIdDep, SessionDep
from app.api.dicomweb_deps import DicomwebDep, LimitsDep, dicomweb_errors, load_series
from app.api.errors import error_responses
from app.api.responses import dicom_headers, dicom_seg
from app.errors import InvalidInput
from app.schemas import paths
from app.schemas.monailabel import StoredSeg
from app.schemas.sessions import SessionCreated
from app.sessions.session import Geometry

router = APIRouter(tags=["dicomweb"])


_ERRORS = error_responses(
    401, 404, 422, 502, 503,
    s401="Missing or wrong bearer token (or API key, when configured).",
    s404="No DICOMweb server configured, or unknown session / object.",
    s422="Unknown series, or a session not created from DICOM.",
    s503="Server full; retry after Retry-After seconds.")


@router.post(paths.SESSIONS_FROM_DICOMWEB, status_code=201, summary="Open a session from a series on the DICOMweb "
             "server", responses=_ERRORS)
async def create_session_from_dicomweb(
    manager: ManagerDep,
    source: DicomwebDep,
    limits: LimitsDep,
    series_uid: Annotated[str, Form(max_length=64, description="SeriesInstanceUID on the DICOMweb server.")],
    modality: Annotated[str | None, Form(max_length=64, description="CT, MR, ... (default: the series').")] = None,
    exclusive_objects: ExclusiveObjectsForm = None,
    session_id: RouterSessionIdDep = None,
) -> SessionCreated:
    manager.check_room_for_session()  # before the series is transferred
    loaded = await load_series(source, series_uid, limits, field="series_uid")
    geometry = Geometry(spacing=loaded.spacing, origin=loaded.origin, direction=loaded.direction)
    session, token = await manager.create(loaded.array, geometry, modality=modality or loaded.modality,
                                          source_format=loaded.source_format, session_id=session_id,
                                          exclusive_objects=exclusive_objects)
    session.dicom_headers = loaded.dicom_headers
    r = session.record
    return SessionCreated(
        session_id=r.session_id, token=token, shape=r.shape, spacing=r.spacing, origin=r.origin,
        direction=r.direction, modality=r.modality, config=r.config,  # type: ignore[arg-type]
        expires_in_s=manager.expires_in_s(session), source_format=r.source_format,
        exclusive_objects=session.exclusive_objects,
    )


@router.post(paths.SESSION_DICOMWEB_STORE, summary="Store an object's (or every object's) DICOM SEG on the DICOMweb "
             "server (STOW-RS)", responses=_ERRORS)
async def store_seg(
    session: SessionDep,
    manager: ManagerDep,
    source: DicomwebDep,
    object_id: Annotated[int | None, Query(ge=1, le=paths.MAX_OBJECT_ID,
                                           description="One object; default: all objects, one segment each.")]
    = None,
) -> StoredSeg:
    headers = dicom_headers(session)
    if object_id is not None:
        mask, _version = await manager.get_mask(session, object_id)
        dtype = np.uint8 if object_id <= 255 else np.uint16
        seg = await dicom_seg(np.where(mask != 0, dtype(object_id), dtype(0)), headers,
                              {object_id: f"object {object_id}"})
    else:
        labels, versions = await manager.segmentation(session)
        if not versions:
            raise InvalidInput("object_id: the session has no object to store", field="object_id")
        seg = await dicom_seg(labels, headers, {oid: f"object {oid}" for oid in versions})
    with dicomweb_errors("image"):
        stored = await asyncio.to_thread(source.store, seg)
    return StoredSeg(study_instance_uid=stored.study_instance_uid, series_instance_uid=stored.series_instance_uid,
                     sop_instance_uid=stored.sop_instance_uid)
