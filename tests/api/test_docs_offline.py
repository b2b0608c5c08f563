"""``/docs`` and ``/redoc`` work without internet access: every script, style and image they load comes from
this server, and nothing on the pages names another host."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.config import hash_api_key
from app.main import create_app
from tests.api.conftest import test_settings

BASE = "http://testserver"
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""", re.IGNORECASE)
_ABSOLUTE = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+""")


def _references(html: str) -> list[str]:
    return [a or b for a, b in _REFERENCE.findall(html)]


@pytest.mark.parametrize(("page", "marker"), [("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")])
def test_docs_pages_load_everything_from_this_server(client: TestClient, page: str, marker: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert _ABSOLUTE.findall(html) == [], f"{page} names another host"
    scripts = [u for u in _references(html) if u.endswith(".js")]
    assert scripts, f"{page} loads no script"
    for ref in _references(html):
        url = urljoin(BASE + page, ref)
        assert urlsplit(url).netloc == urlsplit(BASE).netloc, ref
        asset = client.get(url)
        assert asset.status_code == 200, f"{ref}: {asset.status_code}"
        assert len(asset.content) > 1000, ref
    bundle = client.get(urljoin(BASE + page, scripts[0])).text
    assert marker in bundle  # the real Swagger UI / ReDoc build, not a placeholder
    assert client.get("/openapi.json").json()["info"]["title"] in html


def test_swagger_ui_online_validator_is_off(client: TestClient) -> None:
    # Else Swagger UI shows a badge image from validator.swagger.io, sending it this server's address.
    assert re.search(r'"validatorUrl"\s*:\s*null', client.get("/docs").text)


@pytest.mark.parametrize("asset", ["nope.js", "..%2F..%2Fapp%2Fconfig.py", "swagger-ui-bundle.js.map"])
def test_only_the_docs_build_is_served(client: TestClient, asset: str) -> None:
    r = client.get(f"/docs/assets/{asset}")
    assert r.status_code == 404
    assert "SEGSVC_" not in r.text  # not the file the traversal names


def test_docs_need_no_api_key_and_stay_out_of_the_openapi_document(service_predictor) -> None:  # noqa: ANN001
    app = create_app(test_settings(api_key_hashes=[hash_api_key("k" * 32)]), predictor=service_predictor)
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 200
        assert c.get("/docs/assets/swagger-ui.css").status_code == 200
        assert c.get("/redoc").status_code == 200
        assert c.post("/v1/sessions").status_code == 401  # the API itself still wants the key
        paths = c.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
