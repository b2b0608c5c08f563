"""Objects of a session: box, clicks, scribble, lasso, undo, reset, start from a mask, download the mask, remove.

Every mask-changing route replies with ``PromptReply``: the object's new version, the net count and bbox of
changed voxels, and each model step with its timings; the changed voxels themselves go out on the
session's WebSocket stream as diff frames (the "gru" step of a click before the "decoder" step runs).
The prompt is in the session's history before the reply is sent. A failed request changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, TypedDict

import numpy as np
from fastapi import APIRouter, File, Query, Response, UploadFile

from app.api.deps import IdempotencyKeyDep, ManagerDep, ObjectIdPath, SessionDep, SettingsDep
from app.api.errors import error_responses
from app.api.responses import dicom_headers, dicom_seg, file_response, volume_meta
from app.api.uploads import read_mask
from app.coordinates import world_box_to_voxel, world_to_voxel
from app.io.volumes import save_mask
from app.schemas import paths
from app.schemas.prompts import BoxRequest, ClicksRequest, MaskFormat, PromptReply, StepReply, TextRequest
from app.schemas.regions import LassoRequest, ScribbleRequest
from app.sessions.outcomes import PromptOutcome
from app.sessions.session import Session
from app.sessions.validation import lasso_region, scribble_region

router = APIRouter(tags=["objects"])

_NOT_FOUND = "Unknown session or object (or a token of another session)."
_PROMPT_ERRORS = error_responses(401, 404, 410, 413, 422, 429, 503, s404=_NOT_FOUND)
"""A prompt with a JSON body (box, clicks): rate limited, body size limited."""
_ACTION_ERRORS = error_responses(401, 404, 410, 422, 429, 503, s404=_NOT_FOUND)
"""A prompt without a body (undo, reset): rate limited."""
_READ_ERRORS = error_responses(401, 404, 410, 422, 503, s404=_NOT_FOUND)
"""Downloads and removal: not rate limited."""


def prompt_reply(outcome: PromptOutcome) -> PromptReply:
    return PromptReply(
        object_id=outcome.object_id,
        version=outcome.version,
        changed=outcome.changed,
        bbox=outcome.bbox,
        steps=[StepReply(step=c.step, version=c.version, changed=c.changed, bbox=c.bbox,  # type: ignore[arg-type]
                         timings_ms=c.timings_ms) for c in outcome.steps],
        timings_ms=outcome.timings_ms,
    )


class _WorldFrame(TypedDict):
    spacing_zyx: Sequence[float]
    origin_xyz: Sequence[float]
    direction: Sequence[float]


def _geometry(session: Session) -> _WorldFrame:
    r = session.record
    return {"spacing_zyx": r.spacing, "origin_xyz": r.origin, "direction": r.direction}


@router.post(paths.OBJECT_BOX, summary="Segment an object from a 3D box (restarts the object)",
             responses=_PROMPT_ERRORS)
async def add_box(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, body: BoxRequest,
                  key: IdempotencyKeyDep = None) -> PromptReply:
    box = world_box_to_voxel(body.box, **_geometry(session)) if body.world else list(body.voxel_box())
    return prompt_reply(await manager.add_box(session, object_id, box, key=key))


@router.post(paths.OBJECT_TEXT, summary="Segment an object by its name, optionally with a box and clicks (SegVol's "
             "text prompt; restarts the object)", responses=_PROMPT_ERRORS)
async def add_text(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, body: TextRequest,
                   key: IdempotencyKeyDep = None) -> PromptReply:
    return prompt_reply(await manager.add_text(session, object_id, body.text, body.box, body.points, body.labels,
                                               key=key))


@router.post(paths.OBJECT_CLICKS, summary="Refine an object with clicks", responses=_PROMPT_ERRORS)
async def add_clicks(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, body: ClicksRequest,
                     key: IdempotencyKeyDep = None) -> PromptReply:
    points: list[tuple[int, int, int]]
    if body.world:
        points = [(int(z), int(y), int(x)) for z, y, x in world_to_voxel(body.points, **_geometry(session))]
    else:
        points = body.voxel_points()
    return prompt_reply(await manager.add_clicks(session, object_id, points, body.labels, mode=body.mode, key=key))


@router.post(paths.OBJECT_SCRIBBLE, summary="Refine an object with a scribble (painted voxels with a label)",
             responses=_PROMPT_ERRORS)
async def add_scribble(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, body: ScribbleRequest,
                       key: IdempotencyKeyDep = None) -> PromptReply:
    region = scribble_region(body.voxels, session.shape)
    return prompt_reply(await manager.add_region(session, object_id, region, body.label, mode=body.mode, key=key))


@router.post(paths.OBJECT_LASSO, summary="Refine an object with a lasso (a filled contour on one slice)",
             responses=_PROMPT_ERRORS)
async def add_lasso(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, body: LassoRequest,
                    key: IdempotencyKeyDep = None) -> PromptReply:
    region = await asyncio.to_thread(lasso_region, body.axis, body.index, body.contour, session.shape)
    return prompt_reply(await manager.add_region(session, object_id, region, body.label, mode=body.mode, key=key))


@router.post(paths.OBJECT_UNDO, summary="Undo the object's last prompt",
             responses={**_ACTION_ERRORS, **error_responses(409)})
async def undo(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, key: IdempotencyKeyDep = None
               ) -> PromptReply:
    return prompt_reply(await manager.undo(session, object_id, key=key))


@router.post(paths.OBJECT_RESET, summary="Empty the object (undoable)", responses=_ACTION_ERRORS)
async def reset(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath, key: IdempotencyKeyDep = None
                ) -> PromptReply:
    return prompt_reply(await manager.reset(session, object_id, key=key))


@router.put(paths.OBJECT_MASK, summary="Start the object from an existing mask (npz key 'mask', nii.gz, nrrd)",
            responses=_PROMPT_ERRORS)
async def put_mask(
    session: SessionDep,
    manager: ManagerDep,
    settings: SettingsDep,
    object_id: ObjectIdPath,
    file: Annotated[UploadFile, File(description="A (D, H, W) 0/1 mask of the volume's shape.")],
    key: IdempotencyKeyDep = None,
) -> PromptReply:
    limits = settings.volume_limits
    mask = await read_mask(file, volume_meta(session), limits)
    return prompt_reply(await manager.set_mask(session, object_id, mask, key=key))


@router.get(
    paths.OBJECT_MASK,
    summary="Download the object's mask",
    response_class=Response,
    responses={**_READ_ERRORS, 200: {"content": {"application/x-npz": {}, "application/gzip": {},
                                            "application/octet-stream": {}, "application/dicom": {}},
                                "description": f"npz key {paths.MASK_NPZ_KEY!r}: uint8 (D, H, W); dcm: a DICOM "
                                f"SEG (sessions created from DICOM); the {paths.OBJECT_VERSION_HEADER} header gives "
                                "the version."}},
)
async def get_mask(
    session: SessionDep,
    manager: ManagerDep,
    object_id: ObjectIdPath,
    fmt: Annotated[MaskFormat, Query(alias=paths.FORMAT_QUERY)] = MaskFormat.NPZ,
) -> Response:
    headers = dicom_headers(session) if fmt is MaskFormat.DCM else None
    mask, version = await manager.get_mask(session, object_id)
    if headers is not None:
        dtype = np.uint8 if object_id <= 255 else np.uint16
        labels = np.where(mask != 0, dtype(object_id), dtype(0))  # segment value = object id
        data = await dicom_seg(labels, headers, {object_id: f"object {object_id}"})
    else:
        data = await asyncio.to_thread(save_mask, mask, volume_meta(session), fmt.value,
                                       npz_key=paths.MASK_NPZ_KEY)
    return file_response(data, fmt, f"object-{object_id}", {paths.OBJECT_VERSION_HEADER: str(version)})


@router.delete(paths.OBJECT, status_code=204, summary="Remove the object (not undoable)",
               responses=_READ_ERRORS)
async def remove_object(session: SessionDep, manager: ManagerDep, object_id: ObjectIdPath,
                        key: IdempotencyKeyDep = None) -> Response:
    await manager.remove_object(session, object_id, key=key)
    return Response(status_code=204)
