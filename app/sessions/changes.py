"""What a whole request changed, from the per-step changes it produced.

A click request in mode "both" runs two steps (gru, then decoder); its reply reports the *net* change
against the mask before the request: a voxel flipped by the gru step and flipped back by the decoder
step did not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

Bbox = tuple[int, int, int, int, int, int]


class StepChange(Protocol):
    # Read-only members: the predictor's ``Change`` is a frozen dataclass.
    @property
    def indices(self) -> np.ndarray: ...  # (n,) int64 ascending flat indices into (D, H, W)

    @property
    def values(self) -> np.ndarray: ...  # (n,) uint8 new values


def net_change(changes: Sequence[StepChange], shape: tuple[int, int, int]) -> tuple[int, Bbox | None]:
    """Count and inclusive bbox (z0, y0, x0, z1, y1, x1) of voxels whose final value differs from the start.

    Each step's ``values`` are new values of voxels that *changed* in that step, so a voxel's value before
    the request is ``1 - (its first new value)``.
    """
    if not changes:
        return 0, None
    if len(changes) == 1:
        idx = np.asarray(changes[0].indices, dtype=np.int64)
    else:
        all_idx = np.concatenate([np.asarray(c.indices, dtype=np.int64) for c in changes])
        all_val = np.concatenate([np.asarray(c.values, dtype=np.uint8) for c in changes])
        if all_idx.size == 0:
            return 0, None
        uniq, first = np.unique(all_idx, return_index=True)
        _, last_rev = np.unique(all_idx[::-1], return_index=True)
        last = all_idx.size - 1 - last_rev
        before = 1 - all_val[first]
        after = all_val[last]
        idx = uniq[after != before]
    if idx.size == 0:
        return 0, None
    z, y, x = np.unravel_index(idx, shape)
    return int(idx.size), (int(z.min()), int(y.min()), int(x.min()), int(z.max()), int(y.max()), int(x.max()))
