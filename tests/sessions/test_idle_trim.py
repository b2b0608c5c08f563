"""An idle session drops its rebuildable caches (the reaper's sweep) and, used again, gives the same masks as a
session that kept them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.sessions.executor import DeviceExecutor
from app.sessions.manager import Geometry, SessionLimits, SessionManager
from app.sessions.store import InProcessStore

pytestmark = pytest.mark.anyio

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0))
BOX = [6, 20, 20, 17, 43, 43]
CLICKS = [((12, 30, 30), 0), ((8, 25, 25), 1), ((10, 28, 33), 1)]


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 10, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def managers(predictor) -> AsyncIterator[tuple[SessionManager, Clock]]:  # noqa: ANN001
    executor, clock = DeviceExecutor(), Clock()
    m = SessionManager(predictor, InProcessStore(), executor, SessionLimits(idle_trim_s=60.0), clock=clock)
    yield m, clock
    await m.shutdown()
    executor.shutdown()


async def test_an_idle_session_drops_its_caches_and_gives_the_same_masks_after(managers) -> None:  # noqa: ANN001
    manager, clock = managers
    trimmed, _ = await manager.create(_volume(), GEOMETRY)
    kept, _ = await manager.create(_volume(), GEOMETRY)
    for session in (trimmed, kept):
        await manager.add_box(session, 1, BOX)
        await manager.add_clicks(session, 1, [CLICKS[0][0]], [CLICKS[0][1]], mode="both")

    clock.now += 30.0
    manager.mark_used(kept)  # kept stays in use
    await manager.expire_due()
    assert trimmed.state.window_cache  # not idle long enough yet
    clock.now += 31.0
    manager.mark_used(kept)
    before = trimmed.nbytes
    await manager.expire_due()
    assert not trimmed.state.window_cache and not trimmed.state.geodesic_cache
    assert trimmed.nbytes < before and kept.state.window_cache
    assert await manager.lifecycle.trim_idle() == 0  # once per idle period

    for point, label in CLICKS[1:]:
        for session in (trimmed, kept):
            await manager.add_clicks(session, 1, [point], [label], mode="both")
    got, version = await manager.get_mask(trimmed, 1)
    want, want_version = await manager.get_mask(kept, 1)
    assert version == want_version
    np.testing.assert_array_equal(got, want)  # the caches were rebuilt, the results did not change
