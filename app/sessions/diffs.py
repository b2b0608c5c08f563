"""Server side of the binary diff stream: turn predictor ``Change``s into frames, snapshots for resync.

The frame codec itself lives in ``app.schemas.frames`` (shared with the SDK, which may import only
``app.schemas``); this module re-exports it and adds what only the server needs. Byte layout:
docs/wire-format.md.

    frame = encode_change(change, shape=state_shape, base_version=previous_version)
    frame = encode_snapshot(mask, object_id=oid, version=v)   # answer to a resync request
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from app.schemas.frames import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_VOXELS,
    FLAG_HAS_BBOX,
    FLAG_ZLIB,
    FRAME_FORMAT_VERSION,
    HEADER_SIZE,
    KIND_DIFF,
    KIND_SNAPSHOT,
    MAGIC,
    STEP_CODES,
    DiffFrame,
    VersionMismatchError,
    apply_diff,
    decode_diff,
    encode_diff,
    encode_snapshot,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_VOXELS",
    "FLAG_HAS_BBOX",
    "FLAG_ZLIB",
    "FRAME_FORMAT_VERSION",
    "HEADER_SIZE",
    "KIND_DIFF",
    "KIND_SNAPSHOT",
    "MAGIC",
    "STEP_CODES",
    "ChangeLike",
    "DiffFrame",
    "VersionMismatchError",
    "apply_diff",
    "decode_diff",
    "encode_change",
    "encode_diff",
    "encode_snapshot",
]


class ChangeLike(Protocol):
    """What ``encode_change`` reads from ``app.models.state.Change`` (kept structural: no torch import).

    Read-only members, as the frozen dataclass has them."""

    @property
    def object_id(self) -> int: ...

    @property
    def version(self) -> int: ...

    @property
    def step(self) -> str: ...

    @property
    def indices(self) -> np.ndarray: ...

    @property
    def values(self) -> np.ndarray: ...

    @property
    def bbox(self) -> tuple[int, int, int, int, int, int] | None: ...


def encode_change(
    change: ChangeLike, *, shape: Sequence[int], base_version: int, compress: bool | None = None
) -> bytes:
    """The diff frame of one predictor step.

    Args:
        change: the step's result (flat ascending ``indices`` into ``shape``, 0/1 ``values``).
        shape: (D, H, W) of the session's volume.
        base_version: the object's version before this step (0 for a new object).
    """
    return encode_diff(
        change.indices,
        change.values,
        object_id=change.object_id,
        version=change.version,
        base_version=base_version,
        shape=shape,
        step=change.step,
        bbox=change.bbox,
        compress=compress,
    )
