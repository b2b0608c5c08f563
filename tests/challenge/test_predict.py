"""The challenge entry point through all six rounds, each in a fresh process, exactly as the evaluator runs it.

Round 1 gets the boxes; rounds 2..6 add one click per class from the official click rule on the previous
output, with ``clicks``/``clicks_order``/``prev_pred`` stored the way the evaluator stores them. Every replayed
round must equal, bit for bit, the same prompts sent to one session kept alive across the rounds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from challenge.case import read_case
from challenge.predict import SESSION_SEED, replay_case, write_segs
from evaluation.cases import box_from_challenge, box_from_mask
from evaluation.click_rule import Click, next_click

REPO = Path(__file__).resolve().parents[2]
SHAPE = (24, 40, 44)
N_ROUNDS = 6
MODEL_ARGS = ["--config", "segvol-test", "--weights", "none", "--device", "cpu"]


def _ground_truth() -> np.ndarray:
    zz, yy, xx = np.indices(SHAPE)
    gt = np.zeros(SHAPE, dtype=np.uint8)
    gt[4:12, 6:20, 8:22] = 1
    gt[(zz - 15) ** 2 + ((yy - 26) / 1.5) ** 2 + ((xx - 28) / 1.5) ** 2 <= 36] = 2
    return gt


def _image(gt: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, 8, gt.shape)
    return np.clip(40 + 70 * gt + noise, 0, 255).astype(np.uint8)


def _challenge_box(mask: np.ndarray) -> dict[str, np.int64]:
    """The challenge's box dict: z extent of the object, 2D box of its middle slice (x = last axis)."""
    z0, _, _, z1, _, _ = box_from_mask(mask)
    z_mid = (z0 + z1) // 2
    _, y0, x0, _, y1, x1 = box_from_mask(mask[z_mid : z_mid + 1])
    values = dict(z_min=z0, z_max=z1, z_mid=z_mid, z_mid_x_min=x0, z_mid_y_min=y0, z_mid_x_max=x1, z_mid_y_max=y1)
    return {k: np.int64(v) for k, v in values.items()}


class _Evaluator:
    """Keeps one case's input file up to date between rounds, like the official script."""

    def __init__(self, path: Path, image: np.ndarray, gt: np.ndarray, with_boxes: bool):
        self.path, self.image, self.gt = path, image, gt
        self.classes = [int(c) for c in np.unique(gt) if c != 0]
        self.boxes = [_challenge_box(gt == c) for c in self.classes] if with_boxes else None
        self.clicks: list[dict[str, list[list[np.int64]]]] = [{"fg": [], "bg": []} for _ in self.classes]
        self.order: list[list[str]] = [[] for _ in self.classes]
        self.history: list[list[Click | None]] = []  # per click round, per class
        extra = {"boxes": self.boxes} if self.boxes is not None else {}
        # The evaluator writes the spacing in (x, y, z) order.
        np.savez_compressed(path, imgs=image, spacing=np.array([0.8, 0.8, 2.5]), **extra)

    def add_clicks(self, prev_pred: np.ndarray) -> None:
        row: list[Click | None] = []
        for i, c in enumerate(self.classes):
            click = next_click(prev_pred == c, self.gt == c)
            row.append(click)
            if click is not None:
                kind = "fg" if click.is_foreground else "bg"
                self.clicks[i][kind].append([np.int64(v) for v in click.point])
                self.order[i].append(kind)
        self.history.append(row)
        extra = {"boxes": self.boxes} if self.boxes is not None else {}
        np.savez_compressed(self.path, imgs=self.image, spacing=np.array([0.8, 0.8, 2.5]), clicks=self.clicks,
                            clicks_order=self.order, prev_pred=prev_pred, **extra)


