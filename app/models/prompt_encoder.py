"""SegVol's 3D prompt encoder (SAM's, lifted to volumes; parameter names match the published weights).

Coordinates in: model-frame voxel positions (z, y, x) = array axes (0, 1, 2) of the (d, h, w) frame.
Boxes are inclusive [z0, y0, x0, z1, y1, x1]; both boxes and points get SAM's +0.5 voxel-centre shift.

The positional encoding is SAM's random-Fourier one. Its dense grid (``get_dense_pe``) feeds the
Fourier matrix rows with (axis 1, axis 0, axis 2) positions — SAM's (x, y) order carried into 3D. The
published point path instead normalises a (z, y, x) point as (z / h, y / d, x / w) in row order: the
weights were trained with that, so it is the default (``reference_point_normalisation=True``). With
the flag off a point is encoded exactly like the dense grid cell it lies in (rows (y / h, z / d, x / w)),
which is geometrically consistent but does not match the published weights.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """Channel LayerNorm for (B, C, H, W) maps (SAM's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding: a fixed gaussian matrix (3, C/2) -> [sin, cos] features (C)."""

    positional_encoding_gaussian_matrix: Tensor

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """(..., 3) coordinates normalised to [0, 1] -> (..., C)."""
        coords = 2 * coords - 1
        coords = 2 * math.pi * (coords @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> Tensor:
        """Dense encoding of a (s0, s1, s2) grid at cell centres -> (C, s0, s1, s2)."""
        s0, s1, s2 = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((s0, s1, s2), device=matrix.device, dtype=matrix.dtype)
        along0 = (grid.cumsum(dim=0) - 0.5) / s0
        along1 = (grid.cumsum(dim=1) - 0.5) / s1
        along2 = (grid.cumsum(dim=2) - 0.5) / s2
        pe = self._pe_encoding(torch.stack([along1, along0, along2], dim=-1))  # SAM's (x, y, z) row order
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(
        self, coords: Tensor, image_size: tuple[int, int, int], reference_point_normalisation: bool = True
    ) -> Tensor:
        """Encode frame positions (B, N, 3) in (axis 0, axis 1, axis 2) order -> (B, N, C).

        ``reference_point_normalisation``: see the module docstring.
        """
        s0, s1, s2 = image_size
        c0, c1, c2 = coords.float().unbind(dim=-1)
        if reference_point_normalisation:
            normalised = torch.stack([c0 / s1, c1 / s0, c2 / s2], dim=-1)
        else:
            normalised = torch.stack([c1 / s1, c0 / s0, c2 / s2], dim=-1)
        return self._pe_encoding(normalised.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder3D(nn.Module):
    """Boxes, points and an optional text embedding -> sparse tokens; a learned "no mask" dense embedding.

    Args:
        embed_dim: token width C (the image encoder's hidden size).
        image_embedding_size: (g0, g1, g2) grid of the image embedding.
        input_image_size: (d, h, w) model frame.
        mask_in_chans: width of ``mask_downscaling``. That 2D branch is SAM's and exists only so the
            published weights load; SegVol never feeds a mask prompt, and neither do we.
        reference_point_normalisation: keep the published point normalisation quirk (module docstring).
    """

    num_point_embeddings = 4  # [0] negative point, [1] positive point, [2]/[3] box corners

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int = 16,
        activation: type[nn.Module] = nn.GELU,
        reference_point_normalisation: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        d, h, w = input_image_size
        g0, g1, g2 = image_embedding_size
        self.input_image_size = (int(d), int(h), int(w))
        self.image_embedding_size = (int(g0), int(g1), int(g2))
        self.reference_point_normalisation = reference_point_normalisation
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def _point_embedding(self, index: int) -> Tensor:
        """(1, C) learned embedding ``index`` (0 negative, 1 positive, 2/3 box corners)."""
        return cast(nn.Embedding, self.point_embeddings[index]).weight

    def get_dense_pe(self) -> Tensor:
        """(1, C, g0, g1, g2) positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def encode_coords(self, coords: Tensor) -> Tensor:
        """Fourier features of frame positions (B, N, 3), *after* the +0.5 shift -> (B, N, C)."""
        return self.pe_layer.forward_with_coords(
            coords, self.input_image_size, self.reference_point_normalisation
        )

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """points (B, N, 3), labels (B, N) in {1, 0, -1} -> (B, N [+1 padding], C)."""
        points = points + 0.5  # voxel centre
        if pad:
            # SAM appends a "not a point" token when there is no box to stand in for the box corners.
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 3))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.encode_coords(points)
        label = labels[..., None]
        embedding = torch.where(label == -1, self.not_a_point_embed.weight, embedding)
        embedding = embedding + (label == 0) * self._point_embedding(0)
        embedding = embedding + (label == 1) * self._point_embedding(1)
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """boxes (B, 6) inclusive [z0, y0, x0, z1, y1, x1] -> two corner tokens (B, 2, C)."""
        corners = (boxes + 0.5).reshape(-1, 2, 3)
        embedding = self.encode_coords(corners)
        corner_types = torch.cat([self._point_embedding(2), self._point_embedding(3)], dim=0)
        return embedding + corner_types

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        text_embedding: Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            points: ((B, N, 3) float frame positions (z, y, x), (B, N) labels 1/0/-1) or None.
            boxes: (B, 6) inclusive frame boxes or None.
            text_embedding: (B, C) aligned text embedding or None; appended as the last token.
            batch_size: B when no prompt is given at all (default 1).
        Returns:
            sparse (B, N_tokens, C): [points (+ padding when no box)], [2 box corners], [text];
            dense (B, C, g0, g1, g2): the "no mask" embedding broadcast over the grid.
        """
        bs = self._batch_size(points, boxes, text_embedding, batch_size)
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((bs, 0, self.embed_dim))
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if text_embedding is not None:
            sparse = torch.cat([sparse, text_embedding.unsqueeze(1)], dim=1)
        dense = weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense

    @staticmethod
    def _batch_size(
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        text_embedding: Tensor | None,
        batch_size: int | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if text_embedding is not None:
            return text_embedding.shape[0]
        return batch_size or 1
