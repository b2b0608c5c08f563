"""Builders + registry: the only place that holds model hyper-parameters.

    cfg = get_model_config("compact")
    backbone = build_backbone(cfg)
    corrector = build_corrector(cfg)
    predictor = build_predictor("compact", weights=None, device="cpu")

Registered configurations:
    segvol-base   the published SegVol dimensions (ViT-B/16 on a 32x256x256 frame); load the official weights
                  with ``--weights PATH --config segvol-base``.
    segvol-test   the same architecture shrunk so that tests run it end to end in seconds (never shipped).
    segvol-small  a small SegVol ViT on the compact frame: the second compact design, trained for the comparison
                  in ``docs/model-card.md`` (no weights shipped).
    compact       the shipped CPU default: a convolutional encoder whose cached multi-scale features feed a
                  decoder that takes the prompt maps at every scale (``app.models.compact``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from app.models.backbone import Backbone

if TYPE_CHECKING:
    from app.models.predictor import Predictor, PredictorConfig


@dataclass(frozen=True)
class ModelConfig:
    """One registered configuration: a backbone family with its hyper-parameters plus the corrector's."""

    name: str
    backbone: str  # "segvol" | "compact"
    backbone_kwargs: dict[str, Any]
    corrector_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # What ``zoom_in="auto"`` runs when the weights' metadata names no inference path.
    default_zoom_in: str = "windows"


# The paper's corrector: 8-d point features, one recurrent state carried across rounds. recurrence="rounds" makes
# each interaction round ONE GRU step (on the pooled point embeddings) instead of a serial pass over the 2K
# points ("points"): the hidden state is then exactly the per-round interaction memory, and a click costs ~1 ms
# of corrector time instead of ~15-30 ms on a CPU.
_CORRECTOR = dict(in_features=8, embed_dim=64, hidden_size=128, num_layers=1, max_offset=2.0, use_offsets=True,
                  recurrence="rounds")

MODEL_CONFIGS: dict[str, ModelConfig] = {
    "segvol-base": ModelConfig(
        name="segvol-base",
        backbone="segvol",
        backbone_kwargs=dict(
            frame=(32, 256, 256),
            patch_size=(4, 16, 16),
            hidden_size=768,
            mlp_dim=3072,
            num_layers=12,
            num_heads=12,
            decoder_depth=2,
            decoder_mlp_dim=2048,
            decoder_heads=8,
            num_multimask_outputs=3,
            iou_head_hidden_dim=256,
            text_hidden_size=512,
            text_layers=12,
        ),
        corrector_kwargs=dict(_CORRECTOR),
        description="SegVol ViT-B (published dimensions), weight-compatible with BAAI/SegVol.",
        # The published weights give SegVol's masks only through SegVol's own inference (docs/segvol-parity.md).
        default_zoom_in="segvol",
    ),
    "segvol-test": ModelConfig(
        name="segvol-test",
        backbone="segvol",
        backbone_kwargs=dict(
            frame=(16, 64, 64),
            patch_size=(4, 16, 16),
            hidden_size=48,
            mlp_dim=96,
            num_layers=2,
            num_heads=4,
            decoder_depth=2,
            decoder_mlp_dim=64,
            decoder_heads=4,
            num_multimask_outputs=3,
            iou_head_hidden_dim=32,
            text_hidden_size=32,
            text_layers=1,
        ),
        corrector_kwargs=dict(_CORRECTOR, embed_dim=16, hidden_size=32),
        description="Tiny SegVol for tests only.",
    ),
    "segvol-small": ModelConfig(
        name="segvol-small",
        backbone="segvol",
        backbone_kwargs=dict(
            frame=(32, 128, 128),
            patch_size=(4, 16, 16),
            hidden_size=192,
            mlp_dim=768,
            num_layers=6,
            num_heads=6,
            decoder_depth=2,
            decoder_mlp_dim=512,
            decoder_heads=4,
            num_multimask_outputs=3,
            iou_head_hidden_dim=64,
            text_hidden_size=192,
            text_layers=1,
            # Trained from scratch: points are encoded like the dense grid they lie in (the published
            # quirk maps y to 4x its range on this frame and the box never meets the image's PE).
            reference_point_normalisation=False,
        ),
        corrector_kwargs=dict(_CORRECTOR),
        description="A small SegVol ViT (the compact backbone's frame, 8x8x8 tokens): the second compact design "
        "trained for comparison (docs/model-card.md); no weights shipped.",
    ),
    "compact": ModelConfig(
        name="compact",
        backbone="compact",
        backbone_kwargs=dict(
            frame=(32, 128, 128),
            channels=(16, 32, 64, 128),
            strides=((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
            encoder_blocks=(1, 2, 2, 2),
            decoder_channels=(8, 16, 32, 64),
            click_sigma=(1.0, 2.0, 2.0),
            refine_channels=4,
            norm="instance",
        ),
        corrector_kwargs=dict(_CORRECTOR),
        description="Convolutional encoder + prompt-map decoder; the CPU default shipped with weights.",
    ),
}

DEFAULT_CONFIG = "compact"


def get_model_config(name: str) -> ModelConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"config: unknown model config {name!r}; known: {sorted(MODEL_CONFIGS)}") from None


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
        from app.models.weights import load_into

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

    from app.models.predictor import PredictorConfig

    config = config or PredictorConfig()
    inference = meta.get("inference") or {}
    if not isinstance(inference, dict):
        raise ValueError("weights: meta 'inference' must be a dict")
    zoom_in = config.zoom_in if config.zoom_in != "auto" else str(inference.get("zoom_in", default))
    roi_frame = config.roi_frame
    if roi_frame is None and inference.get("roi_frame") is not None:
        roi_frame = tuple(int(v) for v in inference["roi_frame"])
    return replace(config, zoom_in=zoom_in, roi_frame=roi_frame)
