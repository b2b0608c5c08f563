"""Query-string secrets in log records, and the proxy trust ``python -m app`` hands to uvicorn."""

from __future__ import annotations

import logging

from app.__main__ import uvicorn_options
from app.api.log_redaction import RedactQuerySecrets, redact
from app.config import Settings


def test_redact_hides_token_and_api_key_values_only() -> None:
    line = '127.0.0.1:5 - "WebSocket /v1/sessions/s1/stream?token=abc.DEF-1&format=npz&API_KEY=k%20y" [accepted]'
    assert redact(line) == ('127.0.0.1:5 - "WebSocket /v1/sessions/s1/stream?token=[redacted]&format=npz'
                            '&API_KEY=[redacted]" [accepted]')
    assert redact("/v1/sessions?mytoken=1&tokens=2") == "/v1/sessions?mytoken=1&tokens=2"


def test_filter_rewrites_message_and_arguments_and_keeps_the_record() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/x?token=secret", "1.1", 200), None)
    assert RedactQuerySecrets().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /x?token=[redacted] HTTP/1.1" 200'


def test_uvicorn_trusts_no_proxy_by_default_and_only_the_configured_ones() -> None:
    default = uvicorn_options(Settings(weights=None, allow_random_weights=True))
    assert default["proxy_headers"] is False  # uvicorn's own default would trust 127.0.0.1
    behind = uvicorn_options(Settings(weights=None, allow_random_weights=True, forwarded_allow_ips=["10.1.0.0/16"]))
    assert behind["proxy_headers"] is True and behind["forwarded_allow_ips"] == ["10.1.0.0/16"]
    handlers = default["log_config"]["handlers"]
    assert all("redact_query_secrets" in h["filters"] for h in handlers.values())
