"""Per-caller rate limit on the expensive routes: session creation and the prompt routes.

A token bucket per caller (the API key when keys are configured, else the client address): it holds at
most ``capacity`` requests and refills at ``rate_per_s``; a request finding it empty gets 429
``rate_limited`` with ``Retry-After`` (whole seconds until a request would pass). In-process, like the
sessions themselves: each replica limits what it serves.

Why not a library: slowapi limits with decorators on module-level routes and needs the ``Request`` in each
endpoint's signature, which does not fit the app factory + routers layout; asgi-ratelimit and
asgi-ratelimiter count fixed windows (no burst + steady rate) and the latter needs Python 3.14. The bucket
is a few lines, and as middleware it refuses an upload before its body is read.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.api_keys import CALLER_SCOPE_KEY
from app.api.errors import error_response
from app.api.routes_match import template_regex
from app.errors import RateLimited
from app.schemas import nninteractive, paths

LIMITED_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", paths.SESSIONS),
    ("POST", paths.OBJECT_BOX),
    ("POST", paths.OBJECT_CLICKS),
    ("POST", paths.OBJECT_SCRIBBLE),
    ("POST", paths.OBJECT_LASSO),
    ("POST", paths.OBJECT_UNDO),
    ("POST", paths.OBJECT_RESET),
    ("PUT", paths.OBJECT_MASK),
    ("POST", paths.SESSIONS_FROM_DICOMWEB),
    ("POST", paths.MONAILABEL_INFER),
    ("PUT", paths.MONAILABEL_SESSIONS),
    *(("POST", nninteractive.NNINTERACTIVE_PREFIX + p) for p in (
        nninteractive.PATH_CLAIM, nninteractive.PATH_SET_IMAGE, nninteractive.PATH_ADD_BBOX,
        nninteractive.PATH_ADD_POINT, nninteractive.PATH_ADD_SCRIBBLE, nninteractive.PATH_ADD_LASSO,
        nninteractive.PATH_ADD_INITIAL_SEG, nninteractive.PATH_PREDICT, nninteractive.PATH_UNDO,
        nninteractive.PATH_RESET_INTERACTIONS)),
)
"""(method, route template) pairs the limit applies to; everything else (reads, deletes, streams) is free."""


_LIMITED = tuple((method, template_regex(t)) for method, t in LIMITED_ROUTES)


def is_limited(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in _LIMITED)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per caller id; the least recently seen buckets are dropped past ``max_callers``.

    ``clock``: seconds, monotonic (tests substitute a fake one).
    """

    def __init__(self, rate_per_s: float, capacity: int, *, max_callers: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("rate_per_s: must be > 0 (and capacity >= 1)")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.max_callers = max_callers
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str) -> float:
        """Spend one token of ``caller``'s bucket: 0.0 when allowed, else seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.pop(caller, None) or _Bucket(float(self.capacity), now)
        bucket.tokens = min(float(self.capacity), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        self._buckets[caller] = bucket
        if len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


def caller_id(scope: Scope) -> str:
    """The verified API key (set by ``ApiKeyAuth``), else the client address."""
    caller = scope.get(CALLER_SCOPE_KEY)
    if caller:
        return str(caller)
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")


class RateLimit:
    """429 + Retry-After for a caller over its rate on ``LIMITED_ROUTES``, before the body is read."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_limited(scope["method"], scope["path"]):
            wait_s = self.buckets.take(caller_id(scope))
            if wait_s > 0:
                retry_after = max(1, math.ceil(wait_s))
                error = RateLimited(f"rate: over {self.buckets.rate_per_s:g} requests/s; retry after "
                                    f"{retry_after} s", retry_after_s=retry_after)
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
