"""nnInteractive's NNIA wire format against the client package's own codec, the header checks that run before
any memory is spent, and the ``--nninteractive`` switch."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.__main__ import parse_args, settings_overrides
from app.config import Settings
from app.main import create_app
from app.schemas import nnia

serialization = pytest.importorskip("nnInteractive.inference.remote.serialization")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "bool"])
def test_both_codecs_read_each_other(dtype: str) -> None:
    rng = np.random.RandomState(1)
    arr = (rng.rand(5, 7, 9) * 50).astype(dtype)
    assert np.array_equal(nnia.unpack(serialization.pack_array(arr)), arr)  # theirs -> ours (auto filter)
    out = serialization.unpack_array(nnia.pack(arr))  # ours -> theirs
    assert out.dtype == arr.dtype and np.array_equal(out, arr)


def test_all_zero_and_empty_blocks_round_trip() -> None:
    for arr in (np.zeros((3, 5, 7), np.uint16), np.zeros((0, 4, 4), np.uint8)):
        assert np.array_equal(serialization.unpack_array(nnia.pack(arr)), arr)


def test_header_is_read_without_the_payload() -> None:
    packed = serialization.pack_array(np.zeros((1, 300, 300, 300), np.int16))
    header = nnia.read_header(packed[:200], "image")  # the header alone tells the size
    assert header.shape == (1, 300, 300, 300) and header.nbytes == 300**3 * 2


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "version"),
    (lambda b: b[:5] + bytes([7]) + b[6:], "codec"),
    (lambda b: b[:30], "truncated|sizes|payload"),
])
def test_malformed_buffers_are_refused_by_name(mutate, message: str) -> None:  # noqa: ANN001
    packed = serialization.pack_array(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    with pytest.raises(ValueError, match=f"^mask: .*({message})"):
        nnia.unpack(mutate(packed), field="mask")


def test_a_chunk_that_lies_about_its_size_is_refused() -> None:
    packed = bytearray(serialization.pack_array(np.arange(60, dtype=np.uint8).reshape(3, 4, 5)))
    offset = 8 + len("uint8") + 3 * 8 + 4
    struct.pack_into("<Q", packed, offset, 30)  # declares 30 raw bytes, the frame holds 60
    with pytest.raises(ValueError, match="chunk"):
        nnia.unpack(bytes(packed), field="image")


def test_flag_and_routes_only_when_enabled() -> None:
    assert settings_overrides(parse_args(["--nninteractive"]))["nninteractive_enabled"] is True
    assert "nninteractive_enabled" not in settings_overrides(parse_args([]))
    base = {"model_config_name": "segvol-test", "weights": None, "allow_random_weights": True}
    off = create_app(Settings(**base))
    assert TestClient(off).post("/nninteractive/claim").status_code == 404  # no lifespan: routing only
    assert not any(p.startswith("/nninteractive") for p in off.openapi()["paths"])
    on = create_app(Settings(**base, nninteractive_enabled=True))
    paths = set(on.openapi()["paths"])
    assert {"/nninteractive/claim", "/nninteractive/add_lasso_interaction", "/nninteractive/undo"} <= paths


def test_rate_limit_covers_the_work_not_the_keepalive() -> None:
    from app.api.rate_limit import is_limited

    for path in ("claim", "set_image", "add_bbox_interaction", "add_lasso_interaction", "undo", "predict"):
        assert is_limited("POST", f"/nninteractive/{path}"), path
    for path in ("heartbeat", "release"):  # the client's heartbeat thread and its close are never throttled
        assert not is_limited("POST", f"/nninteractive/{path}"), path
    assert is_limited("POST", "/v1/sessions/s1/objects/2/scribble") and is_limited("POST", "/v1/sessions/s1/objects/2/lasso")
