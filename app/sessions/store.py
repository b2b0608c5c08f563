"""Session metadata: who owns which session, its geometry, object versions and the prompt history.

Tensors never go here (they stay on the device, in the process that owns the session); the store keeps
what a human or another service needs to know about a session, and the append-only log of every
acknowledged prompt, from which a session can be rebuilt by deterministic replay.

Two implementations of one ``MetadataStore`` protocol:

* ``InProcessStore``: dictionaries in this process (the default; nothing to run).
* ``RedisStore``: ``redis.asyncio``; chosen when ``REDIS_URL`` is set. Key layout (``{p}`` = the prefix)::

      {p}sessions                    set of session ids
      {p}session:{sid}               hash: record (JSON of SessionRecord), last_used_at
      {p}session:{sid}:versions      hash: object id -> version
      {p}session:{sid}:prompts       list: JSON PromptRecord, oldest first

  Every key of a session expires at ``created_at + ttl_s`` so that records of a crashed process vanish.

Both store the same JSON, so both behave the same (one test suite runs against both).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from app.errors import StoreUnavailable


@dataclass(frozen=True)
class SessionRecord:
    """What the store knows about one session.

    Attributes:
        session_id: opaque URL-safe id.
        token_hash: hex sha256 of the session's bearer token (the token itself is never stored).
        shape: (D, H, W) of the volume.
        spacing: (sz, sy, sx) in mm.
        origin: LPS (x, y, z) of voxel [0, 0, 0], as SimpleITK reports it.
        direction: 9 direction cosines, row-major, as SimpleITK reports them.
        modality: given at upload, or None.
        config: the model configuration serving the session.
        created_at / last_used_at: Unix times in seconds (display only; expiry uses a monotonic clock).
        source_format: the format the upload was read as.
    """

    session_id: str
    token_hash: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    modality: str | None
    config: str
    created_at: float
    last_used_at: float
    source_format: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        d = json.loads(text)
        return cls(
            session_id=d["session_id"],
            token_hash=d["token_hash"],
            shape=tuple(int(v) for v in d["shape"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in d["spacing"]),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in d["origin"]),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in d["direction"]),
            modality=d.get("modality"),
            config=d["config"],
            created_at=float(d["created_at"]),
            last_used_at=float(d["last_used_at"]),
            source_format=d.get("source_format"),
        )


@dataclass(frozen=True)
class PromptRecord:
    """One acknowledged prompt, as appended to a session's history.

    Attributes:
        op: "box" | "clicks" | "undo" | "reset" | "mask".
        object_id: the object it changed.
        args: the prompt's JSON arguments (box, points/labels/mode, mask digest, ...).
        version: the object's version after the prompt.
        at: Unix time in seconds.
    """

    op: str
    object_id: int
    args: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PromptRecord:
        d = json.loads(text)
        return cls(op=d["op"], object_id=int(d["object_id"]), args=d["args"], version=int(d["version"]),
                   at=float(d["at"]))


@runtime_checkable
class MetadataStore(Protocol):
    """Async metadata store. Methods on an unknown session are no-ops / return empty (never raise)."""

    async def connect(self) -> None:
        """Open connections; raise ``StoreUnavailable`` when the backend cannot be reached."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the backend answers (readiness)."""

    async def create_session(self, record: SessionRecord) -> None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def touch_session(self, session_id: str, last_used_at: float) -> None: ...

    async def delete_session(self, session_id: str) -> bool:
        """Forget the session, its versions and its history; True when it existed."""

    async def session_ids(self) -> list[str]: ...

    async def commit_prompt(self, session_id: str, prompt: PromptRecord) -> None:
        """Atomically: append ``prompt`` to the history, set the object's version, set last_used_at."""

    async def object_versions(self, session_id: str) -> dict[int, int]: ...

    async def prompt_history(self, session_id: str, object_id: int | None = None) -> list[PromptRecord]:
        """The acknowledged prompts, oldest first (of one object when ``object_id`` is given)."""


