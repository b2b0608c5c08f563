"""Sessions: create (upload a volume), inspect, delete, and download all objects as one label map."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from app.api.deps import ExclusiveObjectsForm, ManagerDep, RouterSessionIdDep, SessionDep, SettingsDep
from app.api.errors import error_responses
from app.api.responses import dicom_headers, dicom_seg, file_response, volume_meta
from app.api.uploads import read_volume
from app.errors import InvalidInput
from app.io.volumes import save_mask
from app.schemas import paths
from app.schemas.prompts import MaskFormat, OverlapRule
from app.schemas.sessions import ObjectInfo, SessionCreated, SessionInfo
from app.sessions.session import Geometry

router = APIRouter(tags=["sessions"])

_AUTH_ERRORS = error_responses(401, 404, 410, 503, s404="Unknown session (or a token of another session).")


@router.post(
    paths.SESSIONS,
    status_code=201,
    summary="Upload a volume and open a session",
    responses=error_responses(
        401, 413, 422, 429, 503,
        s401="Missing or wrong API key (when configured).",
        s422="Unreadable, non-3D or non-finite volume, or a malformed form field; `field` names it.",
        s503="Server full, or the session store unreachable; retry after Retry-After seconds."),
)
async def create_session(
    manager: ManagerDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="NIfTI, NRRD, MHA, MHD+RAW or DICOM series as .zip, "
                                                 "or a CVPR25 .npz (imgs, spacing).")],
    modality: Annotated[str | None, Form(max_length=64, description="CT, MR, PET, ... (optional).")] = None,
    exclusive_objects: ExclusiveObjectsForm = None,
    spacing_order: Annotated[Literal["auto", "zyx", "xyz"], Form(
        description="Axis order of an .npz upload's spacing.")] = "auto",
    session_id: RouterSessionIdDep = None,
) -> SessionCreated:
    # Capacity was checked before the upload was parsed (app.api.admission_gate); the registry checks again
    # when the session is created.
    limits = settings.volume_limits
    loaded = await read_volume(file, limits, spacing_order)
    geometry = Geometry(spacing=loaded.spacing, origin=loaded.origin, direction=loaded.direction)
    session, token = await manager.create(loaded.array, geometry, modality=modality or loaded.modality,
                                          source_format=loaded.source_format, session_id=session_id,
                                          exclusive_objects=exclusive_objects)
    session.dicom_headers = loaded.dicom_headers  # for DICOM SEG export (format=dcm)
    r = session.record
    return SessionCreated(
        session_id=r.session_id, token=token, shape=r.shape, spacing=r.spacing, origin=r.origin,
        direction=r.direction, modality=r.modality, config=r.config,  # type: ignore[arg-type]
        expires_in_s=manager.expires_in_s(session), source_format=r.source_format,
        exclusive_objects=session.exclusive_objects,
    )


@router.get(paths.SESSION, summary="Session geometry, objects and expiry", responses=_AUTH_ERRORS)
async def get_session_info(session: SessionDep, manager: ManagerDep) -> SessionInfo:
    summaries = await manager.object_summaries(session)
    prompts = await manager.prompt_counts(session)
    r = await manager.stored_record(session)
    return SessionInfo(
        session_id=r.session_id, shape=r.shape, spacing=r.spacing, origin=r.origin,
        direction=r.direction, modality=r.modality, config=r.config,  # type: ignore[arg-type]
        created_at=r.created_at, last_used_at=r.last_used_at, expires_in_s=manager.expires_in_s(session),
        source_format=r.source_format, exclusive_objects=session.exclusive_objects,
        objects=[ObjectInfo(object_id=oid, version=v, voxels=n, bbox=bbox, n_prompts=prompts.get(oid, 0))
                 for oid, v, n, bbox in summaries],
    )


@router.delete(paths.SESSION, status_code=204, summary="Close the session and free its memory",
               responses=_AUTH_ERRORS)
async def delete_session(session: SessionDep, manager: ManagerDep) -> Response:
    await manager.close(session)
    return Response(status_code=204)


@router.get(
    paths.SEGMENTATION,
    summary="All objects as one label map (value = object id; overlaps: the most confident object wins, or with "
            "overlap=recent the most recently changed)",
    response_class=Response,
    responses={**_AUTH_ERRORS,
               200: {"content": {t: {} for t in ("application/x-npz", "application/gzip", "application/octet-stream",
                                                 "application/dicom")},
                     "description": f"npz key {paths.SEGMENTATION_NPZ_KEY!r}, uint8 or uint16; dcm: a DICOM SEG "
                     "with one segment per object"},
               **error_responses(422, s422="Unknown format or overlap rule, or format=dcm for a session not "
                                 "created from DICOM.")},
)
async def get_segmentation(
    session: SessionDep,
    manager: ManagerDep,
    fmt: Annotated[MaskFormat, Query(alias=paths.FORMAT_QUERY)] = MaskFormat.NPZ,
    overlap: Annotated[OverlapRule, Query(alias=paths.OVERLAP_QUERY)] = OverlapRule.CONFIDENCE,
) -> Response:
    headers = dicom_headers(session) if fmt is MaskFormat.DCM else None
    labels, versions = await manager.segmentation(session, overlap.value)
    if headers is not None:
        if not versions:
            raise InvalidInput("format: 'dcm' needs at least one object; the session has none", field="format")
        data = await dicom_seg(labels, headers, {oid: f"object {oid}" for oid in versions})
    else:
        data = await asyncio.to_thread(save_mask, labels, volume_meta(session), fmt.value,
                                       npz_key=paths.SEGMENTATION_NPZ_KEY)
    header = ",".join(f"{oid}={v}" for oid, v in versions.items())
    return file_response(data, fmt, "segmentation", {"X-Object-Versions": header})
