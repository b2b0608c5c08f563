"""SegVol's optional, frozen text branch: a CLIP text model + a Linear to the prompt width.

Built from a ``CLIPTextConfig`` (never downloaded; weights come from a SegVol checkpoint). Tokenising
text needs CLIP's tokenizer files, which this project does not ship: callers pass token ids.
``transformers`` is imported lazily so that the rest of the model runs without it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_POSITIONS = 77
CLIP_HEADS = 8


def _clip_text_model(hidden_size: int, num_layers: int) -> Any:
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "with_text: the SegVol text branch needs the 'transformers' package "
            "(pip install 'segvol-interactive[text]'); build the model with with_text=False otherwise"
        ) from exc
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=CLIP_MAX_POSITIONS,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=CLIP_HEADS,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config)


class TextEncoder(nn.Module):
    """Token ids (B, L) -> aligned text embedding (B, out_dim): CLIP's pooled output, then ``dim_align``.

    Args:
        text_hidden_size: CLIP width (512 for SegVol).
        text_layers: CLIP depth (12 for SegVol).
        out_dim: prompt-token width (the image encoder's hidden size).
    """

    def __init__(self, text_hidden_size: int, text_layers: int, out_dim: int) -> None:
        super().__init__()
        self.clip_text_model = _clip_text_model(text_hidden_size, text_layers)
        self.dim_align = nn.Linear(text_hidden_size, out_dim)
        for param in self.clip_text_model.parameters():  # frozen, as in SegVol
            param.requires_grad = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids, attention_mask: (B, L) long, L <= 77 -> (B, out_dim)."""
        pooled = self.clip_text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.dim_align(pooled)
