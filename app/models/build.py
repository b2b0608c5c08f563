"""Builders: a backbone, a corrector, a whole predictor, of a registered configuration (``app.models.configs``).

    cfg = get_model_config("compact")
    backbone = build_backbone(cfg)
    corrector = build_corrector(cfg)
    predictor = build_predictor("compact", weights=None, device="cpu")
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from app.models.backbone import Backbone
from app.models.configs import DEFAULT_CONFIG, ModelConfig, get_model_config
from app.models.weights import (
    LoadReport,
    PathLike,
    load_checkpoint,
    load_into,
    read_checkpoint,
    resolve_config_name,
)

if TYPE_CHECKING:
    from app.models.predictor import Predictor
    from app.models.predictor_config import PredictorConfig


def build_backbone(cfg: ModelConfig | str, *, with_text: bool = False) -> Backbone:
    """Instantiate the backbone of a configuration (random init; load weights separately)."""
    cfg = get_model_config(cfg) if isinstance(cfg, str) else cfg
    if cfg.backbone == "segvol":
        from app.models.segvol import SegVol

        return SegVol(**cfg.backbone_kwargs, with_text=with_text)
    if cfg.backbone == "compact":
        from app.models.compact import CompactBackbone

        return CompactBackbone(**cfg.backbone_kwargs)
    raise ValueError(f"config: unknown backbone family {cfg.backbone!r}")


def build_corrector(cfg: ModelConfig | str) -> torch.nn.Module:
    """Instantiate the GRU corrector of a configuration (random init)."""
    from app.models.corrector import GRUCorrector

    cfg = get_model_config(cfg) if isinstance(cfg, str) else cfg
    return GRUCorrector(**cfg.corrector_kwargs)


def load_model(
    path: PathLike,
    config_name: str | None = None,
    *,
    with_text: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, nn.Module | None, LoadReport]:
    """Build the config a checkpoint is for and load it: (backbone, corrector or None, report).

    The config is ``config_name`` if given, else the one the file declares, else ``segvol-base``
    (the published SegVol checkpoints). The corrector is built only when the file holds one.
    """
    ckpt = read_checkpoint(path)
    name = resolve_config_name(ckpt, config_name)
    cfg = get_model_config(name)
    backbone = build_backbone(cfg, with_text=with_text)
    corrector = build_corrector(cfg) if ckpt.corrector is not None else None
    report = load_checkpoint(ckpt, backbone, corrector, config_name=name)
    backbone.to(device)
    if corrector is not None:
        corrector.to(device)
    return backbone, corrector, report


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_weights_path(config_name: str) -> Path:
    """Where the repo ships the weights of a configuration (``app/models/weights/<config>.pt``)."""
    return WEIGHTS_DIR / f"{config_name}.pt"


def frame_view(backbone: Backbone, model_kwargs: dict[str, Any], frame: Sequence[int], field: str = "frame",
               ) -> Backbone:
    """The same backbone (shared parameters) set up for another input frame.

    Only for fully convolutional backbones: a fresh instance built for ``frame`` supplies the frame-dependent
    plain attributes (frame, scale sizes, ...); the parameters and submodules stay the shared ones. Training
    uses it for its smaller frames, the predictor for ``roi_frame``; ``field`` names the setting in the error
    raised for a backbone that only takes its own frame.
    """
    if tuple(frame) == tuple(backbone.frame):
        return backbone
    if not backbone.any_frame:
        raise ValueError(f"{field}: {list(frame)} differs from the frame {list(backbone.frame)} of a "
                         f"{type(backbone).__name__}, which only takes its own (not fully convolutional)")
    probe = type(backbone)(**{**model_kwargs, "frame": tuple(frame)})
    view = copy.copy(backbone)  # shares _parameters / _modules dicts with the original
    for name, value in vars(probe).items():
        if not name.startswith("_") and name != "training" and not isinstance(value, (nn.Module, torch.Tensor)):
            object.__setattr__(view, name, value)
    return view


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> the first CUDA device when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_predictor(
    config: str = DEFAULT_CONFIG,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    predictor_config: PredictorConfig | None = None,
    *,
    with_text: bool = False,
    init_seed: int = 0,
) -> Predictor:
    """A ready predictor for a registered configuration.

    Args:
        config: registry name.
        weights: "default" = the weights shipped in the repo for ``config`` (an error if none are);
            a path = that checkpoint (published SegVol layouts or ours); None = random initialisation,
            seeded with ``init_seed`` so that two processes build the same model (tests, benchmarks).
        device: "cpu", "cuda:0", ... or "auto".
    """
    from app.models.predictor import Predictor

    cfg = get_model_config(config)
    dev = resolve_device(device)
    meta: dict[str, Any] = {}
    if weights is None:
        rng = torch.random.get_rng_state()
        torch.manual_seed(init_seed)
        try:
            backbone, corrector = build_backbone(cfg, with_text=with_text), build_corrector(cfg)
        finally:
            torch.random.set_rng_state(rng)
    else:
        path = default_weights_path(cfg.name) if str(weights) == "default" else Path(weights)
        if not path.is_file():
            hint = " (none are shipped for this config yet)" if str(weights) == "default" else ""
            raise FileNotFoundError(f"weights: no checkpoint at {path}{hint}; pass a checkpoint path, "
                                    "or weights=None for a randomly initialised model")
        backbone, corrector = build_backbone(cfg, with_text=with_text), build_corrector(cfg)
        meta = load_into(path, cfg, backbone, corrector, with_text=with_text).meta
    pcfg = resolve_inference(predictor_config, meta, default=cfg.default_zoom_in)
    roi_backbone = None
    if pcfg.zoom_in == "resample" and pcfg.roi_frame is not None:
        with torch.random.fork_rng(devices=[]):  # the probe's random init must not move the caller's stream
            roi_backbone = frame_view(backbone, cfg.backbone_kwargs, pcfg.roi_frame, "roi_frame")
    return Predictor(backbone, corrector, pcfg, device=dev, config_name=cfg.name, roi_backbone=roi_backbone)


def resolve_inference(config: PredictorConfig | None, meta: dict[str, Any], default: str = "windows",
                      ) -> PredictorConfig:
    """Resolve ``zoom_in="auto"`` / ``roi_frame=None`` from the weights' metadata (``meta["inference"]``).

    Weights trained on resampled ROI views (``training`` writes ``{"zoom_in": "resample", "roi_frame": [...]}``)
    must be run that way; weights without that metadata (the published SegVol weights, ours trained on
    windows) get ``default``: the configuration's ``default_zoom_in`` ("segvol" for ``segvol-base``).
    """
    from dataclasses import replace

    from app.models.predictor_config import PredictorConfig

    config = config or PredictorConfig()
    inference = meta.get("inference") or {}
    if not isinstance(inference, dict):
        raise ValueError("weights: meta 'inference' must be a dict")
    zoom_in = config.zoom_in if config.zoom_in != "auto" else str(inference.get("zoom_in", default))
    roi_frame = config.roi_frame
    if roi_frame is None and inference.get("roi_frame") is not None:
        roi_frame = tuple(int(v) for v in inference["roi_frame"])
    return replace(config, zoom_in=zoom_in, roi_frame=roi_frame)
