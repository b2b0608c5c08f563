"""The weights shipped in the repo: they load with no flags, run the way they were trained, and segment an
obvious object from its box (a floor that catches a broken export or a train/run-time mismatch, not a
quality benchmark: the dev-split numbers are in docs/model-card.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models.build import build_predictor, default_weights_path

SHAPE = (48, 96, 96)
SPACING = (2.0, 1.0, 1.0)
# centre (z, y, x), radii, brighter (+1) or darker (-1) than the surroundings
BLOBS = [((24, 48, 40), (8, 14, 18), 1), ((20, 50, 60), (5, 9, 7), -1), ((30, 40, 50), (10, 20, 16), 1)]


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return build_predictor("compact")


def test_the_default_weights_are_ours_and_run_resampled_as_trained(predictor) -> None:  # type: ignore[no-untyped-def]
    assert default_weights_path("compact").stat().st_size < 50 * 2**20  # the budget for shipped weights
    assert predictor.resample and predictor.roi_frame == (32, 64, 64)


@pytest.mark.parametrize("blob", BLOBS, ids=["bright", "small-dark", "large-bright"])
def test_a_box_around_a_clear_blob_segments_it(predictor, blob) -> None:  # type: ignore[no-untyped-def]
    (cz, cy, cx), (rz, ry, rx), sign = blob
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    truth = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    volume = np.random.default_rng(0).normal(100, 10, size=SHAPE).astype(np.float32)
    volume[truth] += sign * 40
    state = predictor.init_state(volume, SPACING)
    zs, ys, xs = np.nonzero(truth)
    predictor.add_box(state, 1, [zs.min(), ys.min(), xs.min(), zs.max(), ys.max(), xs.max()])
    mask = predictor.get_mask(state, 1).astype(bool)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.8
