"""nnInteractive's remote protocol at ``/nninteractive`` (``--nninteractive``): what ``nninteractive-client``
2.6 calls, answered from our sessions through ``app.sessions.nninteractive_leases``.

Every call but ``/claim``, ``/capabilities`` and ``/healthz`` needs the ``X-Lease-Token`` of a live lease
(410 otherwise, which the client raises as ``SessionExpiredError``); ``/claim`` at capacity is 503 with
Retry-After (``ServerAtCapacityError``). Prediction replies carry ``X-Meta`` ``{"ran_prediction", "bbox",
"dtype", "shape"}`` and the NNIA-packed new values of the target buffer inside ``bbox``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.requests import HTTPConnection

from app.api.nninteractive_payloads import (
    check_box,
    check_point,
    initial_mask,
    mask_region,
    read_header,
    read_meta,
    unpack_body,
)
from app.schemas import nnia
from app.schemas import nninteractive as proto
from app.sessions.nninteractive_leases import Interaction, Lease, LeaseRegistry, Prediction

router = APIRouter(prefix=proto.NNINTERACTIVE_PREFIX, tags=["nninteractive"])


def get_registry(conn: HTTPConnection) -> LeaseRegistry:
    return conn.app.state.nninteractive


RegistryDep = Annotated[LeaseRegistry, Depends(get_registry)]


async def get_lease(registry: RegistryDep,
                    token: Annotated[str | None, Header(alias=proto.LEASE_HEADER)] = None) -> Lease:
    return await registry.get(token)


LeaseDep = Annotated[Lease, Depends(get_lease)]


def prediction_response(p: Prediction) -> Response:
    meta: dict[str, Any] = {"ran_prediction": p.ran, "bbox": None}
    body = b""
    if p.bbox is not None and p.block is not None:
        meta.update(bbox=[list(b) for b in p.bbox], dtype=p.block.dtype.name, shape=list(p.block.shape))
        body = nnia.pack(p.block)
    return Response(body, media_type=proto.OCTET_STREAM,
                    headers={proto.META_HEADER: json.dumps(meta, separators=(",", ":"))})


@router.get(proto.PATH_HEALTHZ, summary="nnInteractive: liveness")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@router.post(proto.PATH_CLAIM, summary="nnInteractive: claim a lease (503 at capacity)")
async def claim(registry: RegistryDep) -> dict[str, Any]:
    lease = registry.claim()
    return {"lease_token": lease.token, "idle_timeout_seconds": registry.idle_timeout_s,
            "liveness_timeout_seconds": registry.liveness_timeout_s,
            "max_sessions": registry.manager.limits.max_sessions}


@router.get(proto.PATH_CAPABILITIES, summary="nnInteractive: what this server supports")
async def capabilities(registry: RegistryDep) -> dict[str, Any]:
    return proto.capabilities(liveness_timeout_s=registry.liveness_timeout_s, idle_timeout_s=registry.idle_timeout_s)


@router.post(proto.PATH_RELEASE, summary="nnInteractive: release the lease and its session (idempotent)")
async def release(registry: RegistryDep,
                  token: Annotated[str | None, Header(alias=proto.LEASE_HEADER)] = None) -> dict[str, bool]:
    await registry.release(token)
    return {"released": True}


@router.post(proto.PATH_HEARTBEAT, summary="nnInteractive: keep the lease alive")
async def heartbeat(registry: RegistryDep, lease: LeaseDep) -> dict[str, float]:
    return {"remaining_seconds": registry.remaining_s(lease)}


@router.get(proto.PATH_LEASE_STATUS, summary="nnInteractive: the lease's remaining time (resets no clock)")
async def lease_status(registry: RegistryDep,
                       token: Annotated[str | None, Header(alias=proto.LEASE_HEADER)] = None) -> dict[str, float]:
    lease = registry.peek(token)
    return {"remaining_seconds": registry.remaining_s(lease), "idle_timeout_seconds": registry.idle_timeout_s}


@router.post(proto.PATH_SET_IMAGE, summary="nnInteractive: upload the image (NNIA [1, D, H, W])")
async def set_image(request: Request, registry: RegistryDep, lease: LeaseDep) -> dict[str, Any]:
    meta = read_meta(request.headers.get(proto.META_HEADER), proto.ImageMeta)
    body = await request.body()
    registry.check_image_shape(read_header(body, "image").shape)  # before any memory is spent on the pixels
    image = await asyncio.to_thread(unpack_body, body, "image", registry.max_voxels)
    spacing = (meta.image_properties or {}).get("spacing")
    async with lease.lock:
        shape = await registry.set_image(lease, image, spacing)
    return {"original_image_shape": list(shape)}


@router.post(proto.PATH_SET_TARGET_BUFFER, summary="nnInteractive: declare the target buffer")
async def set_target_buffer(body: proto.TargetBufferBody, registry: RegistryDep, lease: LeaseDep
                            ) -> dict[str, bool]:
    async with lease.lock:
        registry.set_target_buffer(lease, body.shape, body.dtype)
    return {"ok": True}


@router.post(proto.PATH_SET_DO_AUTOZOOM, summary="nnInteractive: autozoom flag (kept; our ROI logic decides)")
async def set_do_autozoom(body: proto.AutozoomBody, lease: LeaseDep) -> dict[str, bool]:
    lease.do_autozoom = body.do_autozoom
    return {"do_autozoom": body.do_autozoom}


@router.post(proto.PATH_RESET_INTERACTIONS, summary="nnInteractive: empty the target (undoable)")
async def reset_interactions(registry: RegistryDep, lease: LeaseDep) -> dict[str, bool]:
    async with lease.lock:
        await registry.reset(lease)
    return {"ok": True}


@router.post(proto.PATH_UNDO, summary="nnInteractive: undo the last interaction")
async def undo(registry: RegistryDep, lease: LeaseDep) -> Response:
    async with lease.lock:
        return prediction_response(await registry.undo(lease))


@router.post(proto.PATH_PREDICT, summary="nnInteractive: run the interactions queued with run_prediction=false")
async def predict(body: proto.PredictBody, registry: RegistryDep, lease: LeaseDep) -> Response:
    async with lease.lock:
        return prediction_response(await registry.interact(lease, None, True))


@router.post(proto.PATH_ADD_BBOX, summary="nnInteractive: box interaction")
async def add_bbox(body: proto.BboxBody, registry: RegistryDep, lease: LeaseDep) -> Response:
    async with lease.lock:
        shape = registry.session_of(lease).shape
        item = Interaction("bbox", body.include_interaction, box=check_box(body.bbox_coords, shape))
        return prediction_response(await registry.interact(lease, item, body.run_prediction))


@router.post(proto.PATH_ADD_POINT, summary="nnInteractive: point interaction")
async def add_point(body: proto.PointBody, registry: RegistryDep, lease: LeaseDep) -> Response:
    async with lease.lock:
        shape = registry.session_of(lease).shape
        item = Interaction("point", body.include_interaction, point=check_point(body.coordinates, shape))
        return prediction_response(await registry.interact(lease, item, body.run_prediction))


async def _mask_interaction(kind: str, request: Request, registry: LeaseRegistry, lease: Lease) -> Response:
    meta = read_meta(request.headers.get(proto.META_HEADER), proto.MaskMeta)
    body = await request.body()
    async with lease.lock:
        shape = registry.session_of(lease).shape
        mask = await asyncio.to_thread(unpack_body, body, "mask", int(shape[0]) * int(shape[1]) * int(shape[2]))
        region = await asyncio.to_thread(mask_region, mask, meta.interaction_bbox, shape)
        item = Interaction(kind, meta.include_interaction, region=region)  # type: ignore[arg-type]
        return prediction_response(await registry.interact(lease, item, meta.run_prediction))


@router.post(proto.PATH_ADD_SCRIBBLE, summary="nnInteractive: scribble interaction (NNIA mask)")
async def add_scribble(request: Request, registry: RegistryDep, lease: LeaseDep) -> Response:
    return await _mask_interaction("scribble", request, registry, lease)


@router.post(proto.PATH_ADD_LASSO, summary="nnInteractive: lasso interaction (NNIA filled mask)")
async def add_lasso(request: Request, registry: RegistryDep, lease: LeaseDep) -> Response:
    return await _mask_interaction("lasso", request, registry, lease)


@router.post(proto.PATH_ADD_INITIAL_SEG, summary="nnInteractive: start from a segmentation (NNIA)")
async def add_initial_seg(request: Request, registry: RegistryDep, lease: LeaseDep) -> Response:
    # Checked (a malformed X-Meta is refused) but not needed: the segmentation is applied either way.
    read_meta(request.headers.get(proto.META_HEADER), proto.InitialSegMeta)
    body = await request.body()
    async with lease.lock:
        shape = registry.session_of(lease).shape
        seg = await asyncio.to_thread(unpack_body, body, "seg", int(shape[0]) * int(shape[1]) * int(shape[2]))
        item = Interaction("initial_seg", True, mask=initial_mask(seg, shape))
        # The client already holds the segmentation; what ran is still reported so its buffer stays exact.
        return prediction_response(await registry.interact(lease, item, True))
