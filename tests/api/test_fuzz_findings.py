"""What the OpenAPI fuzzer (tests/fuzz) found, pinned as plain regression tests."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import create


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/v1/sessions/abc", "DELETE, GET"),
    ("POST", "/v1/sessions/abc/objects/1/mask", "GET, PUT"),
    ("GET", "/v1/sessions", "POST"),
])
def test_405_lists_every_method_of_the_path(client: TestClient, method: str, path: str, allow: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b"\x14\x7f\x0b\xff\t"),
    ("multipart/form-data; boundary=b0", b"--b0\r\n-6731--b0--\r\n"),
])
def test_a_body_that_does_not_parse_is_a_422_naming_body(client: TestClient, content_type: str, body: bytes
                                                          ) -> None:
    sid, headers = create(client)
    path = f"/v1/sessions/{sid}/objects/1/box" if "json" in content_type else f"/v1/sessions/{sid}/objects/1/mask"
    method = "POST" if "json" in content_type else "PUT"
    r = client.request(method, path, content=body, headers={**headers, "Content-Type": content_type})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == "body" and error["message"].startswith("body: ")
    assert client.get(f"/v1/sessions/{sid}", headers=headers).json()["objects"] == []


@pytest.mark.parametrize("world", [0, 1, "true", None])
def test_world_accepts_json_booleans_only(client: TestClient, world: object) -> None:
    sid, headers = create(client)
    r = client.post(f"/v1/sessions/{sid}/objects/1/box", json={"box": [0, 0, 0, 3, 3, 3], "world": world},
                    headers=headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "world", r.text


@pytest.mark.parametrize("body", [{"box": [0.0, 0.0, 0.0, 1e19, 1.0, 1.0], "world": True},
                                  {"points": [[1.0, -1e300, 2.0]], "labels": [1], "world": True}])
def test_world_coordinates_past_int64_are_a_422(client: TestClient, body: dict[str, object]) -> None:
    sid, headers = create(client)
    route = "box" if "box" in body else "clicks"
    r = client.post(f"/v1/sessions/{sid}/objects/1/{route}", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == ("box" if route == "box" else "points")
