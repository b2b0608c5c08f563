"""Small synthetic volumes and upload payloads shared by the API and end-to-end tests."""

from __future__ import annotations

import io

import numpy as np

SHAPE = (24, 64, 64)


def synthetic_volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A noisy volume with one bright block at [6:18, 20:44, 20:44]."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 10.0, shape).astype(np.float32)
    vol[6:18, 20:44, 20:44] += 200.0
    return vol


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
