"""SegVol composed from its parts, behind the ``Backbone`` interface; weight-compatible with BAAI/SegVol.

    model = SegVol(**get_model_config("segvol-base").backbone_kwargs, with_text=False)
    embedding = model.encode(image)                      # (B, 768, 8, 16, 16), cache it
    logits = model.decode(embedding, boxes=box)          # (B, 1, 32, 256, 256)

``state_dict()`` keys are the published ones without their ``model.`` prefix (see ``app.models.weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from app.models.backbone import Backbone
from app.models.image_encoder import ViTImageEncoder
from app.models.mask_decoder import MaskDecoder3D
from app.models.prompt_encoder import PromptEncoder3D
from app.models.transformer import TwoWayTransformer


class SegVol(Backbone):
    """Image encoder (MONAI ViT) + 3D prompt encoder + mask decoder (+ optional frozen CLIP text branch).

    Args:
        frame: model input (d, h, w), e.g. (32, 256, 256).
        patch_size: ViT patch (p0, p1, p2), e.g. (4, 16, 16); the embedding grid is frame / patch_size.
        hidden_size, mlp_dim, num_layers, num_heads: the ViT (also the prompt/decoder width C = hidden_size).
        decoder_depth, decoder_mlp_dim, decoder_heads: the two-way transformer.
        num_multimask_outputs, iou_head_hidden_dim: mask-decoder heads (only mask token 0 is used).
        text_hidden_size, text_layers: the CLIP text model (only built when ``with_text``).
        with_text: build the text branch (needs ``transformers``).
        reference_point_normalisation: keep SegVol's published point-normalisation quirk
            (``app.models.prompt_encoder``); turn off only for weights trained without it.
    """

    supports_mask_prompt = False

    def __init__(
        self,
        *,
        frame: Sequence[int],
        patch_size: Sequence[int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        decoder_depth: int,
        decoder_mlp_dim: int,
        decoder_heads: int,
        num_multimask_outputs: int,
        iou_head_hidden_dim: int,
        text_hidden_size: int,
        text_layers: int,
        with_text: bool = False,
        reference_point_normalisation: bool = True,
    ) -> None:
        super().__init__()
        self.image_encoder = ViTImageEncoder(frame, patch_size, hidden_size, mlp_dim, num_layers, num_heads)
        self.frame = self.image_encoder.frame
        self.embedding_size: tuple[int, int, int] = self.image_encoder.grid
        self.hidden_size = hidden_size
        self.with_text = with_text
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=hidden_size,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=hidden_size,
                num_heads=decoder_heads,
                mlp_dim=decoder_mlp_dim,
            ),
            image_embedding_size=self.embedding_size,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=hidden_size,
            image_embedding_size=self.embedding_size,
            input_image_size=self.frame,
            reference_point_normalisation=reference_point_normalisation,
        )
        if with_text:
            from app.models.text_encoder import TextEncoder

            self.text_encoder = TextEncoder(text_hidden_size, text_layers, hidden_size)

    def encode(self, image: Tensor) -> Tensor:
        """image (B, 1, d, h, w) in [0, 1] -> embedding (B, C, g0, g1, g2)."""
        if image.ndim != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != self.frame:
            raise ValueError(
                f"image: expected (B, 1, {', '.join(map(str, self.frame))}), got {tuple(image.shape)}"
            )
        return self.image_encoder(image)

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """CLIP token ids (B, L) -> text embedding (B, C) for ``decode(text_embedding=...)``."""
        if not self.with_text:
            raise ValueError("input_ids: this SegVol was built without the text branch (with_text=False)")
        return self.text_encoder(input_ids, attention_mask)

    def decode(
        self,
        embedding: Tensor,
        boxes: Tensor | None = None,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        mask_logits: Tensor | None = None,
        *,
        text_embedding: Tensor | None = None,
    ) -> Tensor:
        """Frame-resolution logits for the prompted object.

        Args:
            embedding: (B, C, g0, g1, g2) from ``encode``, or (1, ...) shared by B prompts.
            boxes: (B, 6) inclusive frame box [z0, y0, x0, z1, y1, x1], or None.
            points: (B, N, 3) frame positions (z, y, x), or None.
            point_labels: (B, N) 1 foreground, 0 background, -1 padding.
            mask_logits: ignored (SegVol takes no mask prompt).
            text_embedding: (B, C) from ``embed_text``, or None.
        Returns:
            (B, 1, d, h, w) float logits: the decoder's (4 g0, 4 g1, 4 g2) logits, trilinearly upsampled.
        """
        del mask_logits
        if embedding.ndim != 5 or tuple(embedding.shape[1:]) != (self.hidden_size, *self.embedding_size):
            raise ValueError(
                f"embedding: expected (B, {self.hidden_size}, {', '.join(map(str, self.embedding_size))}), "
                f"got {tuple(embedding.shape)}"
            )
        dtype = self.prompt_encoder.no_mask_embed.weight.dtype
        batches: dict[str, int] = {}
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[1] != 6:
                raise ValueError(f"boxes: expected (B, 6), got {tuple(boxes.shape)}")
            boxes = boxes.to(dtype)
            batches["boxes"] = boxes.shape[0]
        point_prompt: tuple[Tensor, Tensor] | None = None
        if points is not None:
            if point_labels is None:
                raise ValueError("point_labels: required with points")
            if points.ndim != 3 or points.shape[2] != 3:
                raise ValueError(f"points: expected (B, N, 3), got {tuple(points.shape)}")
            if tuple(point_labels.shape) != tuple(points.shape[:2]):
                raise ValueError(
                    f"point_labels: expected shape {tuple(points.shape[:2])}, got {tuple(point_labels.shape)}"
                )
            point_prompt = (points.to(dtype), point_labels.long())
            batches["points"] = points.shape[0]
        if text_embedding is not None:
            if tuple(text_embedding.shape[1:]) != (self.hidden_size,) or text_embedding.ndim != 2:
                raise ValueError(
                    f"text_embedding: expected (B, {self.hidden_size}), got {tuple(text_embedding.shape)}"
                )
            text_embedding = text_embedding.to(dtype)
            batches["text_embedding"] = text_embedding.shape[0]
        batch = embedding.shape[0]
        for name, size in batches.items():
            if size != batch and batch != 1:
                raise ValueError(f"{name}: batch {size} does not match the embedding's batch {batch}")
        if len(set(batches.values())) > 1:
            first = next(iter(batches))
            raise ValueError(f"{first}: prompt batch sizes disagree: {batches}")

        sparse, dense = self.prompt_encoder(point_prompt, boxes, text_embedding, batch_size=batch)
        low_res, _ = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            text_embedding=text_embedding,
            multimask_output=False,
        )
        return F.interpolate(low_res, size=self.frame, mode="trilinear", align_corners=False)

    def forward(
        self,
        image: Tensor,
        boxes: Tensor | None = None,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        text_embedding: Tensor | None = None,
    ) -> Tensor:
        """``decode(encode(image), ...)``: (B, 1, d, h, w) image -> (B, 1, d, h, w) logits."""
        return self.decode(self.encode(image), boxes, points, point_labels, text_embedding=text_embedding)
