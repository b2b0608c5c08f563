"""The application's routes: one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import health, objects, sessions, stream

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(sessions.router)
api_router.include_router(objects.router)
api_router.include_router(stream.router)
