from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import DataConfig, TrainConfig, config_from_dict, load_config
from training.engine import DataEngine
from training.loop import Trainer, frame_view

FRAME = [8, 32, 32]


@pytest.fixture(scope="module")
def engine(data_root: Path) -> DataEngine:
    return DataEngine(DataConfig(root=str(data_root), pseudo_pool_size=2), np.random.default_rng(0))


def _config(tmp_path: Path, data_root: Path, **overrides: object) -> TrainConfig:
    raw = {
        "name": "test", "model_config": "compact", "batch_size": 2, "stage1_steps": 1, "max_steps": 3,
        "num_threads": 1, "run_dir": str(tmp_path / "run"), "export_path": str(tmp_path / "w" / "compact.pt"),
        "train_frames": [FRAME], "round_weights": [0, 0, 1], "log_every": 1,
        "data": {"root": str(data_root), "pseudo_pool_size": 2},
    }
    raw.update(overrides)
    return config_from_dict(raw)


def test_unknown_config_keys_fail(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^config: unknown keys"):
        config_from_dict({"lerning_rate": 1.0})
    with pytest.raises(ValueError, match="^config.data: unknown keys"):
        config_from_dict({"data": {"rooot": "x"}})


def test_shipped_configs_load() -> None:
    from app.models import get_model_config

    repo = Path(__file__).resolve().parents[2]
    paths = sorted((repo / "training" / "configs").rglob("*.json"))
    assert any("finetune" in p.parts for p in paths) and any("ablation" in p.parts for p in paths)
    for path in paths:
        cfg = load_config(path)
        assert get_model_config(cfg.model_config) and cfg.export_path, path
        if cfg.init_weights:  # a fine-tune starts from a checkpoint that ships in the repo
            assert (repo / cfg.init_weights).is_file(), path


def test_frame_view_shares_parameters() -> None:
    from app.models import build_backbone, get_model_config

    cfg = get_model_config("compact")
    backbone = build_backbone(cfg)
    small = frame_view(backbone, cfg.backbone_kwargs, tuple(FRAME))
    assert small.frame == tuple(FRAME) and backbone.frame == tuple(cfg.backbone_kwargs["frame"])
    assert all(a is b for a, b in zip(small.parameters(), backbone.parameters(), strict=True))
    out = small.decode(small.encode(torch.rand(1, 1, *FRAME)), boxes=torch.tensor([[1.0, 4, 4, 6, 20, 20]]))
    assert out.shape == (1, 1, *FRAME)


@pytest.mark.parametrize("stage", [1, 2])
def test_one_step_updates_both_models_with_finite_losses(
    tmp_path: Path, data_root: Path, engine: DataEngine, stage: int
) -> None:
    trainer = Trainer(_config(tmp_path, data_root), engine=engine)
    before = [p.detach().clone() for p in trainer.backbone.parameters()]
    corrector_before = [p.detach().clone() for p in trainer.corrector.parameters()]
    terms = trainer.train_step(trainer.draw_batch(tuple(FRAME)), stage=stage)
    assert all(np.isfinite(v) for v in terms.values())
    assert 0 < terms["box"] < 10
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.backbone.parameters(), strict=True))
    corrector_moved = any(
        not torch.equal(a, b) for a, b in zip(corrector_before, trainer.corrector.parameters(), strict=True)
    )
    if stage == 1:
        assert terms["rounds"] == 0 and terms["corrector"] == 0
    else:
        assert terms["rounds"] == 2 and corrector_moved  # the GRU is trained on the refinement rounds


def test_run_exports_loadable_weights_and_resume_restores_step_and_rng(
    tmp_path: Path, data_root: Path, engine: DataEngine
) -> None:
    from app.models import load_model

    cfg = _config(tmp_path, data_root, max_steps=2)
    first = Trainer(cfg, engine=engine)
    meta = first.run()
    rng_state = first.rng.bit_generator.state  # as checkpointed at the end of the run
    torch_state = torch.get_rng_state()
    assert meta["steps"] == 2 and meta["stop_reason"] == "max_steps"
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0
    sidecar = json.loads((tmp_path / "w" / "compact.json").read_text())
    assert sidecar["steps"] == 2 and sidecar["data"]["labelled_objects"] == 4
    backbone, corrector, report = load_model(tmp_path / "w" / "compact.pt")
    assert report.config == "compact" and corrector is not None
    for a, b in zip(backbone.state_dict().values(), first.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    resumed = Trainer(_config(tmp_path, data_root, max_steps=3), resume=True, engine=engine)
    assert resumed.progress.step == 2 and len(resumed.progress.history) == 2
    assert resumed.rng.bit_generator.state == rng_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    for a, b in zip(resumed.backbone.state_dict().values(), first.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.run()["steps"] == 3


def test_resume_without_checkpoint_fails(tmp_path: Path, data_root: Path, engine: DataEngine) -> None:
    with pytest.raises(FileNotFoundError, match="^resume: "):
        Trainer(_config(tmp_path, data_root), resume=True, engine=engine)


def test_box_teacher_is_the_frozen_start_point_and_pulls_the_box_round(
    tmp_path: Path, data_root: Path, engine: DataEngine
) -> None:
    with pytest.raises(ValueError, match="^box_teacher_weight"):
        _config(tmp_path, data_root, box_teacher_weight=1.0)  # a teacher needs init_weights
    start = Trainer(_config(tmp_path / "a", data_root, max_steps=1), engine=engine)
    start.run()  # exports the weights the next run starts from
    init = str(tmp_path / "a" / "w" / "compact.pt")

    plain = Trainer(_config(tmp_path / "b", data_root, init_weights=init), engine=engine)
    taught = Trainer(_config(tmp_path / "c", data_root, init_weights=init, box_teacher_weight=5.0), engine=engine)
    teacher = taught.teachers[tuple(FRAME)]
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    for trainer in (plain, taught):
        trainer.rng = np.random.default_rng(3)  # the same batch and rounds for both
    views = plain.draw_batch(tuple(FRAME))
    plain_terms = plain.train_step(views, stage=1)
    taught_terms = taught.train_step(views, stage=1)

    # Same start, same batch: the ground-truth box loss is the same, the total adds the teacher's pull.
    assert taught_terms["box"] == pytest.approx(plain_terms["box"], rel=1e-5)
    assert taught_terms["loss"] > plain_terms["loss"] + 1e-3
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, taught.backbone.parameters(), strict=True))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_roi_view_training_exports_weights_the_predictor_runs_resampled(
    tmp_path: Path, data_root: Path
) -> None:
    from app.models import build_predictor

    cfg = _config(tmp_path, data_root, max_steps=1,
                  data={"root": str(data_root), "pseudo_pool_size": 2, "roi_view_prob": 1.0})
    engine = DataEngine(cfg.data, np.random.default_rng(0))
    trainer = Trainer(cfg, engine=engine)
    assert all(v.kind == "roi" for v in trainer.draw_batch(tuple(FRAME)))
    meta = trainer.run()
    assert meta["inference"] == {"zoom_in": "resample", "roi_frame": FRAME}
    predictor = build_predictor("compact", weights=tmp_path / "w" / "compact.pt")
    assert predictor.resample and list(predictor.roi_frame) == FRAME
