"""Fixtures for the session-layer tests: the asyncio backend, a metadata store of each kind, the shared
predictor and a session manager over it (in-process store, room for 4 sessions)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from app.sessions.executor import DeviceExecutor
from app.sessions.manager import SessionLimits, SessionManager
from app.sessions.store import InProcessStore, MetadataStore, RedisStore

REDIS_URL = os.environ.get("SEGSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _redis_reachable(url: str) -> bool:
    store = RedisStore(url, prefix="probe:")
    try:
        return await store.ping()
    finally:
        await store.close()


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MetadataStore]:
    """Each test runs against both stores; the Redis one uses a unique key prefix and deletes it after."""
    if request.param == "in_process":
        yield InProcessStore()
        return
    if not await _redis_reachable(REDIS_URL):
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test-{uuid.uuid4().hex}:"
    redis_store = RedisStore(REDIS_URL, prefix=prefix, ttl_s=3600)
    await redis_store.connect()
    try:
        yield redis_store
    finally:
        import redis.asyncio as aioredis

        client = aioredis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await redis_store.close()


@pytest.fixture(scope="session")
def predictor(service_predictor):  # noqa: ANN001, ANN201
    return service_predictor


@pytest.fixture
async def manager(predictor) -> AsyncIterator[SessionManager]:  # noqa: ANN001
    executor = DeviceExecutor()
    m = SessionManager(predictor, InProcessStore(), executor, SessionLimits(max_sessions=4))
    yield m
    await m.shutdown()
    executor.shutdown()
