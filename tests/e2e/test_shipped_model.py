"""The shipped default (the compact model with its trained weights, click propagation on) served end to end
by a real ``python -m app`` process and driven through the SDK: box, clicks in every mode, undo, the stream
against GET, and a ``kill -9`` after which a second process restores the session bit for bit.

Every other end-to-end test serves the tiny ``segvol-test`` model with random weights (fast); this one serves
what ``python -m app`` serves, so the shipped model's path (resampled ROI, propagation, its replay) is
covered over HTTP, WebSocket and a restore.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from client import Client, Session
from tests.e2e.conftest import SHARED_REDIS_URL, Server, kill_server
from tests.volumes import synthetic_volume

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

SHIPPED_MODEL: tuple[str, ...] = ()  # no model flags: what `python -m app` serves
BOX = [6, 20, 20, 17, 43, 43]  # around the synthetic volume's bright block
CLICKS = [((10, 30, 30), 1, "gru"), ((12, 25, 38), 0, "both"), ((8, 40, 24), 1, "decoder"),
          ((11, 44, 32), 1, "both")]


def _state(session: Session) -> dict[str, object]:
    info = session.info()
    return {"versions": {o.object_id: o.version for o in info.objects},
            "n_prompts": {o.object_id: o.n_prompts for o in info.objects},
            "masks": {o.object_id: session.mask(o.object_id) for o in info.objects},
            "labels": session.segmentation()}


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a["versions"] == b["versions"] and a["n_prompts"] == b["n_prompts"]
    for oid, mask in a["masks"].items():  # type: ignore[union-attr]
        other = b["masks"][oid]  # type: ignore[index]
        assert mask.dtype == other.dtype and np.array_equal(mask, other), f"object {oid} differs"
    assert np.array_equal(a["labels"], b["labels"])  # type: ignore[arg-type]


def test_the_shipped_model_serves_box_clicks_undo_and_restores_bit_identical(
        server_factory: Callable[..., Server], redis_prefix: str, tmp_path: Path) -> None:
    flags = ("--no-warmup", "--redis-url", SHARED_REDIS_URL, "--storage-dir", str(tmp_path / "storage"),
             "--log-level", "info")
    env = {"SEGSVC_REDIS_PREFIX": redis_prefix}
    first = server_factory(*flags, env=env, model_flags=SHIPPED_MODEL)
    with Client(first.url, timeout=300) as api:
        session = api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        assert session.created is not None and session.created.config == "compact"
        with session.stream() as stream:
            reply = session.box(1, BOX)
            assert [s.step for s in reply.steps] == ["box"] and reply.changed > 0
            box_mask = stream.wait_for_version(1, reply.version, timeout=120)
            assert np.array_equal(box_mask, session.mask(1))
            assert box_mask[6:18, 20:44, 20:44].mean() > 0.5  # the trained model finds the bright block
            masks = [box_mask]
            for point, label, mode in CLICKS:
                reply = session.clicks(1, [point], [label], mode=mode)
                assert [s.step for s in reply.steps] == (["gru", "decoder"] if mode == "both" else [mode])
                streamed = stream.wait_for_version(1, reply.version, timeout=120)
                masks.append(session.mask(1))
                assert np.array_equal(streamed, masks[-1]), f"stream and GET differ after {mode} {point}"
            reply = session.undo(1)
            assert np.array_equal(stream.wait_for_version(1, reply.version, timeout=120), masks[-2])
            assert np.array_equal(session.mask(1), masks[-2])
        second_object = np.zeros(box_mask.shape, np.uint8)
        second_object[2:5, 5:15, 50:60] = 1
        session.set_mask(2, second_object)
        before = _state(session)
        assert before["versions"] == {1: 1 + 1 + 2 + 1 + 2 + 1, 2: 1}

    kill_server(first)  # no shutdown hook: only what was acknowledged survives
    second = server_factory(*flags, env=env, model_flags=SHIPPED_MODEL)
    with Client(second.url, timeout=300) as api:
        restored = api.session(session.session_id, session.token)
        _assert_same(_state(restored), before)
        reply = restored.undo(1)  # the undo stack came back with the replay
        assert np.array_equal(restored.mask(1), masks[-3]) and reply.version == before["versions"][1] + 1
        point, label, mode = CLICKS[-2]  # the click that led from masks[-3] to masks[-2], again
        with restored.stream() as stream:
            reply = restored.clicks(1, [point], [label], mode=mode)
            assert np.array_equal(stream.wait_for_version(1, reply.version, timeout=120), masks[-2])
        restored.close()
