"""An in-process app (real lifespan, real model, in-process store) driven by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.volumes import SHAPE, npz_bytes, synthetic_volume  # noqa: F401  (re-exported to the tests)

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
    return synthetic_volume(seed)


def create(client: TestClient, spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)) -> tuple[str, dict[str, str]]:
    r = client.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.asarray(spacing)))},
                    data={"spacing_order": "zyx", "modality": "CT"})
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}
