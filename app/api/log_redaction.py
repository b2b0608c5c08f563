"""Keep credentials passed in URLs out of the logs.

Browsers cannot set headers on a WebSocket, so the stream accepts its session token and the API key in the
query string (``?token=``, ``?api_key=``). uvicorn logs every WebSocket handshake with its full path and
query through its *error* logger (``'%s - "WebSocket %s" [accepted]'``), and HTTP requests through its
access logger: turning the access log off is not enough. ``RedactQuerySecrets`` is a logging filter on every
handler the server logs through; it rewrites the values of those query parameters in the message and in
its arguments (the access formatter reads the arguments one by one) to ``[redacted]``.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from app.schemas import paths

SECRET_QUERY_PARAMS: tuple[str, ...] = (paths.STREAM_TOKEN_QUERY, paths.API_KEY_QUERY)
REDACTED = "[redacted]"
_SECRET_VALUE = re.compile(
    r"(?P<name>(?:[?&;]|^)(?:" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS) + r")=)[^&;\s\"']*",
    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced by ``[redacted]``."""
    return _SECRET_VALUE.sub(lambda m: m.group("name") + REDACTED, text)


class RedactQuerySecrets(logging.Filter):
    """A logging filter that redacts secret query parameters; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def uvicorn_log_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's ``LOGGING_CONFIG`` (``base``) with ``RedactQuerySecrets`` on each of its handlers."""
    config = copy.deepcopy(base)
    config.setdefault("filters", {})["redact_query_secrets"] = {"()": RedactQuerySecrets}
    for handler in config.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "redact_query_secrets"]
    return config


def install_on_root() -> None:
    """Add the filter to the root logger's handlers (the application's own loggers write there)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactQuerySecrets) for f in handler.filters):
            handler.addFilter(RedactQuerySecrets())
