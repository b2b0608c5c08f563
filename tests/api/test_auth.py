"""Server API keys, per-caller rate limits and CORS, in-process (real app, real model, in-process store)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.__main__ import hash_key_command, parse_args, settings_overrides
from app.config import Settings, hash_api_key
from app.main import create_app
from tests.api.conftest import create, npz_bytes, test_settings, volume

KEY = "correct horse battery staple"
OTHER_KEY = "another client's key"
BOX = {"box": [6, 20, 20, 17, 43, 43]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyed(service_predictor) -> Iterator[TestClient]:  # noqa: ANN001
    settings = test_settings(api_key_hashes=[hash_api_key(KEY), hash_api_key(OTHER_KEY)])
    with TestClient(create_app(settings, predictor=service_predictor)) as c:
        yield c


def _upload(client: TestClient, headers: dict[str, str]):  # noqa: ANN202
    return client.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.ones(3)))},
                       data={"spacing_order": "zyx"}, headers=headers)


def _keyed_session(client: TestClient, key: str = KEY) -> tuple[str, dict[str, str]]:
    r = _upload(client, {"X-API-Key": key})
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"X-API-Key": key, "Authorization": f"Bearer {r.json()['token']}"}


def test_missing_or_wrong_key_is_401_before_the_upload(keyed: TestClient) -> None:
    r = _upload(keyed, {})
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_required"
    assert r.json()["error"]["field"] == "x-api-key" and "X-API-Key" in r.headers["WWW-Authenticate"]
    r = _upload(keyed, {"X-API-Key": "guess"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert keyed.get("/readyz").json()["sessions"] == 0


def test_key_and_token_are_both_needed(keyed: TestClient) -> None:
    sid, auth = _keyed_session(keyed)
    assert keyed.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth).status_code == 200
    token_only = {"Authorization": auth["Authorization"]}
    r = keyed.get(f"/v1/sessions/{sid}", headers=token_only)
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_required"
    r = keyed.get(f"/v1/sessions/{sid}", headers={**token_only, "X-API-Key": KEY + "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = keyed.get(f"/v1/sessions/{sid}", headers={"X-API-Key": KEY})  # key without the session's token
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # Any configured key works with the session's token: keys admit clients, tokens own sessions.
    assert keyed.get(f"/v1/sessions/{sid}", headers={**auth, "X-API-Key": OTHER_KEY}).status_code == 200


def test_another_sessions_token_is_404(keyed: TestClient) -> None:
    sid_a, auth_a = _keyed_session(keyed)
    sid_b, auth_b = _keyed_session(keyed, OTHER_KEY)
    for sid, auth in ((sid_a, auth_b), (sid_b, auth_a)):
        r = keyed.get(f"/v1/sessions/{sid}", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        r = keyed.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth)
        assert r.status_code == 404
    assert keyed.get(f"/v1/sessions/{sid_a}", headers=auth_a).json()["objects"] == []  # untouched


def test_another_sessions_token_is_404_without_keys(client: TestClient) -> None:
    sid_a, auth_a = create(client)
    sid_b, auth_b = create(client)
    r = client.get(f"/v1/sessions/{sid_a}/objects/1/mask", headers=auth_b)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert client.delete(f"/v1/sessions/{sid_b}", headers=auth_a).status_code == 404
    assert client.get(f"/v1/sessions/{sid_b}", headers=auth_b).status_code == 200


def test_health_metrics_and_docs_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/metrics").status_code == 200
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"ApiKey": []} in spec["paths"]["/v1/sessions"]["post"]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_stream_needs_the_key_as_header_or_query(keyed: TestClient) -> None:
    sid, auth = _keyed_session(keyed)
    token = auth["Authorization"][len("Bearer "):]
    url = f"/v1/sessions/{sid}/stream?token={token}"
    for suffix, headers in (("", {}), ("&api_key=wrong", {}), ("", {"X-API-Key": "wrong"})):
        with keyed.websocket_connect(url + suffix, headers=headers) as ws:
            message = ws.receive()
            assert message["type"] == "websocket.close" and message["code"] == 4401
    with keyed.websocket_connect(url + f"&api_key={KEY.replace(' ', '%20')}") as ws:
        assert ws.receive_json()["type"] == "hello"
    with keyed.websocket_connect(url, headers={"X-API-Key": OTHER_KEY}) as ws:
        assert ws.receive_json()["type"] == "hello"


def test_without_keys_nothing_changes(client: TestClient) -> None:
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]
    sid, auth = create(client)  # no X-API-Key anywhere
    assert client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth).status_code == 200
    assert client.get(f"/v1/sessions/{sid}", headers={**auth, "X-API-Key": "ignored"}).status_code == 200
    with client.websocket_connect(f"/v1/sessions/{sid}/stream", headers=auth) as ws:
        assert ws.receive_json()["type"] == "hello"


def test_rate_limit_is_429_with_retry_after_then_recovers(service_predictor) -> None:  # noqa: ANN001
    settings = test_settings(api_key_hashes=[hash_api_key(KEY), hash_api_key(OTHER_KEY)],
                             rate_limit_per_s=0.25, rate_limit_burst=2)
    with TestClient(create_app(settings, predictor=service_predictor)) as c:
        clock = FakeClock()
        c.app.state.rate_limiter.clock = clock  # type: ignore[attr-defined]
        sid, auth = _keyed_session(c)  # spends 1 of the 2 tokens
        undo = f"/v1/sessions/{sid}/objects/1/undo"
        assert c.post(undo, headers=auth).status_code == 404  # passes the limit (no such object), spends 1
        r = c.post(undo, headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.headers["Retry-After"] == "4"  # one token at 0.25/s
        assert _upload(c, {"X-API-Key": KEY}).status_code == 429  # creation shares the caller's bucket
        # Reads are not limited, nor is another key.
        assert c.get(f"/v1/sessions/{sid}", headers=auth).status_code == 200
        assert _upload(c, {"X-API-Key": OTHER_KEY}).status_code == 201
        clock.now += 3.0
        assert c.post(undo, headers=auth).headers["Retry-After"] == "1"
        clock.now += 1.0
        assert c.post(undo, headers=auth).status_code == 404  # through the limit again
        # Refused callers without a valid key do not spend the key's tokens (the key check comes first).
        clock.now += 8.0
        for _ in range(5):
            assert c.post(undo, headers={"Authorization": auth["Authorization"]}).status_code == 401
        assert c.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth).status_code == 200


def test_rate_limit_without_keys_is_per_client_address(service_predictor) -> None:  # noqa: ANN001
    settings = test_settings(rate_limit_per_s=0.5, rate_limit_burst=1)
    with TestClient(create_app(settings, predictor=service_predictor)) as c:
        c.app.state.rate_limiter.clock = FakeClock()  # type: ignore[attr-defined]
        r = c.post("/v1/sessions", files={"file": ("v.npz", b"not an npz")})
        assert r.status_code == 422  # spent the one token
        r = c.post("/v1/sessions", files={"file": ("v.npz", b"not an npz")})
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"


def test_cors_preflight_and_error_replies_carry_the_headers(service_predictor) -> None:  # noqa: ANN001
    settings = test_settings(api_key_hashes=[hash_api_key(KEY)], cors_origins=["http://viewer.local"])
    with TestClient(create_app(settings, predictor=service_predictor)) as c:
        r = c.options("/v1/sessions", headers={"Origin": "http://viewer.local",
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "x-api-key,authorization"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://viewer.local"
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "x-api-key" in allowed and "authorization" in allowed
        r = c.get("/v1/sessions/x", headers={"Origin": "http://viewer.local"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://viewer.local"
        r = c.get("/v1/sessions/x", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_key_settings_flags_and_hash_command(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hash_api_key(KEY)
    assert hash_key_command(KEY + "\n") == digest and len(digest) == 64
    with pytest.raises(SystemExit):
        hash_key_command("\n")
    monkeypatch.setenv("SEGSVC_API_KEY_HASHES", f"{digest}, {hash_api_key(OTHER_KEY).upper()}")
    assert Settings().api_key_hashes == [digest, hash_api_key(OTHER_KEY)]
    monkeypatch.setenv("SEGSVC_API_KEY_HASHES", f'["{digest}"]')
    assert Settings().api_key_hashes == [digest]
    monkeypatch.setenv("SEGSVC_API_KEY_HASHES", KEY)  # a key instead of its hash is refused
    with pytest.raises(ValueError, match="api_key_hashes"):
        Settings()
    monkeypatch.delenv("SEGSVC_API_KEY_HASHES")
    args = parse_args(["--api-key-hash", digest, "--api-key-hash", hash_api_key(OTHER_KEY), "--rate-limit", "2"])
    s = Settings(**settings_overrides(args))
    assert s.api_key_hashes == [digest, hash_api_key(OTHER_KEY)] and s.rate_limit_per_s == 2.0
    assert s.rate_limit_capacity == 2 and Settings().api_key_hashes == [] and Settings().rate_limit_per_s is None


def test_hash_key_subcommand_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from app.__main__ import main

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    main(["hash-key"])
    assert capsys.readouterr().out.strip() == hash_api_key(KEY)

