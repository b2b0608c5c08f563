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
from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimit, RequestMetrics
from app.api.router import api_router
from app.config import Settings
from app.schemas import paths
from app.sessions.metrics import ServiceMetrics
from app.sessions.services import start_services, stop_services

if TYPE_CHECKING:
    from app.models.predictor import Predictor

_MULTIPART_SLACK_BYTES = 64 * 1024  # multipart framing around an upload of max_upload_bytes


def create_app(settings: Settings | None = None, *, predictor: Predictor | None = None) -> FastAPI:
    """Build the ASGI app. ``predictor``: an already built model to serve (else built from ``settings``)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await start_services(settings, predictor=predictor, metrics=metrics)
        app.state.services = services
        try:
            yield
        finally:
            await stop_services(services)

    app = FastAPI(
        title="Interactive 3D segmentation service",
        version=app_package.__version__,
        description="Upload a volume once, then box and click: every prompt answers with what changed, and "
        "the WebSocket stream carries the changed voxels. Every route except health and metrics needs "
        "`Authorization: Bearer <token>` of the session.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(api_router)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[paths.AUTHORIZATION_HEADER, "Content-Type"],
            expose_headers=[paths.OBJECT_VERSION_HEADER, paths.RETRY_AFTER_HEADER, "X-Object-Versions"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + _MULTIPART_SLACK_BYTES)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
