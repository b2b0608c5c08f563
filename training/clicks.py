"""Simulated corrective clicks in training, with the evaluation's own click rule (SPEC section 4)."""

from __future__ import annotations

import numpy as np

from evaluation.click_rule import next_click


def simulate_click(prediction: np.ndarray, ground_truth: np.ndarray) -> tuple[tuple[int, int, int], int] | None:
    """The challenge's next click for one object in one view: ((z, y, x), label) or None when perfect.

    Args:
        prediction: (d, h, w) bool current mask (logits > 0).
        ground_truth: (d, h, w) bool object.
    """
    click = next_click(prediction, ground_truth)
    if click is None:
        return None
    return click.point, click.label