class InProcessStore:
    """The metadata store as dictionaries of JSON strings in this process (same encoding as Redis)."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._last_used: dict[str, float] = {}
        self._versions: dict[str, dict[int, int]] = {}
        self._prompts: dict[str, list[str]] = {}

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def create_session(self, record: SessionRecord) -> None:
        sid = record.session_id
        self._records[sid] = record.to_json()
        self._last_used[sid] = record.last_used_at
        self._versions[sid] = {}
        self._prompts[sid] = []

    async def get_session(self, session_id: str) -> SessionRecord | None:
        text = self._records.get(session_id)
        if text is None:
            return None
        return replace(SessionRecord.from_json(text), last_used_at=self._last_used[session_id])

    async def touch_session(self, session_id: str, last_used_at: float) -> None:
        if session_id in self._records:
            self._last_used[session_id] = last_used_at

    async def delete_session(self, session_id: str) -> bool:
        existed = self._records.pop(session_id, None) is not None
        self._last_used.pop(session_id, None)
        self._versions.pop(session_id, None)
        self._prompts.pop(session_id, None)
        return existed

    async def session_ids(self) -> list[str]:
        return list(self._records)

    async def commit_prompt(self, session_id: str, prompt: PromptRecord) -> None:
        if session_id not in self._records:
            return
        self._prompts[session_id].append(prompt.to_json())
        self._versions[session_id][prompt.object_id] = prompt.version
        self._last_used[session_id] = prompt.at

    async def object_versions(self, session_id: str) -> dict[int, int]:
        return dict(self._versions.get(session_id, {}))

    async def prompt_history(self, session_id: str, object_id: int | None = None) -> list[PromptRecord]:
        prompts = [PromptRecord.from_json(t) for t in self._prompts.get(session_id, [])]
        return [p for p in prompts if object_id is None or p.object_id == object_id]


def _store_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Report any Redis or socket failure as ``StoreUnavailable``."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await fn(*args, **kwargs)
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"store: Redis failed: {e}") from e

    return wrapper


class RedisStore:
    """The metadata store in Redis (``redis.asyncio``); see the module docstring for the key layout.

    Args:
        url: ``redis://host:port/db``.
        prefix: prepended to every key, so several deployments (or tests) can share one database.
        ttl_s: every key of a session expires this long after the session was created (None = never).
    """

    def __init__(self, url: str, *, prefix: str = "segsvc:", ttl_s: float | None = None) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._ttl_s = ttl_s
        self.url = url

    def _k_sessions(self) -> str:
        return f"{self._prefix}sessions"

    def _k_session(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}"

    def _k_versions(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}:versions"

    def _k_prompts(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}:prompts"

    def _expire_at(self, created_at: float) -> int | None:
        return None if self._ttl_s is None else math.ceil(created_at + self._ttl_s)

    async def connect(self) -> None:
        if not await self.ping():
            raise StoreUnavailable(f"store: cannot reach Redis at {self.url}")

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    @_store_errors
    async def create_session(self, record: SessionRecord) -> None:
        sid = record.session_id
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self._k_session(sid), mapping={"record": record.to_json(),
                                                     "last_used_at": repr(record.last_used_at)})
            pipe.sadd(self._k_sessions(), sid)
            expire_at = self._expire_at(record.created_at)
            if expire_at is not None:
                pipe.expireat(self._k_session(sid), expire_at)
            await pipe.execute()

    @_store_errors
    async def get_session(self, session_id: str) -> SessionRecord | None:
        fields = await self._client.hgetall(self._k_session(session_id))
        if not fields or "record" not in fields:
            return None
        record = SessionRecord.from_json(fields["record"])
        return replace(record, last_used_at=float(fields.get("last_used_at", record.last_used_at)))

    @_store_errors
    async def touch_session(self, session_id: str, last_used_at: float) -> None:
        key = self._k_session(session_id)
        # HSET only when the session exists (never resurrect a deleted one as a half record).
        if await self._client.exists(key):
            await self._client.hset(key, "last_used_at", repr(last_used_at))

    @_store_errors
    async def delete_session(self, session_id: str) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._k_session(session_id))
            pipe.delete(self._k_versions(session_id), self._k_prompts(session_id))
            pipe.srem(self._k_sessions(), session_id)
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    @_store_errors
    async def session_ids(self) -> list[str]:
        ids = await self._client.smembers(self._k_sessions())
        return sorted(ids)

    @_store_errors
    async def commit_prompt(self, session_id: str, prompt: PromptRecord) -> None:
        key = self._k_session(session_id)
        text = await self._client.hget(key, "record")
        if text is None:
            return
        expire_at = self._expire_at(SessionRecord.from_json(text).created_at)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(self._k_prompts(session_id), prompt.to_json())
            pipe.hset(self._k_versions(session_id), str(prompt.object_id), str(prompt.version))
            pipe.hset(key, "last_used_at", repr(prompt.at))
            if expire_at is not None:
                pipe.expireat(self._k_prompts(session_id), expire_at)
                pipe.expireat(self._k_versions(session_id), expire_at)
            await pipe.execute()

    @_store_errors
    async def object_versions(self, session_id: str) -> dict[int, int]:
        raw = await self._client.hgetall(self._k_versions(session_id))
        return {int(k): int(v) for k, v in raw.items()}

    @_store_errors
    async def prompt_history(self, session_id: str, object_id: int | None = None) -> list[PromptRecord]:
        raw = await self._client.lrange(self._k_prompts(session_id), 0, -1)
        prompts = [PromptRecord.from_json(t) for t in raw]
        return [p for p in prompts if object_id is None or p.object_id == object_id]


def build_store(redis_url: str | None, *, prefix: str = "segsvc:", ttl_s: float | None = None) -> MetadataStore:
    """``RedisStore`` when a URL is given, else ``InProcessStore``."""
    if redis_url:
        return RedisStore(redis_url, prefix=prefix, ttl_s=ttl_s)
    return InProcessStore()
