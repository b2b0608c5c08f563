"""The application's routes: one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import (
    dicomweb,
    docs,
    health,
    monailabel,
    monailabel_datastore,
    objects,
    sessions,
    stream,
    viewer,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(sessions.router)
api_router.include_router(objects.router)
api_router.include_router(stream.router)
api_router.include_router(docs.router)  # GET /docs, /redoc and their assets, served here (work offline)
api_router.include_router(viewer.router)  # GET / and /viewer/*: the browser viewer (outside /v1, no API key)
api_router.include_router(dicomweb.router)  # /v1/sessions/dicomweb, /v1/sessions/{sid}/dicomweb/store
api_router.include_router(monailabel.router)  # /info/, /infer/, /session/ (404 unless enabled)
api_router.include_router(monailabel_datastore.router)  # /datastore/, /activelearning/, /train/ (404 unless enabled)
