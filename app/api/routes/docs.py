"""The API documentation pages, ``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc), working offline.

FastAPI's own pages load their script and styles from a public CDN, so they stay blank on a hospital network
without internet access, and every page view tells that CDN who reads the docs. Here the same pages (FastAPI's
``get_swagger_ui_html`` / ``get_redoc_html``) point at ``/docs/assets/...``, served by this server from the
Swagger UI and ReDoc builds that the ``fastapi-offline`` package ships (MIT; we use its files, not its app
class). Nothing on the pages names another host, and Swagger UI's online validator (a badge image from
validator.swagger.io) is switched off. Like the viewer, these routes sit outside ``/v1`` (no API
key needed to read the docs; ``/openapi.json`` is public too), only the files of that build are served (a
fixed name -> file map, no path is joined from the request), and they stay out of the OpenAPI document.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from app.schemas.errors import error_body

DOCS_PAGE = "/docs"
REDOC_PAGE = "/redoc"
DOCS_OAUTH2_REDIRECT = DOCS_PAGE + "/oauth2-redirect"
DOCS_ASSETS = DOCS_PAGE + "/assets/{asset}"
ASSETS_PACKAGE = "fastapi_offline"
"""The package whose ``static/`` folder holds the Swagger UI and ReDoc builds."""
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
_ASSET_NAMES = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)

router = APIRouter(tags=["docs"], include_in_schema=False)


def _assets() -> dict[str, Path]:
    """Asset name -> file, for the four files the pages use."""
    folder = Path(str(resources.files(ASSETS_PACKAGE) / "static"))
    return {name: folder / name for name in _ASSET_NAMES if (folder / name).is_file()}


def _asset_url(request: Request, name: str) -> str:
    # root_path: behind a proxy that mounts the service under a prefix, the browser needs the prefix too.
    return request.scope.get("root_path", "") + DOCS_ASSETS.format(asset=name)


def _openapi_url(request: Request) -> str:
    return request.scope.get("root_path", "") + (request.app.openapi_url or "/openapi.json")


@router.get(DOCS_PAGE)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=request.scope.get("root_path", "") + DOCS_OAUTH2_REDIRECT,
        swagger_js_url=_asset_url(request, SWAGGER_JS),
        swagger_css_url=_asset_url(request, SWAGGER_CSS),
        swagger_favicon_url=_asset_url(request, FAVICON),
        # validatorUrl null: Swagger UI would otherwise show a badge loaded from validator.swagger.io, telling
        # that host this server's address.
        swagger_ui_parameters={"validatorUrl": None, **(request.app.swagger_ui_parameters or {})},
    )


@router.get(DOCS_OAUTH2_REDIRECT)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_PAGE)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset_url(request, REDOC_JS),
        redoc_favicon_url=_asset_url(request, FAVICON),
        with_google_fonts=False,  # the fonts would come from fonts.googleapis.com
    )


@router.get(DOCS_ASSETS)
async def docs_asset(asset: str) -> Response:
    path = _assets().get(asset)
    if path is None:
        return JSONResponse(error_body("not_found", f"asset: {asset!r} is not a file of the API docs pages",
                                       "asset"), status_code=404)
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])
