"""One behavioural suite for every MetadataStore implementation (in-process and real Redis)."""

from __future__ import annotations

import time

import pytest

from app.errors import SessionRecordLost
from app.sessions.store import MetadataStore, PromptRecord, SessionRecord

pytestmark = pytest.mark.anyio

NOW = float(int(time.time()))  # Redis keys expire relative to created_at: keep it real


def _record(sid: str = "s1", *, created_at: float = NOW) -> SessionRecord:
    return SessionRecord(
        session_id=sid,
        token_hash="ab" * 32,
        shape=(24, 64, 64),
        spacing=(2.5, 0.8, 0.8),
        origin=(-10.0, 5.5, 100.25),
        direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
        modality="CT",
        config="segvol-test",
        created_at=created_at,
        last_used_at=created_at,
        source_format="nifti",
    )


async def test_create_get_roundtrip_keeps_every_field(store: MetadataStore) -> None:
    record = _record()
    await store.create_session(record)
    assert await store.get_session("s1") == record
    assert await store.session_ids() == ["s1"]
    assert await store.get_session("unknown") is None


async def test_touch_updates_last_used_only(store: MetadataStore) -> None:
    await store.create_session(_record())
    await store.touch_session("s1", 1234.5)
    got = await store.get_session("s1")
    assert got is not None and got.last_used_at == 1234.5 and got.created_at == NOW
    await store.touch_session("missing", 1.0)  # a no-op, never a half record
    assert await store.get_session("missing") is None


async def test_prompt_history_is_append_only_and_ordered(store: MetadataStore) -> None:
    await store.create_session(_record())
    prompts = [
        PromptRecord(op="box", object_id=1, args={"box": [1, 2, 3, 10, 20, 30]}, version=1, at=1001.0),
        PromptRecord(op="clicks", object_id=1, args={"points": [[4, 5, 6]], "labels": [1], "mode": "both"},
                     version=3, at=1002.0),
        PromptRecord(op="box", object_id=2, args={"box": [0, 0, 0, 3, 3, 3]}, version=1, at=1003.0),
        PromptRecord(op="undo", object_id=1, args={}, version=4, at=1004.0),
    ]
    for p in prompts:
        await store.commit_prompt("s1", p)
    assert await store.prompt_history("s1") == prompts
    assert await store.prompt_history("s1", object_id=2) == [prompts[2]]
    assert await store.object_versions("s1") == {1: 4, 2: 1}
    got = await store.get_session("s1")
    assert got is not None and got.last_used_at == 1004.0


async def test_a_prompts_idempotency_key_and_reply_are_kept(store: MetadataStore) -> None:
    await store.create_session(_record())
    reply = {"object_id": 1, "version": 1, "changed": 7, "bbox": [1, 2, 3, 4, 5, 6],
             "steps": [{"step": "box", "version": 1, "changed": 7, "bbox": [1, 2, 3, 4, 5, 6],
                        "timings_ms": {"encode": 1.5}}], "timings_ms": {"box.encode": 1.5, "total": 2.0}}
    keyed = PromptRecord(op="box", object_id=1, args={"box": [1, 2, 3, 4, 5, 6]}, version=1, at=1001.0,
                         key="4f1c-retry", reply=reply)
    await store.commit_prompt("s1", keyed)
    assert await store.prompt_history("s1") == [keyed]


def test_a_prompt_record_written_before_keys_existed_still_reads() -> None:
    old = '{"op":"undo","object_id":2,"args":{},"version":5,"at":12.0}'
    assert PromptRecord.from_json(old) == PromptRecord(op="undo", object_id=2, version=5, at=12.0)


async def test_commit_on_unknown_session_fails_and_creates_nothing(store: MetadataStore) -> None:
    with pytest.raises(SessionRecordLost, match="no longer in the session store"):
        await store.commit_prompt("ghost", PromptRecord(op="box", object_id=1, version=1, at=1.0))
    assert await store.get_session("ghost") is None
    assert await store.prompt_history("ghost") == []
    assert await store.object_versions("ghost") == {}


async def test_delete_forgets_everything_and_reports_existence(store: MetadataStore) -> None:
    await store.create_session(_record("a"))
    await store.create_session(_record("b"))
    await store.commit_prompt("a", PromptRecord(op="box", object_id=1, version=1, at=2.0))
    assert await store.delete_session("a") is True
    assert await store.delete_session("a") is False
    assert await store.get_session("a") is None
    assert await store.prompt_history("a") == []
    assert await store.object_versions("a") == {}
    assert await store.session_ids() == ["b"]


async def test_sessions_do_not_share_history(store: MetadataStore) -> None:
    await store.create_session(_record("a"))
    await store.create_session(_record("b"))
    await store.commit_prompt("a", PromptRecord(op="box", object_id=1, version=1, at=2.0))
    assert await store.prompt_history("b") == []
    assert await store.object_versions("b") == {}


async def test_ping_and_connect(store: MetadataStore) -> None:
    await store.connect()
    assert await store.ping() is True
