"""The registry of model configurations: the only place that holds model hyper-parameters (no torch import).

    cfg = get_model_config("compact")   # then app.models.build.build_backbone(cfg), build_corrector(cfg)

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

from dataclasses import dataclass, field
from typing import Any


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
