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
      {p}session:{sid}:owner         string: the replica that serves the session (several replicas only)
      {p}replica:{rid}               string: a replica's heartbeat, expires unless renewed

  Every key of a session expires at ``created_at + ttl_s`` so that records of a crashed process vanish.
  The owner and heartbeat keys form the session directory of ``app.sessions.replicas``: a prompt is
  appended only while the committing replica is the session's owner, checked in the same Lua script as the
  append (so a replica that lost a session can never fork its history).

Both store the same JSON, so both behave the same (one test suite runs against both).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

from app.errors import SessionRecordLost, StoreUnavailable


class OwnershipLost(Exception):
    """Another replica owns the session now (``app.sessions.replicas``): the prompt was not recorded. Never
    reaches a client: the manager turns it into ``SessionMoved``."""


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
        op: "box" | "clicks" | "region" (scribble or lasso) | "undo" | "reset" | "mask" | "remove" | "refine" (the
            deferred decoder step of ``both`` clicks; its ``reply`` holds ``{"completes": {key: reply}}``, the
            complete replies of the keyed clicks it covered).
        object_id: the object it changed.
        args: the prompt's JSON arguments (box, points/labels/mode, mask digest, ...).
        version: the object's version after the prompt.
        at: Unix time in seconds.
        key: the client's idempotency key of the request, None when it sent none.
        reply: the reply the client got (``PromptOutcome.to_json``), kept with ``key`` so that a retry of the
            request gets it again after a restart; None without a key.
    """

    op: str
    object_id: int
    args: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    at: float = 0.0
    key: str | None = None
    reply: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PromptRecord:
        d = json.loads(text)
        return cls(op=d["op"], object_id=int(d["object_id"]), args=d["args"], version=int(d["version"]),
                   at=float(d["at"]), key=d.get("key"), reply=d.get("reply"))


@runtime_checkable
class MetadataStore(Protocol):
    """Async metadata store. Methods on an unknown session are no-ops / return empty, except
    ``commit_prompt``, which raises ``SessionRecordLost`` (a prompt that cannot be recorded must fail)."""

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

    async def commit_prompt(self, session_id: str, prompt: PromptRecord, *, owner: str | None = None) -> None:
        """Atomically: append ``prompt`` to the history, set the object's version, set last_used_at.

        Raises ``SessionRecordLost`` when the store does not know the session (nothing is written), and, with
        ``owner`` (a replica id), ``OwnershipLost`` when another replica owns the session now."""

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

    async def commit_prompt(self, session_id: str, prompt: PromptRecord, *, owner: str | None = None) -> None:
        # ``owner`` is not checked: one process, one owner (several replicas need the Redis store).
        if session_id not in self._records:
            raise SessionRecordLost(_RECORD_LOST)
        self._prompts[session_id].append(prompt.to_json())
        self._versions[session_id][prompt.object_id] = prompt.version
        self._last_used[session_id] = prompt.at

    async def object_versions(self, session_id: str) -> dict[int, int]:
        return dict(self._versions.get(session_id, {}))

    async def prompt_history(self, session_id: str, object_id: int | None = None) -> list[PromptRecord]:
        prompts = [PromptRecord.from_json(t) for t in self._prompts.get(session_id, [])]
        return [p for p in prompts if object_id is None or p.object_id == object_id]


_RECORD_LOST = ("store: the session is no longer in the session store (flushed, evicted or expired); the "
                "prompt was not recorded and the session is closed")

# KEYS: record, prompts, versions, owner. ARGV: prompt JSON, object id, version, at, ttl_s ('' = none),
# owner ('' = unchecked). Returns 1, or -1 (no record: nothing written), -2 (another owner: nothing written).
_COMMIT_LUA = """
local rec = redis.call('HGET', KEYS[1], 'record')
if not rec then return -1 end
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[6] then return -2 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[4])
if ARGV[5] ~= '' then
  local expire_at = math.ceil(cjson.decode(rec)['created_at'] + tonumber(ARGV[5]))
  redis.call('EXPIREAT', KEYS[2], expire_at)
  redis.call('EXPIREAT', KEYS[3], expire_at)
