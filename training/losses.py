"""Dice + BCE, the paper's segmentation loss, for dense views and for the corrector's sparse points."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_bce(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Per-sample soft Dice loss + mean BCE.

    Args:
        logits: (B, ...) logits.
        target: (B, ...) 0/1 floats, same shape.
    Returns:
        (B,) loss per sample.
    """
    b = logits.shape[0]
    logits, target = logits.reshape(b, -1), target.reshape(b, -1).to(logits.dtype)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(1)
    dice = 1.0 - (2.0 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    return dice + bce
