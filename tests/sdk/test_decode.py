"""Reading JSON into the SDK's reply and message dataclasses: what is accepted, what is refused and how the
refusal names the place."""

from __future__ import annotations

import dataclasses

import pytest

from client.wire.decode import from_json
from client.wire.messages import ErrorMessage, StreamHello, parse_server_message
from client.wire.replies import PromptReply, SessionInfo

INFO = {
    "shape": [4, 5, 6], "spacing": [2.5, 1, 1], "session_id": "s1", "config": "compact", "created_at": 1.5,
    "last_used_at": 2, "expires_in_s": 600, "objects": [{"object_id": 1, "version": 3, "bbox": [0, 0, 0, 1, 1, 1]}],
    "added_by_a_newer_server": {"anything": True},
}


def test_a_reply_is_read_with_its_types_and_defaults_and_unknown_keys_ignored() -> None:
    info = from_json(SessionInfo, INFO)
    assert info.shape == (4, 5, 6) and info.spacing == (2.5, 1.0, 1.0) and isinstance(info.last_used_at, float)
    assert info.objects[0].bbox == (0, 0, 0, 1, 1, 1) and info.objects[0].voxels is None
    assert info.origin == (0.0, 0.0, 0.0) and info.modality is None and info.exclusive_objects is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.session_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"shape": [4, 5]}, "reply.shape"),
        ({"created_at": "yesterday"}, "reply.created_at"),
        ({"exclusive_objects": 1}, "reply.exclusive_objects"),
        ({"objects": [{"object_id": True, "version": 3}]}, "reply.objects[0].object_id"),
        ({"objects": [{"object_id": 1}]}, "reply.objects[0].version: missing"),
    ],
)
def test_a_reply_of_the_wrong_shape_is_refused_naming_the_place(change: dict[str, object], where: str) -> None:
    with pytest.raises(ValueError, match=r"^" + where.replace("[", r"\[").replace("]", r"\]")):
        from_json(SessionInfo, {**INFO, **change})


def test_a_step_name_outside_the_vocabulary_is_refused() -> None:
    reply = {"object_id": 1, "version": 2, "changed": 5, "steps": [{"step": "gru", "version": 2, "changed": 5}]}
    assert from_json(PromptReply, reply).steps[0].step == "gru"
    reply["steps"] = [{"step": "magic", "version": 2, "changed": 5}]
    with pytest.raises(ValueError, match="steps"):
        from_json(PromptReply, reply)


def test_stream_messages_are_told_apart_by_type_and_object_keys_become_ints() -> None:
    hello = parse_server_message('{"type": "hello", "session_id": "s", "shape": [1, 2, 3], "frame_version": 1,'
                                 ' "objects": {"2": 7}}')
    assert isinstance(hello, StreamHello) and hello.objects == {2: 7}
    error = parse_server_message('{"type": "error", "error": {"code": "validation_error", "message": "x: bad"}}')
    assert isinstance(error, ErrorMessage) and error.error.field is None
    for text in ("not json", '{"type": "gossip"}', '{"type": "hello", "session_id": "s"}', "[1]"):
        with pytest.raises(ValueError, match="stream: unreadable message of type"):
            parse_server_message(text)
