"""An in-process app (real lifespan, real model, in-process store) driven by Starlette's TestClient."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

SHAPE = (24, 64, 64)
UPLOAD_LIMIT = 1 << 20


def test_settings(**overrides: object) -> Settings:
    base: dict[str, object] = dict(model_config_name="segvol-test", weights=None, allow_random_weights=True,
                                   warmup=False, max_upload_bytes=UPLOAD_LIMIT, redis_url=None)
    return Settings(**{**base, **overrides})


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test


@pytest.fixture
def client(service_predictor) -> Iterator[TestClient]:  # noqa: ANN001
    app = create_app(test_settings(), predictor=service_predictor)
    with TestClient(app) as c:
        yield c


def volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def create(client: TestClient, spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)) -> tuple[str, dict[str, str]]:
    r = client.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.asarray(spacing)))},
                    data={"spacing_order": "zyx", "modality": "CT"})
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}
