"""The protocol loop: rounds, clicks from the session's label map, timing slots, skipped cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from app.models.label_map import paint_in_order
from evaluation.baselines import BoxFillMethod, RandomWalkerMethod, box_mask
from evaluation.cases import Box, EvalCase, box_from_mask
from evaluation.click_rule import Click, next_click
from evaluation.runner import evaluate, run_case


def _case(boxes: bool = True) -> EvalCase:
    shape = (12, 20, 20)
    zz, yy, xx = np.indices(shape)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:6, 2:8, 2:8] = 3  # a cuboid: its box fill is perfect
    gt[(zz - 7) ** 2 + (yy - 13) ** 2 + (xx - 13) ** 2 <= 16] = 5  # a ball: box fill over-segments
    image = np.clip(30 + 40 * gt + np.random.default_rng(0).normal(0, 5, shape), 0, 255).astype(np.uint8)
    return EvalCase(
        name="synthetic",
        modality="MR",
        image=image,
        ground_truth=gt,
        spacing=(2.0, 1.0, 1.0),
        classes=[3, 5],
        boxes={c: box_from_mask(gt == c) for c in (3, 5)} if boxes else None,
    )


class _RecordingSession:
    """Answers a box with the box itself, records the clicks it is sent; its label map: the highest id wins."""

    def __init__(self, shape: tuple[int, ...], log: list[tuple[int, Click]]):
        self._shape, self._log, self._masks = shape, log, {}

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return paint_in_order(self._masks, sorted(object_ids), shape, dtype)

    def add_box(self, object_id: int, box: Box) -> None:
        self._masks[object_id] = box_mask(self._shape, box)

    def add_click(self, object_id: int, click: Click) -> None:
        self._log.append((object_id, click))

    def mask(self, object_id: int) -> np.ndarray:
        return self._masks[object_id]

    def close(self) -> None:
        pass


class _RecordingMethod:
    name = "recording"

    def __init__(self) -> None:
        self.clicks: list[tuple[int, Click]] = []

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> _RecordingSession:
        return _RecordingSession(image.shape, self.clicks)


def test_box_fill_rounds_scores_and_clicks() -> None:
    case = _case()
    result = run_case(BoxFillMethod(), case)
    ball = case.ground_truth == 5
    expected = (1.0 + 2 * ball.sum() / (ball.sum() + box_mask(ball.shape, case.boxes[5]).sum())) / 2
    assert result.dsc == pytest.approx([expected] * 6)
    ball_dsc = 2 * ball.sum() / (ball.sum() + box_mask(ball.shape, case.boxes[5]).sum())
    np.testing.assert_allclose(result.class_dsc, [[1.0, ball_dsc]] * 6)  # per class, in `classes` order
    assert all(0.0 < n <= 1.0 for n in result.nsd)
    assert result.class_nsd[0][0] == pytest.approx(1.0) and np.mean(result.class_nsd[0]) == pytest.approx(result.nsd[0])
    assert result.n_clicks == [0, 1, 1, 1, 1, 1]  # the cuboid is perfect: only the ball gets clicks
    assert len(result.running_time) == 6  # each slot's value: test_only_the_methods_work_is_timed
    assert (result.case_name, result.method, result.modality, result.classes) == ("synthetic", "box_fill", "MR", [3, 5])


def test_clicks_come_from_the_sessions_label_map() -> None:
    case = _case()
    # Make the boxes overlap: class 5's box covers part of class 3, so class 3 loses voxels in the label map.
    case.boxes = {3: case.boxes[3], 5: (2, 5, 5, 11, 17, 17)}
    method = _RecordingMethod()
    run_case(method, case)
    labels = paint_in_order({c: box_mask(case.ground_truth.shape, b) for c, b in case.boxes.items()}, [3, 5],
                            case.ground_truth.shape, case.ground_truth.dtype)
    expected = [(c, next_click(labels == c, case.ground_truth == c)) for c in (3, 5)]
    assert expected[0][1] is not None and expected[0][1].label == 1  # the hidden part of class 3
    assert method.clicks == expected * 5  # the prediction never changes, so neither does the click


def test_case_without_boxes_scores_round_one_zero_and_starts_from_clicks() -> None:
    case = _case(boxes=False)
    result = run_case(RandomWalkerMethod(), case)
    assert result.dsc[0] == 0.0 and result.nsd[0] == 0.0 and result.running_time[0] == 0.0
    assert result.n_clicks[1] == 2  # from an empty prediction, both classes get a foreground click
    assert result.dsc[1] > 0.0


def test_evaluate_runs_every_method_and_skips_cases_without_objects() -> None:
    empty = _case()
    empty.name, empty.classes, empty.boxes = "empty", [], {}
    seen = []
    results = evaluate(
        [BoxFillMethod(), RandomWalkerMethod()], [_case(), empty], progress=False, on_result=seen.append
    )
    assert [(r.case_name, r.method) for r in results] == [("synthetic", "box_fill"), ("synthetic", "random_walker")]
    assert seen == results


class _OracleSession(_RecordingSession):
    """Answers each click by making the clicked error component of its object right (the contract's ideal)."""

    def __init__(self, shape: tuple[int, ...], log: list[tuple[int, Click]], gt: np.ndarray):
        super().__init__(shape, log)
        self._gt = gt

    def add_click(self, object_id: int, click: Click) -> None:
        from evaluation.click_contract import clicked_error_region

        mask = self._masks[object_id]
        truth = self._gt == object_id
        region = clicked_error_region(mask, truth, click.point)
        mask[region] = truth[region]


def test_click_contract_per_round_is_recorded() -> None:
    case = _case()
    ignoring = run_case(_RecordingMethod(), case)
    # The ball's box over-segments; the recording session ignores clicks: never obeyed, nothing fixed.
    assert len(ignoring.class_obeyed) == 5 and ignoring.class_voxels == [int((case.ground_truth == c).sum())
                                                                         for c in case.classes]
    assert all(r[0] is None for r in ignoring.class_obeyed)  # the cuboid's box is perfect: no click
    assert [r[1] for r in ignoring.class_obeyed] == [0.0] * 5
    assert [r[1] for r in ignoring.class_fixed] == [0.0] * 5

    class _Oracle(_RecordingMethod):
        def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> _OracleSession:
            return _OracleSession(image.shape, self.clicks, case.ground_truth)

    oracle = run_case(_Oracle(), case)
    clicked = [(o[1], f[1]) for o, f in zip(oracle.class_obeyed, oracle.class_fixed, strict=True) if o[1] is not None]
    assert clicked and all(o == 1.0 and f == 1.0 for o, f in clicked)
    assert oracle.class_dsc[-1][1] > ignoring.class_dsc[-1][1]


class _TickingClock:
    """Time that moves only when the method works: each call of the timed session adds its cost."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _TimedSession(_RecordingSession):
    COSTS = {"add_box": 1.0, "add_click": 0.5, "label_map": 0.25}

    def __init__(self, shape: tuple[int, ...], clock: _TickingClock) -> None:
        super().__init__(shape, [])
        self._clock = clock

    def add_box(self, object_id: int, box: Box) -> None:
        self._clock.now += self.COSTS["add_box"]
        super().add_box(object_id, box)

    def add_click(self, object_id: int, click: Click) -> None:
        self._clock.now += self.COSTS["add_click"]
        self._masks.setdefault(object_id, np.zeros(self._shape, np.uint8))  # a click starts an unboxed object
        super().add_click(object_id, click)

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        self._clock.now += self.COSTS["label_map"]
        return super().label_map(object_ids, shape, dtype)


class _TimedMethod:
    """Opening a session (encoding the volume) costs 8; the click rule and the scoring cost nothing."""

    name = "timed"
    OPEN_COST = 8.0

    def __init__(self, clock: _TickingClock) -> None:
        self.clock = clock

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> _TimedSession:
        self.clock.now += self.OPEN_COST
        return _TimedSession(image.shape, self.clock)


@pytest.mark.parametrize("boxes", [True, False], ids=["box_round", "no_box"])
def test_only_the_methods_work_is_timed_and_encoding_goes_to_the_first_prompting_round(boxes: bool) -> None:
    clock = _TickingClock()
    result = run_case(_TimedMethod(clock), _case(boxes=boxes), clock=clock)
    cost = _TimedSession.COSTS
    expected = []
    for round_index, n_clicks in enumerate(result.n_clicks):
        if round_index == 0:
            expected.append(2 * cost["add_box"] + cost["label_map"] if boxes else 0.0)
        else:
            expected.append(n_clicks * cost["add_click"] + cost["label_map"])
    first_prompting = 0 if boxes else 1
    expected[first_prompting] += _TimedMethod.OPEN_COST
    assert result.running_time == pytest.approx(expected)
    assert sum(result.running_time) == pytest.approx(clock.now - 100.0)  # every unit of work is charged once
