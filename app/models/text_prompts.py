"""SegVol's text prompt: an object's name CLIP-encoded once per name and kept for the predictor's lifetime."""

from __future__ import annotations

import torch

from app.models.backbone import Backbone
from app.models.clip_tokenizer import tokenize

TEXT_CACHE_NAMES = 256  # text embeddings kept per predictor (3 KB each for segvol-base)


class TextEmbeddings:
    """(1, C) SegVol text embeddings by name, shared by every session (the weights are shared)."""

    def __init__(self, backbone: Backbone, tokenizer: str | None, device: torch.device) -> None:
        """``tokenizer``: CLIP tokenizer files (``PredictorConfig.text_tokenizer``; None = open-clip's)."""
        self.backbone, self.tokenizer, self.device = backbone, tokenizer, device
        self._cache: dict[str, torch.Tensor] = {}

    def embedding(self, name: str) -> torch.Tensor:
        """(1, C) SegVol text embedding of a name, computed once per name (the weights are shared)."""
        key = name.lower()
        cached = self._cache.get(key)
        if cached is None:
            tokens = tokenize([name], self.tokenizer)
            cached = self.backbone.embed_text(tokens.input_ids.to(self.device),  # type: ignore[attr-defined]
                                              tokens.attention_mask.to(self.device))
            self._cache[key] = cached
            if len(self._cache) > TEXT_CACHE_NAMES:  # names come from users: keep the newest only
                del self._cache[next(iter(self._cache))]
        return cached
