"""SegVol's 3D mask decoder (SAM's, lifted to volumes; parameter names match the published weights).

Output tokens (1 IoU token + ``num_multimask_outputs + 1`` mask tokens) and the sparse prompt tokens
run through the two-way transformer with the image embedding; the image side is upscaled 4x by two
transposed convolutions and each mask token's hypernetwork MLP turns it into a per-voxel dot product.
With a text embedding, its similarity to the upscaled features is added to every mask (SegVol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.models.transformer import TwoWayTransformer


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (SAM's MLP; keys ``layers.i``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder3D(nn.Module):
    """Predicts low-resolution mask logits (4x the embedding grid) from image + prompt embeddings.

    Args:
        transformer_dim: C, the token width.
        transformer: the two-way transformer.
        image_embedding_size: (g0, g1, g2) embedding grid; the upscaled features are (4 g0, 4 g1, 4 g2).
        num_multimask_outputs: extra mask tokens (SAM's ambiguity outputs; only token 0 is used here).
        iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        image_embedding_size: tuple[int, int, int],
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        g0, g1, g2 = image_embedding_size
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            # SegVol normalises over (C/4, 2 g0, 2 g1, 2 g2) jointly: the shape is part of the weights.
            nn.LayerNorm((transformer_dim // 4, 2 * g0, 2 * g1, 2 * g2)),
            activation(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self.txt_align_upscaled_embedding = nn.Linear(transformer_dim, transformer_dim // 8)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        text_embedding: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embeddings: (B or 1, C, g0, g1, g2).
            image_pe: (1, C, g0, g1, g2) dense positional encoding.
            sparse_prompt_embeddings: (B, N, C).
            dense_prompt_embeddings: (B, C, g0, g1, g2).
            text_embedding: (B, C) or None.
            multimask_output: False -> mask token 0 only (SegVol); True -> tokens 1..M.
        Returns:
            masks (B, 1 or M, 4 g0, 4 g1, 4 g2) logits and iou_pred (B, 1 or M).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, text_embedding
        )
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        text_embedding: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All mask tokens: masks (B, M+1, 4 g0, 4 g1, 4 g2) and iou_pred (B, M+1)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = image_embeddings
        if src.shape[0] != batch:  # one cached embedding answering B prompts
            src = src.expand(batch, -1, -1, -1, -1)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(batch, -1, -1, -1, -1)
        b, c, g0, g1, g2 = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, g0, g1, g2))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, M+1, C/8)
        b, c8, u0, u1, u2 = upscaled.shape
        flat = upscaled.reshape(b, c8, u0 * u1 * u2)
        masks = (hyper_in @ flat).reshape(b, -1, u0, u1, u2)
        if text_embedding is not None:
            text_down = self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1)  # (B, 1, C/8)
            masks = masks + (text_down @ flat).reshape(b, 1, u0, u1, u2)  # same similarity for every token
        return masks, self.iou_prediction_head(iou_token_out)
