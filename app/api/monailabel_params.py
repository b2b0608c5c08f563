"""The ``params`` form field of the MONAI Label routes (a JSON object), read once for the inference and the
datastore routes alike."""

from __future__ import annotations

import json
from typing import Any

from app.errors import InvalidInput


def parse_params(params: str) -> dict[str, Any]:
    try:
        value = json.loads(params or "{}")
    except json.JSONDecodeError as e:
        raise InvalidInput(f"params: not JSON ({e.msg} at {e.pos})", field="params") from None
    if not isinstance(value, dict):
        raise InvalidInput("params: expected a JSON object", field="params")
    return value