def _run_round(inputs: Path, outputs: Path, round_index: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUTF8="1")
    if round_index == 0:  # the evaluator's own command line: `sh predict.sh`, folders from the environment
        env.update(CHALLENGE_INPUTS=str(inputs), CHALLENGE_OUTPUTS=str(outputs), PYTHON=sys.executable)
        cmd = ["sh", str(REPO / "predict.sh"), *MODEL_ARGS]
    else:
        cmd = [sys.executable, "-m", "challenge", "--inputs", str(inputs), "--outputs", str(outputs), *MODEL_ARGS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _live_session_rounds(predictor, evaluator: _Evaluator) -> list[np.ndarray]:  # noqa: ANN001
    """The same prompts sent round by round to one session that lives through all six rounds."""
    state = predictor.init_state(evaluator.image, (2.5, 0.8, 0.8), seed=SESSION_SEED)
    rounds = []
    if evaluator.boxes is not None:
        for i in range(len(evaluator.classes)):
            predictor.add_box(state, i + 1, list(box_from_challenge(evaluator.boxes[i])))
    rounds.append(predictor.get_label_map(state, sorted(state.objects)))
    for row in evaluator.history:
        for i, click in enumerate(row):
            if click is not None:
                predictor.add_clicks(state, i + 1, [list(click.point)], [click.label], mode="both")
        rounds.append(predictor.get_label_map(state, sorted(state.objects)))
    return rounds


@pytest.mark.slow
def test_six_rounds_in_fresh_processes_match_a_live_session(tmp_path: Path, service_predictor) -> None:  # noqa: ANN001
    gt = _ground_truth()
    image = _image(gt)
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    cases = {
        "CT_boxed": _Evaluator(inputs / "CT_boxed.npz", image, gt, with_boxes=True),
        "MR_clicks_only": _Evaluator(inputs / "MR_clicks_only.npz", image, gt, with_boxes=False),
    }
    answers: dict[str, list[np.ndarray]] = {name: [] for name in cases}
    for round_index in range(N_ROUNDS):
        if round_index > 0:
            for name, evaluator in cases.items():
                evaluator.add_clicks(answers[name][-1])
        _run_round(inputs, outputs, round_index)
        for name in cases:
            with np.load(outputs / f"{name}.npz") as npz:
                assert npz.files == ["segs"]
                segs = npz["segs"]
            assert segs.shape == SHAPE and segs.dtype == np.uint8
            assert set(np.unique(segs).tolist()) <= {0, 1, 2}
            answers[name].append(segs)

    boxed, clicks_only = answers["CT_boxed"], answers["MR_clicks_only"]
    assert boxed[0].any(), "the boxes produced no mask"
    assert not clicks_only[0].any(), "a case without boxes has nothing to answer in round 1"
    assert clicks_only[1].any(), "the first clicks did not start the objects"
    # Every click round placed a click for each class (a random model never gets a class perfect).
    for evaluator in cases.values():
        assert all(len(order) == N_ROUNDS - 1 for order in evaluator.order)

    for name, evaluator in cases.items():
        live = _live_session_rounds(service_predictor, evaluator)
        for round_index in range(N_ROUNDS):
            np.testing.assert_array_equal(answers[name][round_index], live[round_index],
                                          err_msg=f"{name}: round {round_index + 1} differs from a live session")


def test_read_case_orders_clicks_and_reverses_spacing(tmp_path: Path) -> None:
    gt = _ground_truth()
    boxes = [_challenge_box(gt == 1), _challenge_box(gt == 2)]
    clicks = [{"fg": [[5, 7, 9], [6, 8, 10]], "bg": [[1, 2, 3]]}, {"fg": [], "bg": []}]
    order = np.empty(2, dtype=object)  # ragged per-class lists, as an object array
    order[0], order[1] = ["fg", "bg", "fg"], []
    path = tmp_path / "case.npz"
    np.savez_compressed(path, imgs=_image(gt), spacing=np.array([0.8, 0.7, 2.5]), boxes=boxes, clicks=clicks,
                        clicks_order=order)
    case = read_case(path)
    assert case.name == "case" and case.spacing == (2.5, 0.7, 0.8)
    assert case.prompts[0].box == box_from_challenge(boxes[0])
    assert case.prompts[0].clicks == (Click((5, 7, 9), 1), Click((1, 2, 3), 0), Click((6, 8, 10), 1))
    assert case.prompts[1].clicks == ()
    assert read_case(path, spacing_order="zyx").spacing == (0.8, 0.7, 2.5)


def test_read_case_accepts_the_evaluators_round_two_layout(tmp_path: Path) -> None:
    """No boxes, one click per class: clicks_order is then stored as a 2D string array."""
    clicks = [{"fg": [[1, 2, 3]], "bg": []}, {"fg": [], "bg": [[4, 5, 6]]}]
    path = tmp_path / "case.npz"
    np.savez_compressed(path, imgs=np.zeros((4, 8, 8), np.uint8), spacing=np.ones(3), clicks=clicks,
                        clicks_order=[["fg"], ["bg"]], prev_pred=np.zeros((4, 8, 8), np.uint8))
    case = read_case(path)
    assert [p.box for p in case.prompts] == [None, None]
    assert [p.clicks for p in case.prompts] == [(Click((1, 2, 3), 1),), (Click((4, 5, 6), 0),)]


@pytest.mark.parametrize(
    ("clicks", "order", "message"),
    [
        ([{"fg": [[1, 2, 3]], "bg": []}], [["fg", "fg"]], "clicks_order: entry 0 lists more 'fg'"),
        ([{"fg": [[1, 2, 3]], "bg": [[1, 1, 1]]}], [["fg"]], "clicks_order: entry 0 leaves clicks unordered"),
        ([{"fg": [[1, 2, 3]], "bg": []}], [["up"]], "clicks_order: entry 0 holds 'up'"),
        ([{"fg": [[1, 2]], "bg": []}], [["fg"]], "clicks[0]['fg']: expected a [z, y, x]"),
        ([{"fg": [[1, 2, 3]], "bg": []}], None, "clicks_order: missing"),
    ],
)
def test_read_case_rejects_inconsistent_clicks(tmp_path: Path, clicks, order, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "bad.npz"
    extra = {"clicks_order": np.array(order)} if order is not None else {}
    np.savez_compressed(path, imgs=np.zeros((4, 8, 8), np.uint8), spacing=np.ones(3), clicks=clicks, **extra)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_case(path)


def test_replay_sends_mixed_clicks_in_clicks_order(tmp_path: Path, service_predictor) -> None:  # noqa: ANN001
    """fg and bg clicks interleaved: the replay equals a live session that got them in ``clicks_order``.

    GRU mode, because the order matters there (each step updates the previous logits and hidden state).
    """
    gt = _ground_truth()
    box = _challenge_box(gt == 1)
    fg, bg = [[6, 10, 12], [9, 15, 18]], [[5, 18, 20]]
    path = tmp_path / "case.npz"
    np.savez_compressed(path, imgs=_image(gt), spacing=np.ones(3), boxes=[box],
                        clicks=[{"fg": fg, "bg": bg}], clicks_order=[["fg", "bg", "fg"]])
    segs = replay_case(service_predictor, read_case(path), mode="gru")

    p = service_predictor
    state = p.init_state(_image(gt), (1.0, 1.0, 1.0), seed=SESSION_SEED)
    p.add_box(state, 1, list(box_from_challenge(box)))
    for point, label in ((fg[0], 1), (bg[0], 0), (fg[1], 1)):
        p.add_clicks(state, 1, [point], [label], mode="gru")
    np.testing.assert_array_equal(segs, p.get_mask(state, 1))


def test_invalid_box_falls_back_to_the_clicks(tmp_path: Path, service_predictor, caplog) -> None:  # noqa: ANN001
    """One bad prompt costs only itself: the class starts from its click, the other class keeps its box."""
    gt = _ground_truth()
    good = _challenge_box(gt == 2)
    bad = dict(_challenge_box(gt == 1), z_max=np.int64(SHAPE[0] + 5))  # beyond the volume
    path = tmp_path / "case.npz"
    np.savez_compressed(path, imgs=_image(gt), spacing=np.ones(3), boxes=[bad, good],
                        clicks=[{"fg": [[8, 12, 14]], "bg": []}, {"fg": [], "bg": []}],
                        clicks_order=np.array([["fg"], []], dtype=object))
    with caplog.at_level("WARNING", logger="challenge"):
        segs = replay_case(service_predictor, read_case(path))
    assert "class 1: box" in caplog.text and "ignored" in caplog.text

    p = service_predictor
    state = p.init_state(_image(gt), (1.0, 1.0, 1.0), seed=SESSION_SEED)
    p.add_clicks(state, 1, [[8, 12, 14]], [1], mode="both")
    p.add_box(state, 2, list(box_from_challenge(good)))
    expected = p.get_label_map(state, [1, 2])
    np.testing.assert_array_equal(segs, expected)


def test_outputs_get_ordinary_file_permissions(tmp_path: Path) -> None:
    """An output is readable by the evaluator like any new file (0666 less the umask), not 0600."""
    old_umask = os.umask(0o022)
    try:
        out = tmp_path / "outputs" / "case_001.npz"
        write_segs(out, np.ones((2, 3, 4), dtype=np.uint8))
    finally:
        os.umask(old_umask)
    assert out.stat().st_mode & 0o777 == 0o644
    with np.load(out) as npz:
        assert npz["segs"].shape == (2, 3, 4)
    assert [p.name for p in out.parent.iterdir()] == ["case_001.npz"]  # no temporary file left behind
