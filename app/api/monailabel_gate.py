"""Who may reach the MONAI Label compatibility routes, decided before a request body is read.

OHIF's MONAI Label panel and 3D Slicer's MONAILabel module send no credentials, and these routes live
outside ``/v1`` (the clients build ``<server>/info/``, ``<server>/infer/...``), so ``ApiKeyAuth`` does not
see them. This middleware does, for the paths of ``MONAILABEL_PREFIXES``:

    monailabel_enabled off                          -> 404 (as if the routes did not exist)
    API keys configured, monailabel_open off        -> X-API-Key required (401 as on /v1): put the same-origin
                                                       proxy (deploy/nginx/monailabel-proxy.conf) in front
    no API keys, or monailabel_open on              -> through (trusted network only)

It sits inside CORS, like ``ApiKeyAuth``, so that browsers get preflights and can read the 401.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.api_keys import CALLER_SCOPE_KEY, ApiKeyCheck
from app.api.errors import error_response
from app.config import Settings
from app.errors import Unauthorized
from app.schemas.errors import error_body
from app.schemas.paths import API_KEY_HEADER, MONAILABEL_PREFIXES


def is_monailabel_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MONAILABEL_PREFIXES)


class MonaiLabelGate:
    """404 while the routes are off; the API key check for them unless ``monailabel_open``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.enabled = settings.monailabel_enabled
        self.check = ApiKeyCheck(settings.api_key_hashes) if not settings.monailabel_open else ApiKeyCheck(())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_monailabel_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not self.enabled:
            reply = JSONResponse(error_body("not_found", "Not Found (MONAI Label compatibility is off: "
                                            "monailabel_enabled)"), status_code=404)
            await reply(scope, receive, send)
            return
        if self.check:
            try:
                digest = self.check.verify((Headers(scope=scope).get(API_KEY_HEADER) or "").strip() or None)
            except Unauthorized as error:
                await error_response(error)(scope, receive, send)
                return
            scope[CALLER_SCOPE_KEY] = "key:" + digest[:16]
        await self.app(scope, receive, send)
