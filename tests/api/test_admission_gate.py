"""A new session refused for capacity is answered before its upload is parsed (app.api.admission_gate)."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.api.admission_gate import AdmissionGate
from app.errors import CapacityExceeded
from app.main import create_app
from tests.api.conftest import create, test_settings

_NOT_MULTIPART = {"content-type": "multipart/form-data; boundary=never-seen"}


def test_a_full_server_refuses_a_new_session_without_parsing_its_upload(service_predictor) -> None:  # noqa: ANN001
    app = create_app(test_settings(max_sessions=1, retry_after_s=7), predictor=service_predictor)
    with TestClient(app) as client:
        create(client)
        # Not a parsable multipart body: parsing it would be a 422; refused first, it is never parsed.
        r = client.post("/v1/sessions", content=b"x" * 300_000, headers=_NOT_MULTIPART)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "server_busy"
        assert "1 sessions are open" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "7"
        metrics = client.get("/metrics").text
        assert 'capacity_rejections_total{limit="sessions"} 1.0' in metrics
        # Counted under its route, as a refusal the route itself answered would be.
        assert 'route="/v1/sessions",status="503"' in metrics


def test_an_admitted_upload_reaches_the_route_unchanged(service_predictor) -> None:  # noqa: ANN001
    app = create_app(test_settings(max_sessions=2), predictor=service_predictor)
    with TestClient(app) as client:
        r = client.post("/v1/sessions", content=b"x" * 1000, headers=_NOT_MULTIPART)
        assert r.status_code == 422, r.text  # the route parsed it
        create(client)


class _Registry:
    def check_room_for_session(self) -> None:
        raise CapacityExceeded("capacity: full; retry later", retry_after_s=3)


class _State:
    services = type("S", (), {"manager": _Registry()})()


def _run_gate(chunks: list[bytes], drain_bytes: int) -> tuple[list[Message], int, bool]:
    """Send ``chunks`` as a POST /v1/sessions body through the gate over an app that must not be called."""
    pending = list(chunks)
    inner_called = False

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal inner_called
        inner_called = True

    async def receive() -> Message:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = type("App", (), {"state": _State()})()
    scope = {"type": "http", "method": "POST", "path": "/v1/sessions", "headers": [], "app": app}
    asyncio.run(AdmissionGate(inner, drain_bytes=drain_bytes)(scope, receive, send))
    return sent, len(pending), inner_called


def test_a_refused_body_is_read_to_its_end_so_the_connection_stays_usable() -> None:
    sent, left, inner_called = _run_gate([b"a" * 100] * 5, drain_bytes=1000)
    assert not inner_called and left == 0
    assert sent[0]["status"] == 503
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"3" and b"connection" not in headers


def test_a_refused_body_past_the_drain_limit_closes_the_connection() -> None:
    sent, left, inner_called = _run_gate([b"a" * 100] * 5, drain_bytes=250)
    assert not inner_called and left == 2  # stopped reading once past the limit
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 503 and headers[b"connection"] == b"close"
