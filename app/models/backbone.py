"""The interface every promptable backbone implements (SegVol and the compact model alike).

The predictor only talks to a backbone through this interface, which is what keeps the stateful split:
``encode`` runs once per model-frame view of the volume and its output is cached in the session;
``decode`` answers prompts from a cached embedding and must be cheap.

All coordinates here are *model-frame* voxel coordinates: a float (z, y, x) position inside the
``frame`` = (d, h, w) array the backbone sees. Mapping from the volume to the frame is the predictor's
job (``app.models.geometry``); backbone-specific quirks (SegVol's +0.5 box shift, its swapped point
normalisation) live inside the backbone's prompt encoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

# An embedding is whatever ``encode`` returns for a batch: a tensor or a tuple of tensors, batch first.
# The predictor treats it as opaque, caches it per view, and passes it back to ``decode`` unchanged.
Embedding = Any


class Backbone(nn.Module, ABC):
    """A promptable 3D segmenter split into a cacheable image encoder and a cheap prompt decoder.

    Attributes:
        frame: the model input size (d, h, w); ``encode`` takes exactly this spatial size.
        supports_mask_prompt: whether ``decode`` uses ``mask_logits`` (the object's current logits).
        any_frame: fully convolutional, so the same parameters serve other frames (``build.frame_view``).
    """

    frame: tuple[int, int, int]
    supports_mask_prompt: bool = False
    any_frame: bool = False

    @abstractmethod
    def encode(self, image: torch.Tensor) -> Embedding:
        """Image features for a batch of normalised views.

        Args:
            image: (B, 1, d, h, w) float32, intensities already normalised to [0, 1].
        Returns:
            An embedding (tensor or tuple of tensors with leading dim B) to cache and pass to ``decode``.
        """

    @abstractmethod
    def decode(
        self,
        embedding: Embedding,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for the prompted object in each view.

        Args:
            embedding: what ``encode`` returned for these B views.
            boxes: (B, 6) float, inclusive frame box [z0, y0, x0, z1, y1, x1], or None.
            points: (B, N, 3) float frame coordinates (z, y, x), or None.
            point_labels: (B, N) long: 1 foreground, 0 background, -1 padding (ignored).
            mask_logits: (B, 1, d, h, w) the object's current logits in this view, or None
                (only read when ``supports_mask_prompt``).
        Returns:
            (B, 1, d, h, w) float32 logits at the frame resolution.
        """
