"""The interactive protocol: per case and method, a box round then five simulated click rounds.

Per round every class gets its prompt (round 1: its box; rounds 2..6: the official click computed from the
previous round's prediction, none when that class is already perfect), the session's label map of all
classes is read back and the round is scored. The challenge scores the single ``segs`` map a method writes,
so composing the classes (resolving overlaps) is the method's job: the model methods use the service's rule
(the most confident object wins, ``app.models.label_map``), the baselines, which have no confidences, paint
classes in ascending order (``paint_in_order``). Only the method's work is timed: opening the session
(encoding the volume) counts towards the first round that prompts, click simulation and scoring do not;
reading the label map back counts, as writing ``segs`` does in the challenge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.backends import Method
from evaluation.cases import BoxMode, CaseRef, EvalCase, load_case
from evaluation.click_rule import next_click
from evaluation.metrics import N_ROUNDS, NSD_TOLERANCE_MM, CaseResult, class_round_scores
from evaluation.region_rule import next_region


def run_case(
    method: Method,
    case: EvalCase,
    *,
    tolerance_mm: float = NSD_TOLERANCE_MM,
    clock: Callable[[], float] = time.perf_counter,
    prompts: str = "click",
) -> CaseResult:
    """Run the six rounds of one case with one method and score each round.

    ``prompts``: the corrections of rounds 2..6, "click" (the challenge's) or "scribble" / "lasso"
    (``evaluation.region_rule``, drawn where the challenge would click)."""
    gt = case.ground_truth
    prediction = np.zeros(gt.shape, dtype=gt.dtype)
    class_dsc: list[list[float]] = []  # per round, per class
    class_nsd: list[list[float]] = []
    times: list[float] = []
    n_clicks: list[int] = []

    started = clock()
    session = method.open(case.image, case.spacing)
    pending = clock() - started  # encoding time, charged to the first round that prompts
    try:
        if case.boxes is None:  # the official rule: no box prompt, round 1 scores 0
            class_dsc.append([0.0] * len(case.classes))
            class_nsd.append([0.0] * len(case.classes))
            times.append(0.0)
            n_clicks.append(0)
        else:
            started = clock()
            for c in case.classes:
                session.add_box(c, case.boxes[c])
            prediction = session.label_map(case.classes, gt.shape, gt.dtype)
            times.append(pending + clock() - started)
            pending = 0.0
            n_clicks.append(0)
            _score(case, prediction, tolerance_mm, class_dsc, class_nsd)

        for _ in range(N_ROUNDS - 1):
            if prompts == "click":
                clicks: dict[int, Any] = {c: next_click(prediction == c, gt == c) for c in case.classes}
            else:
                clicks = {c: next_region(prediction == c, gt == c, prompts) for c in case.classes}  # type: ignore[arg-type]
            started = clock()
            for c, click in clicks.items():
                if click is None:
                    continue
                if prompts == "click":
                    session.add_click(c, click)
                else:
                    session.add_region(c, click.flat, click.label)  # type: ignore[attr-defined]
            prediction = session.label_map(case.classes, gt.shape, gt.dtype)
            times.append(pending + clock() - started)
            pending = 0.0
            n_clicks.append(sum(click is not None for click in clicks.values()))
            _score(case, prediction, tolerance_mm, class_dsc, class_nsd)
    finally:
        session.close()

    return CaseResult(
        case_name=case.name,
        method=method.name,
        modality=case.modality,
        classes=list(case.classes),
        dsc=[float(np.mean(r)) for r in class_dsc],
        nsd=[float(np.mean(r)) for r in class_nsd],
        running_time=times,
        n_clicks=n_clicks,
        class_dsc=class_dsc,
        class_nsd=class_nsd,
    )


def _score(case: EvalCase, prediction: np.ndarray, tolerance_mm: float, class_dsc: list[list[float]],
           class_nsd: list[list[float]]) -> None:
    d, n = class_round_scores(case.ground_truth, prediction, case.classes, case.spacing, tolerance_mm)
    class_dsc.append(d)
    class_nsd.append(n)


def evaluate(
    methods: Sequence[Method],
    cases: Iterable[CaseRef | EvalCase],
    *,
    box_mode: BoxMode = "2d",
    min_voxels: int = 50,
    tolerance_mm: float = NSD_TOLERANCE_MM,
    progress: bool = True,
    on_result: Callable[[CaseResult], None] | None = None,
    prompts: str = "click",
) -> list[CaseResult]:
    """Run every method on every case (cases loaded one at a time), with a progress bar.

    Cases with no class of at least ``min_voxels`` voxels are skipped (nothing to score).
    """
    cases = list(cases)
    results: list[CaseResult] = []
    with tqdm(total=len(cases) * len(methods), disable=not progress, unit="run") as bar:
        for item in cases:
            case = item if isinstance(item, EvalCase) else load_case(item, box_mode=box_mode, min_voxels=min_voxels)
            if not case.classes:
                bar.update(len(methods))
                continue
            for method in methods:
                bar.set_description(f"{case.name} / {method.name}")
                result = run_case(method, case, tolerance_mm=tolerance_mm, prompts=prompts)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update(1)
    return results
