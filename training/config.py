"""Typed training configuration, loaded from a JSON file (unknown keys are an error, so typos fail early)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataConfig:
    """The data engine.

    Attributes:
        root: folder holding ``manifest.json`` and the ``train/`` split (relative to the working directory).
        cases: restrict to these train case ids (None = every train case).
        source_weights: relative frequency of each object source: "labelled", "synthetic", "pseudo",
            "synthseg" (a labelled object in an image drawn from its label map, ``training.synthseg``).
            Set a weight to 0 to switch a source off (for ablations).
        min_object_voxels: objects smaller than this are never used (the evaluation scores >= 50 voxels).
        component_prob: probability that a labelled object is one connected component of its label.
        npz_image_prob: probability to read the challenge's uint8 image (``case.npz``) instead of the NIfTI.
        zoom_out_prob: probability of a zoom-out view (whole foreground resized); else a zoom-in window
            (the paper mixes them 1:3).
        roi_view_prob: probability of an ROI view (the box grown by a margin drawn from
            [roi_margin_min, roi_margin_max] of its extent, resampled to the frame), as the predictor's
            ``zoom_in="resample"`` path sees a boxed object; else zoom-out / zoom-in as below. 0 = off.
        centre_on_voxel_prob: zoom-in windows are centred on a random object voxel with this probability,
            else on the object's box centre (SegVol's positive-weighted crops).
        mid_slice_box_prob: probability of the challenge's 2D mid-slice box instead of an exact 3D box.
        box_jitter: exact 3D boxes move each face by up to this fraction of the object's extent.
        flip_prob: SegVol: random flip per axis.
        intensity_prob / intensity_scale / intensity_shift: SegVol: random scale (1 +- s) and shift (+- o).
        synthetic_min_voxels / synthetic_max_voxels: log-uniform size range of synthetic lesions.
        compound_prob: probability that a synthetic draw is a compound lesion (``training.compound``: nested
            sub-regions, one of them the object) instead of a single blob.
        compound_min_voxels / compound_max_voxels: log-uniform envelope size range of compound lesions.
        pseudo_pool_size / pseudo_refresh_prob: pseudo-objects are kept in a pool; each draw replaces a
            pool entry with a fresh one with this probability (SLIC is too slow to run for every sample).
        small_object_prob: probability that a labelled or synthseg draw is a small object: one 26-connected
            component of a label with ``min_object_voxels`` to ``small_object_max_voxels`` voxels. 0 = off.
        nested_prob: probability that a labelled or synthseg draw is a nested target: the box is drawn over
            the object plus labels that touch it (``training.sources.composite_mask``), the object stays the
            target, and the simulated clicks have to tell them apart. 0 = off.
        synthseg_max_voxels: the "synthseg" source repaints a crop around its object; crops larger than this
            are subsampled by an integer stride first (the ROI view resamples to the frame anyway).
    """

    root: str = "../shared/data"
    cases: list[str] | None = None
    source_weights: dict[str, float] = field(
        default_factory=lambda: {"labelled": 0.4, "synthetic": 0.4, "pseudo": 0.2}
    )
    min_object_voxels: int = 50
    component_prob: float = 0.3
    npz_image_prob: float = 0.5
    zoom_out_prob: float = 0.25
    roi_view_prob: float = 0.0
    roi_margin_min: float = 0.15
    roi_margin_max: float = 0.5
    centre_on_voxel_prob: float = 0.75
    mid_slice_box_prob: float = 0.5
    box_jitter: float = 0.1
    flip_prob: float = 0.2
    intensity_prob: float = 0.2
    intensity_scale: float = 0.2
    intensity_shift: float = 0.2
    synthetic_min_voxels: int = 50
    synthetic_max_voxels: int = 60000
    compound_prob: float = 0.0
    compound_min_voxels: int = 500
    compound_max_voxels: int = 150000
    pseudo_pool_size: int = 64
    pseudo_refresh_prob: float = 0.25
    small_object_prob: float = 0.0
    small_object_max_voxels: int = 2000
    nested_prob: float = 0.0
    synthseg_max_voxels: int = 400_000


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        name: run name; checkpoints and logs go to ``run_dir``.
        model_config: a name registered in ``app.models.build``.
        seed: seeds python, numpy and torch (data and model).
        batch_size: samples per optimisation step.
        lr / weight_decay: AdamW.
        corrector_lr: AdamW learning rate of the GRU corrector.
        round_weights: relative weights of 0, 1, ... refinement rounds per sample (paper: [1,3,10,10,3,1]).
        stage1_minutes / stage1_steps: stage 1 (box loss only) lasts until either is reached.
        max_steps: stop after this many steps (None = no limit).
        max_minutes: stop after this much training time (None = no limit).
        deadline_utc: stop at this wall-clock time, ISO 8601 ("2026-11-29T21:12:00Z"), None = none.
        checkpoint_minutes: resumable checkpoint period.
        export_minutes: period of intermediate weight exports.
        run_dir: checkpoints, log file, loss curve.
        export_path: where the shipped weights are written when the run stops.
        init_weights: optional checkpoint (shipped format) to start from.
        num_threads: torch intra-op threads.
        sampling_tau / sampling_k / sampling_radius: the corrector's sampling (SPEC section 2).
        corrector_loss_weight: weight of the corrector's loss in the total.
        box_teacher_weight: with ``init_weights``, a frozen copy of the starting backbone answers the box round
            too and the student's box round is also pulled towards it (BCE to the teacher's probabilities,
            this weight); keeps what the start point does with a box while the click rounds learn. 0 = off.
        log_every: steps between log lines.
        max_consecutive_failures: a failing step (odd sample) is logged and skipped; this many in a row stop.
        grad_rounds: "all" back-propagates every refinement round (the paper); "last" only the box round and
            each sample's last round (intermediate decodes run without gradients; cheaper on a CPU).
        warmup_steps / min_lr_fraction: linear warm-up, then cosine decay to this fraction of the lr over
            the planned run (time limits, else max_steps).
        train_frames / train_frame_weights: frames to train at (None = the model's frame), drawn per step
            with these weights; only fully convolutional backbones accept frames other than their own.
    """

    name: str = "run"
    model_config: str = "compact"
    seed: int = 0
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    corrector_lr: float = 1e-3
    round_weights: list[float] = field(default_factory=lambda: [1, 3, 10, 10, 3, 1])
    stage1_minutes: float | None = None
    stage1_steps: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    deadline_utc: str | None = None
    checkpoint_minutes: float = 5.0
    export_minutes: float = 15.0
    run_dir: str = "runs/run"
    export_path: str | None = None
    init_weights: str | None = None
    num_threads: int = 2
    sampling_tau: float = 0.1
    sampling_k: int = 200
    sampling_radius: float = 4.0
    corrector_loss_weight: float = 1.0
    box_teacher_weight: float = 0.0
    log_every: int = 10
    grad_rounds: str = "all"
    max_consecutive_failures: int = 20
    warmup_steps: int = 20
    min_lr_fraction: float = 0.05
    train_frames: list[list[int]] | None = None
    train_frame_weights: list[float] | None = None
    data: DataConfig = field(default_factory=DataConfig)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a ``TrainConfig`` from a parsed JSON object; unknown keys raise ``ValueError``."""
    raw = dict(raw)
    data_raw = raw.pop("data", {})
    _check_keys("config", raw, TrainConfig)
    _check_keys("config.data", data_raw, DataConfig)
    cfg = TrainConfig(**raw, data=DataConfig(**data_raw))
    if cfg.box_teacher_weight < 0 or (cfg.box_teacher_weight > 0 and not cfg.init_weights):
        raise ValueError("box_teacher_weight: must be >= 0, and > 0 needs init_weights (the teacher)")
    for name in ("small_object_prob", "nested_prob"):
        value = getattr(cfg.data, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"data.{name}: must be in [0, 1], got {value}")
    if cfg.data.small_object_max_voxels < cfg.data.min_object_voxels:
        raise ValueError("data.small_object_max_voxels: must be >= data.min_object_voxels")
    if cfg.data.synthseg_max_voxels < 1:
        raise ValueError("data.synthseg_max_voxels: must be >= 1")
    if cfg.grad_rounds not in ("all", "last"):
        raise ValueError(f"grad_rounds: expected 'all' or 'last', got {cfg.grad_rounds!r}")
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a JSON config file."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"config: {path} must hold a JSON object")
    return config_from_dict(raw)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _check_keys(where: str, raw: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
