"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.schemas import paths

router = APIRouter(tags=["health"])


@router.get(paths.HEALTHZ, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    paths.READYZ,
    summary="Readiness: model loaded and warmed up, metadata store reachable",
    responses={503: {"description": "Not ready (model not loaded or store unreachable)."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    store_ok = await services.store.ping()
    ready = services.ready and store_ok
    body = {
        "status": "ready" if ready else "not_ready",
        "model": services.predictor.config_name,
        "device": str(services.predictor.device),
        "click_propagation_reach": services.predictor.config.propagation_reach,
        "click_region_reach": services.predictor.config.click_region_reach,
        "prompt_kinds": services.predictor.prompt_kinds,  # "text" only with SegVol's text branch
        "store": services.store_kind,
        "store_reachable": store_ok,
        "sessions": len(services.manager),
        "max_sessions": services.settings.max_sessions,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(paths.METRICS, summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    body, content_type = services.metrics.render()
    return Response(body, media_type=content_type)
