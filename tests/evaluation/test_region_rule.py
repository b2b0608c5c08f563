"""The simulated scribble / lasso user: drawn on the slice of the challenge's click, inside the error there."""

from __future__ import annotations

import numpy as np

from evaluation.click_rule import next_click
from evaluation.region_rule import next_region


def _case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((10, 30, 30), bool)
    gt[2:8, 5:25, 5:25] = True
    pred = np.zeros_like(gt)
    pred[2:8, 5:25, 5:15] = True  # the right half is missed
    return pred, gt


def test_lasso_fills_the_missed_part_of_the_click_slice() -> None:
    pred, gt = _case()
    click = next_click(pred, gt)
    region = next_region(pred, gt, "lasso")
    assert region is not None and click is not None and region.label == click.label == 1
    z, y, x = np.unravel_index(region.flat, gt.shape)
    assert set(z.tolist()) == {click.point[0]}
    assert gt.reshape(-1)[region.flat].all() and not pred.reshape(-1)[region.flat].any()  # inside the error
    assert len(region.flat) > 50  # the area, shrunk by one voxel, not a point
    assert np.ravel_multi_index(click.point, gt.shape) in region.flat


def test_scribble_is_the_row_through_the_click() -> None:
    pred, gt = _case()
    click = next_click(pred, gt)
    region = next_region(pred, gt, "scribble")
    assert region is not None and click is not None
    z, y, x = np.unravel_index(region.flat, gt.shape)
    assert set(z.tolist()) == {click.point[0]} and set(y.tolist()) == {click.point[1]}
    assert len(region.flat) > 3


def test_over_segmentation_gives_a_background_region_and_perfect_gives_none() -> None:
    pred, gt = _case()
    region = next_region(gt | (np.arange(30)[None, None, :] > 26), gt, "lasso")
    assert region is not None and region.label == 0 and not gt.reshape(-1)[region.flat].any()
    assert next_region(gt, gt, "scribble") is None


def test_lasso_rounds_on_the_in_process_predictor(service_predictor) -> None:  # noqa: ANN001
    from evaluation.backends import PredictorMethod
    from evaluation.cases import EvalCase, box_from_mask
    from evaluation.runner import run_case

    pred, gt = _case()
    image = (30 + 60 * gt + np.random.default_rng(0).normal(0, 3, gt.shape)).astype(np.float32)
    case = EvalCase(name="synthetic", modality="MR", image=image, ground_truth=gt.astype(np.uint8),
                    spacing=(2.0, 1.0, 1.0), classes=[1], boxes={1: box_from_mask(gt)})
    result = run_case(PredictorMethod(service_predictor, "both"), case, prompts="lasso")
    assert len(result.dsc) == 6 and all(n <= 1 for n in result.n_clicks)
    assert sum(result.n_clicks[1:]) >= 1 and all(0.0 <= d <= 1.0 for d in result.dsc)  # lassos were drawn
