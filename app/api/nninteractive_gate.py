"""Who may reach nnInteractive's protocol (``/nninteractive/*``), decided before a request body is read.

``nninteractive-client`` sends the key it is given as ``Authorization: Bearer <key>`` (``api_key=`` or
``NN_INTERACTIVE_API_KEY``). With API keys configured (``Settings.api_key_hashes``) that key must be one of
them, checked exactly as ``X-API-Key`` is on ``/v1`` (401 otherwise); without keys the routes are open, as
``/v1`` is. ``/nninteractive/healthz`` stays open like ``/healthz``. Installed only with ``--nninteractive``.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.api_keys import CALLER_SCOPE_KEY, ApiKeyCheck
from app.api.deps import bearer_token
from app.api.errors import error_response
from app.errors import Unauthorized
from app.schemas.nninteractive import NNINTERACTIVE_PREFIX, PATH_HEALTHZ


def is_nninteractive_path(path: str) -> bool:
    return path == NNINTERACTIVE_PREFIX or path.startswith(NNINTERACTIVE_PREFIX + "/")


class NnInteractiveGate:
    """The bearer check of the nnInteractive routes when the server has API keys."""

    def __init__(self, app: ASGIApp, check: ApiKeyCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not self.check or not is_nninteractive_path(path)
                or path == NNINTERACTIVE_PREFIX + PATH_HEALTHZ):
            await self.app(scope, receive, send)
            return
        key = bearer_token(Headers(scope=scope).get("authorization"))
        try:
            if key is None:
                raise Unauthorized("authorization: this server requires an API key (Authorization: Bearer <key>)",
                                   field="authorization")
            digest = self.check.verify(key)
        except Unauthorized as error:
            if error.field != "authorization":  # verify() names X-API-Key; this protocol carries it as a bearer
                error = Unauthorized("authorization: invalid API key", field="authorization")
            await error_response(error)(scope, receive, send)
            return
        scope[CALLER_SCOPE_KEY] = "key:" + digest[:16]
        await self.app(scope, receive, send)
