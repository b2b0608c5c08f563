"""``segvol-base`` gives SegVol's masks: every stage checked against outputs of SegVol's own reference code.

Fixtures (``tests/fixtures/segvol_parity/``, see its README): SegVol's reference code (BAAI-DCAI/SegVol @
5768c97, MONAI 0.9.0) run on a real CT, stored RAS and LPS, with a random checkpoint in the published layout
that ``make_parity_ckpt.py`` regenerates bit for bit; per case the zoom-out prompts and logits, the zoom-in
region, each window's position, prompt and logits, and the final mask on the file's grid.

Tolerances: prompts, region and windows exact; logits within 1e-4 (plus the float16 rounding of the stored
window logits); final-mask Dice >= 0.999. One full case runs by default; the others are ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from app.models import Predictor, SessionState, build_predictor
from app.models.segvol_inference import SegVolPrompt, SegVolTrace, segment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segvol_parity"
CASES = json.loads((FIXTURES / "cases.json").read_text())
IMAGES = {"RAS": "image_ras.nii.gz", "LPS": "image_lps.nii.gz"}
NO_TEXT_DIGEST = "9e56a584b83b4bc6b3d913dce30be6f3e12ac46f8970d508c98b6d2baa483f8b"  # fixtures README
LOGIT_TOL = 1e-4
FP16_REL = 2.0**-10  # float16 keeps 11 significant bits: rounding error <= 2^-11 of the value, with slack


def _load_ckpt_script():  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location("make_parity_ckpt", FIXTURES / "make_parity_ckpt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """segvol-base with the regenerated parity checkpoint (no text branch: these prompts never use it)."""
    script = _load_ckpt_script()
    ckpt = script.build(CASES["checkpoint"]["seed"], with_text=False, tsv=str(FIXTURES.parent / "segvol_state_dict.tsv"))
    assert script.tensor_digest(ckpt["model"]) == NO_TEXT_DIGEST  # the fixtures' checkpoint, bit for bit
    path = tmp_path_factory.mktemp("parity") / "segvol_parity.pth"
    torch.save(ckpt, path)
    del ckpt
    predictor = build_predictor("segvol-base", weights=path)
    path.unlink()
    assert predictor.config.zoom_in == "segvol"  # the default for segvol-base without inference metadata
    return predictor


class _Sessions(dict):
    """One session per stored image, opened on first use and shared by its cases (embeddings are cached)."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor

    def __missing__(self, code: str) -> SessionState:
        image = sitk.ReadImage(str(FIXTURES / IMAGES[code]))
        self[code] = self.predictor.init_state(sitk.GetArrayFromImage(image), image.GetSpacing()[::-1])
        return self[code]


@pytest.fixture(scope="module")
def sessions(predictor: Predictor) -> dict[str, SessionState]:
    return _Sessions(predictor)


def _prompt(case: dict) -> SegVolPrompt:
    box = tuple(case["box_zyx_inclusive"]) if case["box_zyx_inclusive"] is not None else None
    if case["point_zyx"] is None:
        return SegVolPrompt(box=box)
    return SegVolPrompt(box=box, points=np.array([case["point_zyx"]], np.int64), labels=np.array([1], np.int64))


def _upsampled(lowres: np.ndarray, frame: tuple[int, int, int]) -> torch.Tensor:
    """The reference's own upsampling of decoder logits (trilinear, align_corners=False)."""
    t = torch.from_numpy(np.asarray(lowres, np.float32))[None, None]
    return F.interpolate(t, size=frame, mode="trilinear", align_corners=False)[0, 0]


def _assert_logits_close(ours: torch.Tensor, lowres: np.ndarray, frame: tuple[int, int, int], what: str) -> None:
    """|ours - reference| <= 1e-4 + the stored values' float16 rounding, voxel by voxel.

    Trilinear weights are non-negative and sum to 1, so a bound on the low-resolution logits carries over to
    the upsampled ones with the interpolated |reference| as its scale.
    """
    ref = _upsampled(lowres, frame)
    scale = _upsampled(np.abs(lowres.astype(np.float32)), frame) if lowres.dtype == np.float16 else None
    tol = LOGIT_TOL + (FP16_REL * scale if scale is not None else 0.0)
    excess = ((ours.float().cpu() - ref).abs() - tol).max().item()
    assert excess <= 0, f"{what}: logits differ by up to {excess:.2e} beyond the tolerance"


def _sorted_points(points: list | None) -> list | None:
    return None if points is None else sorted(tuple(p) for p in points)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _check_case(name: str, predictor: Predictor, sessions: dict[str, SessionState]) -> None:
    case = CASES["cases"][name]
    ref = np.load(FIXTURES / f"{name}.npz")
    state = sessions[case["file_axcodes"]]
    frame = predictor.frame
    assert list(state.crop) == case["reference_crop_zyx_half_open"]

    trace = SegVolTrace()
    prompt = _prompt(case)
    segment(predictor.backbone, state.image[0, 0], state.crop, state.zoom_out_embedding, prompt,
            cache=state.window_cache, trace=trace)

    # zoom-out: prompts exact, logits close
    assert (list(trace.frame_box) if trace.frame_box is not None else None) == case["zoom_out_box"]
    assert (trace.frame_points.tolist() if trace.frame_points is not None else None) == case["zoom_out_points"]
    if case["zoom_out_point_labels"] is not None:
        assert trace.frame_labels.tolist() == case["zoom_out_point_labels"]
    _assert_logits_close(trace.zoom_out_logits, ref["zoom_out_lowres_logits"], frame, "zoom-out")

    # zoom-in: region, windows and their prompts exact, window logits close
    assert list(trace.region) == case["roi_zyx_half_open"]
    assert len(trace.windows) == len(case["windows"])
    for i, (ours, theirs) in enumerate(zip(trace.windows, case["windows"], strict=True)):
        assert list(ours.bounds) == theirs["bounds_zyx_half_open"], f"window {i}"
        assert list(ours.box) == theirs["box"], f"window {i}"
        # The decoder does not depend on the order of its point tokens; the reference's order is a random draw.
        assert _sorted_points(ours.points) == _sorted_points(theirs.get("points")), f"window {i}"
        assert sorted(ours.point_labels or []) == sorted(theirs.get("point_labels") or []), f"window {i}"
        _assert_logits_close(ours.logits, ref["window_lowres_logits"][i], frame, f"window {i}")

    # the final mask on the file's grid, through the predictor's public verbs
    if prompt.box is not None:
        predictor.add_box(state, 1, prompt.box)
    if len(prompt.points):
        predictor.add_clicks(state, 1, prompt.points, prompt.labels, mode="decoder")
    mask = predictor.get_mask(state, 1).astype(bool)
    predictor.remove_object(state, 1)
    expected = np.unpackbits(ref["final_mask"])[: mask.size].reshape(mask.shape).astype(bool)
    assert int(expected.sum()) == case["final_voxels"]
    assert _dice(mask, expected) >= 0.999


# Seven 32x256x256 ViT passes (about a minute on 2 free cores): room for a loaded CI machine.
@pytest.mark.timeout(1800)
def test_box_plus_point_matches_segvol(predictor: Predictor, sessions: dict[str, SessionState]) -> None:
    """Box + point: zoom-out with both prompts, zoom-in through SegVol's point branch (its fullest path)."""
    _check_case("ras-box+point", predictor, sessions)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", ["ras-box", "ras-point", "lps-box"])
def test_other_cases_match_segvol(name: str, predictor: Predictor, sessions: dict[str, SessionState]) -> None:
    _check_case(name, predictor, sessions)
