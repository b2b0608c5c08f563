"""The built-in browser viewer: ``GET /`` serves the page, ``GET /viewer/{asset}`` its script and styles.

The page is a static bundle built from ``viewer/`` (niivue + our modules, esbuild) and committed in
``app/static/viewer/``, so the server needs no node at run time (rebuild: ``cd viewer && npm ci && npm run
build``). These routes sit outside ``/v1``, so the API-key middleware lets them through: the page loads
without a key and then sends the key the user types as ``X-API-Key`` on its ``/v1`` calls.
Only the files present in the bundle are served (a fixed name -> file map; no path is ever joined from the
request), and they are left out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from app.schemas.errors import error_body

VIEWER_DIR = Path(__file__).resolve().parents[2] / "static" / "viewer"
VIEWER_PAGE = "/"
VIEWER_ASSETS = "/viewer/{asset}"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
_REBUILD = "cd viewer && npm ci && npm run build"

router = APIRouter(tags=["viewer"], include_in_schema=False)


def _assets() -> dict[str, Path]:
    if not VIEWER_DIR.is_dir():
        return {}
    return {p.name: p for p in VIEWER_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


def _not_found(what: str) -> JSONResponse:
    return JSONResponse(error_body("not_found", f"{what}: not in the viewer bundle ({_REBUILD})", what),
                        status_code=404)


def _serve(path: Path) -> Response:
    # no-cache: the browser revalidates (ETag / Last-Modified from FileResponse), so a rebuilt bundle shows.
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@router.get(VIEWER_PAGE, summary="The browser viewer")
async def viewer_page() -> Response:
    page = _assets().get("index.html")
    return _serve(page) if page is not None else _not_found("index.html")


@router.get(VIEWER_ASSETS, summary="A file of the browser viewer's bundle")
async def viewer_asset(asset: str) -> Response:
    path = _assets().get(asset)
    return _serve(path) if path is not None else _not_found("asset")
