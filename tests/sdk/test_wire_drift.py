"""The server's pydantic models and the SDK's wire dataclasses describe the same JSON: a field added, renamed,
retyped or given another default on one side only fails here.

Replies are read from the OpenAPI document the server publishes (what clients are promised); the stream
messages, which OpenAPI does not cover, from the models' own JSON schema. Request bodies the SDK builds are
validated by the server's request models and must come out unchanged.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pydantic
import pytest

from app.config import Settings
from app.main import create_app
from app.schemas import diffs, prompts, regions
from client import _protocol as proto
from client.wire import messages, replies

REPLIES = [replies.SessionCreated, replies.SessionInfo, replies.ObjectInfo, replies.PromptReply,
           replies.StepReply]
MESSAGES = [
    (diffs.StreamHello, messages.StreamHello),
    (diffs.ResyncRequest, messages.ResyncRequest),
    (diffs.PingMessage, messages.PingMessage),
    (diffs.PongMessage, messages.PongMessage),
    (diffs.ObjectRemoved, messages.ObjectRemoved),
    (diffs.StreamError, messages.ErrorMessage),
]


def _from_hint(hint: Any) -> Any:
    """A dataclass field's type in the canonical form ``_from_schema`` gives a JSON schema."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return ("object", _types(_fields_of_dataclass(hint)))
    if origin is typing.Union or origin is types.UnionType:
        return frozenset(_from_hint(a) for a in args)
    if origin is typing.Literal:
        return ("enum", tuple(sorted(args)))
    if origin is tuple:
        return ("tuple", tuple(_from_hint(a) for a in args))
    if origin is list:
        return ("list", _from_hint(args[0]))
    if origin is dict:
        return ("dict", _from_hint(args[1]))
    return {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}[hint]


def _from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return frozenset(_from_schema(s, defs) for s in schema["anyOf"])
    if "const" in schema:
        return ("enum", (schema["const"],))
    if "enum" in schema:
        return ("enum", tuple(sorted(schema["enum"])))
    kind = schema["type"]
    if kind == "object" and "properties" in schema:
        return ("object", _types(_fields_of_schema(schema, defs)))
    if kind == "object":
        return ("dict", _from_schema(schema["additionalProperties"], defs))
    if kind == "array" and "prefixItems" in schema:
        return ("tuple", tuple(_from_schema(s, defs) for s in schema["prefixItems"]))
    if kind == "array":
        return ("list", _from_schema(schema["items"], defs))
    return kind


def _types(fields: dict[str, tuple[Any, bool, Any]]) -> tuple[tuple[str, Any, bool], ...]:
    """A nested object's fields as (name, type, required), hashable (its defaults are compared at its own
    top level)."""
    return tuple(sorted((name, kind, required) for name, (kind, required, _) in fields.items()))


def _plain_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _fields_of_dataclass(cls: Any) -> dict[str, tuple[Any, bool, Any]]:
    """name -> (canonical type, required, default) of a dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = _plain_default(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out[f.name] = (_from_hint(hints[f.name]), default is dataclasses.MISSING, default)
    return out


def _fields_of_schema(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, tuple[Any, bool, Any]]:
    required = set(schema.get("required", []))
    out = {}
    for name, prop in schema["properties"].items():
        # A schema leaves out a default of None or of an empty container; the dataclass must have that one.
        default = prop.get("default", dataclasses.MISSING)
        out[name] = (_from_schema(prop, defs), name in required, default)
    return out


def _same(schema_fields: dict[str, Any], dataclass_fields: dict[str, Any]) -> None:
    assert set(schema_fields) == set(dataclass_fields)
    for name, (kind, required, default) in schema_fields.items():
        sdk_kind, sdk_required, sdk_default = dataclass_fields[name]
        assert (name, kind, required) == (name, sdk_kind, sdk_required)
        if default is not dataclasses.MISSING:
            assert (name, default) == (name, sdk_default)
        elif not required:
            assert (name, sdk_default) in ((name, None), (name, []), (name, {}))


@pytest.fixture(scope="module")
def openapi_schemas() -> dict[str, Any]:
    settings = Settings(model_config_name="segvol-test", weights=None, allow_random_weights=True, warmup=False,
                        redis_url=None)
    return create_app(settings).openapi()["components"]["schemas"]  # routing only: no lifespan, no model


@pytest.mark.parametrize("cls", REPLIES, ids=lambda c: c.__name__)
def test_each_reply_dataclass_matches_the_published_schema(openapi_schemas: dict[str, Any], cls: type) -> None:
    _same(_fields_of_schema(openapi_schemas[cls.__name__], openapi_schemas), _fields_of_dataclass(cls))


@pytest.mark.parametrize(("model", "cls"), MESSAGES, ids=lambda c: c.__name__)
def test_each_stream_message_dataclass_matches_the_servers_model(model: type[pydantic.BaseModel], cls: type) -> None:
    schema = model.model_json_schema(mode="serialization")
    _same(_fields_of_schema(schema, schema.get("$defs", {})), _fields_of_dataclass(cls))


def test_the_drift_check_sees_a_field_the_sdk_lacks(openapi_schemas: dict[str, Any]) -> None:
    @dataclasses.dataclass(frozen=True)
    class ObjectInfo:  # the SDK's, with n_prompts forgotten
        object_id: int
        version: int
        voxels: int | None = None
        bbox: replies.Box6 | None = None

    with pytest.raises(AssertionError):
        _same(_fields_of_schema(openapi_schemas["ObjectInfo"], openapi_schemas), _fields_of_dataclass(ObjectInfo))


@pytest.mark.parametrize(
    ("model", "request_"),
    [
        (prompts.BoxRequest, proto.box("s", "t", 1, [1, 2, 3, 4, 5, 6], world=False)),
        (prompts.BoxRequest, proto.box("s", "t", 1, [1.5, 2, 3, 4, 5, 6.5], world=True)),
        (prompts.ClicksRequest, proto.clicks("s", "t", 1, [[1, 2, 3], [4, 5, 6]], [1, 0], "gru", world=False)),
        (prompts.ClicksRequest, proto.clicks("s", "t", 1, [[1.5, 2, 3]], [1], "both", world=True)),
        (prompts.TextRequest, proto.text("s", "t", 1, " liver ", [1, 2, 3, 4, 5, 6], [[2, 3, 4]], [1])),
        (prompts.TextRequest, proto.text("s", "t", 1, "spleen", None, None, None)),
        (regions.ScribbleRequest, proto.scribble("s", "t", 1, [[1, 2, 3], [1, 2, 4]], 0, "decoder")),
        (regions.LassoRequest, proto.lasso("s", "t", 1, 0, 3, [[1, 1], [1, 5.5], [5, 5]], 1, "both")),
    ],
)
def test_the_sdks_request_bodies_are_what_the_server_reads(model: type[pydantic.BaseModel],
                                                            request_: proto.Request) -> None:
    assert request_.json is not None
    assert model.model_validate(request_.json).model_dump() == request_.json