end
return 1
"""

# KEYS: record, owner. ARGV: replica id, heartbeat key prefix, ttl_s ('' = none).
# Returns {-1} (no such session), {0} (already ours), {1, previous owner or '', previous owner alive 0/1}.
_CLAIM_LUA = """
local rec = redis.call('HGET', KEYS[1], 'record')
if not rec then return {-1} end
local prev = redis.call('GET', KEYS[2])
if prev == ARGV[1] then return {0} end
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('EXPIREAT', KEYS[2], math.ceil(cjson.decode(rec)['created_at'] + tonumber(ARGV[3])))
end
if not prev then return {1, '', 0} end
return {1, prev, redis.call('EXISTS', ARGV[2] .. prev)}
"""

# KEYS: owner. ARGV: replica id. Deletes the owner entry only if it is ours.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """The outcome of ``RedisStore.claim_session``.

    Attributes:
        exists: the store knows the session (nothing was claimed otherwise).
        taken: the directory entry changed to the claimer (False: it was already the claimer's).
        previous: the replica that owned it before, or None.
        previous_alive: that replica's heartbeat was still there (a hand-over rather than a fail-over).
    """

    exists: bool
    taken: bool = False
    previous: str | None = None
    previous_alive: bool = False


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _store_errors(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Report any Redis or socket failure as ``StoreUnavailable`` (the wrapped method keeps its signature)."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
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

        # decode_responses: every reply is str. redis' stubs type replies ``bytes | str`` whatever the client's
        # settings, hence the casts to str in the reads below.
        self._client = aioredis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._ttl_s = ttl_s
        self.url = url
        self._commit = self._client.register_script(_COMMIT_LUA)
        self._claim = self._client.register_script(_CLAIM_LUA)
        self._release = self._client.register_script(_RELEASE_LUA)

    def _k_sessions(self) -> str:
        return f"{self._prefix}sessions"

    def _k_session(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}"

    def _k_versions(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}:versions"

    def _k_prompts(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}:prompts"

    def _k_owner(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}:owner"

    def _k_replica(self, rid: str) -> str:
        return f"{self._prefix}replica:{rid}"

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
        fields = cast(dict[str, str], await self._client.hgetall(self._k_session(session_id)))
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
            pipe.delete(self._k_versions(session_id), self._k_prompts(session_id), self._k_owner(session_id))
            pipe.srem(self._k_sessions(), session_id)
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    @_store_errors
    async def session_ids(self) -> list[str]:
        ids = cast(set[str], await self._client.smembers(self._k_sessions()))
        return sorted(ids)

    @_store_errors
    async def commit_prompt(self, session_id: str, prompt: PromptRecord, *, owner: str | None = None) -> None:
        keys = [self._k_session(session_id), self._k_prompts(session_id), self._k_versions(session_id),
                self._k_owner(session_id)]
        args = [prompt.to_json(), str(prompt.object_id), str(prompt.version), repr(prompt.at),
                "" if self._ttl_s is None else repr(float(self._ttl_s)), owner or ""]
        result = int(await self._commit(keys=keys, args=args))
        if result == -1:
            raise SessionRecordLost(_RECORD_LOST)
        if result == -2:
            raise OwnershipLost(f"session_id: session {session_id} is owned by another replica now")

    # --- session directory (several replicas; app.sessions.replicas) -------------------------------------

    @_store_errors
    async def heartbeat(self, replica_id: str, ttl_s: float) -> None:
        """Say that ``replica_id`` is alive for the next ``ttl_s`` seconds."""
        import time

        await self._client.set(self._k_replica(replica_id), repr(time.time()), px=max(1, int(ttl_s * 1000)))

    @_store_errors
    async def end_heartbeat(self, replica_id: str) -> None:
        await self._client.delete(self._k_replica(replica_id))

    @_store_errors
    async def claim_session(self, session_id: str, replica_id: str) -> Claim:
        """Make ``replica_id`` the session's owner (atomically; from now on only its commits land)."""
        keys = [self._k_session(session_id), self._k_owner(session_id)]
        ttl = "" if self._ttl_s is None else repr(float(self._ttl_s))
        result = await self._claim(keys=keys, args=[replica_id, self._k_replica(""), ttl])
        code = int(result[0])
        if code == -1:
            return Claim(exists=False)
        if code == 0:
            return Claim(exists=True, taken=False, previous=replica_id, previous_alive=True)
        return Claim(exists=True, taken=True, previous=str(result[1]) or None, previous_alive=bool(int(result[2])))

    @_store_errors
    async def release_session(self, session_id: str, replica_id: str) -> bool:
        """Drop the directory entry if ``replica_id`` still owns the session; True when it did."""
        return bool(int(await self._release(keys=[self._k_owner(session_id)], args=[replica_id])))

    @_store_errors
    async def session_owners(self, session_ids: list[str]) -> dict[str, str | None]:
        """The owner of every given session (None: no owner)."""
        if not session_ids:
            return {}
        owners = cast(list[str | None], await self._client.mget([self._k_owner(sid) for sid in session_ids]))
        return dict(zip(session_ids, owners, strict=True))

    @_store_errors
    async def object_versions(self, session_id: str) -> dict[int, int]:
        raw = await self._client.hgetall(self._k_versions(session_id))
        return {int(k): int(v) for k, v in raw.items()}

    @_store_errors
    async def prompt_history(self, session_id: str, object_id: int | None = None) -> list[PromptRecord]:
        raw = cast(list[str], await self._client.lrange(self._k_prompts(session_id), 0, -1))
        prompts = [PromptRecord.from_json(t) for t in raw]
        return [p for p in prompts if object_id is None or p.object_id == object_id]


def build_store(redis_url: str | None, *, prefix: str = "segsvc:", ttl_s: float | None = None) -> MetadataStore:
    """``RedisStore`` when a URL is given, else ``InProcessStore``."""
    if redis_url:
        return RedisStore(redis_url, prefix=prefix, ttl_s=ttl_s)
    return InProcessStore()
