"""The app factory.

    app = create_app(Settings(model_config_name="segvol-test", weights=None, allow_random_weights=True))

Nothing happens at import time: ``create_app`` only wires routes, middleware and error handlers; the
``lifespan`` builds the model once (and warms it up), connects the metadata store and starts the reaper,
and on shutdown ends every session, stops the device thread and closes the store.
Sessions live in this process: run exactly one worker process per device (``python -m app`` does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import app as app_package
from app.api.admission_gate import AdmissionGate
from app.api.api_keys import ApiKeyAuth, ApiKeyCheck, document_api_key
from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimit, RequestMetrics
from app.api.monailabel_gate import MonaiLabelGate
from app.api.nninteractive_gate import NnInteractiveGate
from app.api.rate_limit import RateLimit, TokenBuckets
from app.api.router import api_router
from app.api.routes import nninteractive
from app.config import Settings
from app.schemas import paths
from app.schemas.paths import API_KEY_HEADER
from app.sessions.metrics import ServiceMetrics
from app.sessions.nninteractive_leases import LeaseRegistry
from app.sessions.services import start_services, stop_services

if TYPE_CHECKING:
    from app.models import Predictor

_MULTIPART_SLACK_BYTES = 64 * 1024  # multipart framing around an upload of max_upload_bytes


def create_app(settings: Settings | None = None, *, predictor: Predictor | None = None) -> FastAPI:
    """Build the ASGI app. ``predictor``: an already built model to serve (else built from ``settings``)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await start_services(settings, predictor=predictor, metrics=metrics)
        app.state.services = services
        leases = None
        if settings.nninteractive_enabled:  # nnInteractive's leases on top of the sessions (docs/nninteractive.md)
            leases = LeaseRegistry(services.manager, liveness_timeout_s=settings.nninteractive_liveness_timeout_s,
                                   idle_timeout_s=settings.idle_timeout_s, max_voxels=settings.max_voxels)
            leases.start()
            app.state.nninteractive = leases
        try:
            yield
        finally:
            if leases is not None:
                await leases.stop()
            await stop_services(services)

    app = FastAPI(
        title="Interactive 3D segmentation service",
        version=app_package.__version__,
        description="Upload a volume once, then box and click: every prompt answers with what changed, and "
        "the WebSocket stream carries the changed voxels. Every route except health and metrics needs "
        "`Authorization: Bearer <token>` of the session, and `X-API-Key` when the server has API keys.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN; app.api.routes.docs serves offline ones instead
        redoc_url=None,
    )
    app.state.settings = settings
    # Resync snapshots run on the model thread every session shares: a per-session budget keeps one client's
    # resync loop from starving the others (app.api.routes.stream).
    app.state.resync_limiter = TokenBuckets(settings.resync_per_s, settings.resync_burst)
    app.include_router(api_router)
    if settings.nninteractive_enabled:
        app.include_router(nninteractive.router)  # /nninteractive/*: nnInteractive's remote protocol
    install_error_handlers(app)
    # Middleware, innermost first: the body limit, the admission gate (a new session refused before its upload is
    # parsed), the rate limit (needs the caller the key check names),
    # the API key check, CORS (so that preflights pass and browsers can read 401/429 replies), metrics.
    app.add_middleware(BodySizeLimit, upload_bytes=settings.max_upload_bytes + _MULTIPART_SLACK_BYTES,
                       other_bytes=settings.max_request_body_bytes)
    # Outside the body limit, so that a refused upload is drained unparsed (app.api.admission_gate).
    app.add_middleware(AdmissionGate, drain_bytes=settings.max_upload_bytes + _MULTIPART_SLACK_BYTES)
    if settings.rate_limit_per_s is not None:
        app.state.rate_limiter = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_capacity)
        app.add_middleware(RateLimit, buckets=app.state.rate_limiter)
    if settings.api_key_hashes:
        app.add_middleware(ApiKeyAuth, check=ApiKeyCheck(settings.api_key_hashes))
        document_api_key(app)
    if settings.nninteractive_enabled:
        app.add_middleware(NnInteractiveGate, check=ApiKeyCheck(settings.api_key_hashes))  # its bearer = our key
    app.add_middleware(MonaiLabelGate, settings=settings)  # MONAI Label routes: 404 when off, else key unless open
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[paths.AUTHORIZATION_HEADER, API_KEY_HEADER, paths.IDEMPOTENCY_KEY_HEADER, "Content-Type"],
            # Content-Disposition: the file name of downloads (MONAI Label results, labels, session images).
            expose_headers=[paths.OBJECT_VERSION_HEADER, paths.RETRY_AFTER_HEADER, "X-Object-Versions",
                            "Content-Disposition"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
