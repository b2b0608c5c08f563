"""``GET /`` and ``/viewer/{asset}``: the committed bundle is served, without an API key, and nothing else."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.api.routes.viewer import VIEWER_DIR
from app.config import Settings, hash_api_key
from app.main import create_app

KEY = "viewer-test-key"


def _client(**overrides: object) -> TestClient:
    # No `with`: the lifespan (model, store) is not needed to serve static files.
    settings = Settings(model_config_name="segvol-test", weights=None, allow_random_weights=True, warmup=False,
                        redis_url=None, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def test_the_committed_bundle_is_complete_and_minified() -> None:
    page = (VIEWER_DIR / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="viewer/([^"]+)"', page)
    assert sorted(referenced) == ["viewer.css", "viewer.js"]
    script = (VIEWER_DIR / "viewer.js").read_bytes()
    assert 100_000 < len(script) < 1_500_000  # niivue is in it; the unused Zarr codecs are not
    assert b"describeReply" not in script and b"viewerPage" not in script  # minified: local names mangled
    assert b"https://cdn" not in page.encode() and b"<script src=\"http" not in page.encode()  # no CDN at run time


def test_page_and_assets_are_served_with_their_types() -> None:
    c = _client()
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<canvas id="gl">' in r.text and r.headers["cache-control"] == "no-cache"
    for name, kind in [("viewer.js", "text/javascript"), ("viewer.css", "text/css")]:
        r = c.get(f"/viewer/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.content == (VIEWER_DIR / name).read_bytes()


def test_only_bundle_files_are_served() -> None:
    c = _client()
    for path in ["/viewer/nope.js", "/viewer/..%2F..%2Fconfig.py", "/viewer/%2E%2E%2Fapi%2Frouter.py",
                 "/viewer/index.htm"]:
        r = c.get(path)
        assert r.status_code == 404, path
    assert "npm run build" in c.get("/viewer/nope.js").json()["error"]["message"]
    assert c.get("/viewer/../app/config.py").status_code == 404


def test_the_page_needs_no_api_key_but_the_api_still_does() -> None:
    c = _client(api_key_hashes=[hash_api_key(KEY)])
    assert c.get("/").status_code == 200
    assert c.get("/viewer/viewer.js").status_code == 200
    r = c.post("/v1/sessions", files={"file": ("v.npz", b"x")})
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_required"


def test_viewer_routes_stay_out_of_the_openapi_document() -> None:
    paths = _client().get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/viewer") for p in paths)
