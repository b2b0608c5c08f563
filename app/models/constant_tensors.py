"""Small constant tensors the per-click steps use on every call, made once per value and device.

A GRU click runs a few dozen tiny tensor ops, where building a (3,) tensor from Python costs about as much as an
op on it; these are cached instead. They are made outside inference mode, so a cached tensor can be used both
inside ``torch.inference_mode`` (the predictor) and outside it (training), and nothing may write into them.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=256)
def long_vector(values: tuple[int, ...], device: torch.device) -> Tensor:
    """(len(values),) long tensor of ``values`` (a grid's extent, a ROI's origin)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.long, device=device)


@lru_cache(maxsize=64)
def float_vector(values: tuple[float, ...], device: torch.device) -> Tensor:
    """(len(values),) float32 tensor of ``values``."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32, device=device)


def strides(shape: tuple[int, ...] | torch.Size, device: torch.device) -> Tensor:
    """(3,) long C-order strides of a (d, h, w) grid: ``(coords * strides).sum(-1)`` is the flat index."""
    return long_vector((shape[1] * shape[2], shape[2], 1), device)

