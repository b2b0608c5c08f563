"""Match a request path against a route template such as ``/v1/sessions/{session_id}/objects/{object_id}/box``.

For ASGI middleware, which runs before routing and sees only the raw path.
"""

from __future__ import annotations

import re


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the paths of ``template`` (each ``{name}`` one path segment; a trailing slash optional)."""
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template).rstrip("/")) + "/?$")
