"""SegVol's image encoder: MONAI's ViT, returning the token grid as a 3D feature map.

It *is* a MONAI ``ViT`` (a subclass, not a wrapper) so that its state_dict keys are exactly the
published ``image_encoder.*`` names; only ``forward`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import ViT
from torch import Tensor


class ViTImageEncoder(ViT):
    """(B, 1, d, h, w) -> (B, hidden, d / p0, h / p1, w / p2), after the ViT's final LayerNorm.

    Args:
        frame: (d, h, w) input size; each side must be a multiple of the patch size.
        patch_size: (p0, p1, p2).
        hidden_size, mlp_dim, num_layers, num_heads: ViT dimensions (SegVol-B: 768, 3072, 12, 12).
    """

    def __init__(
        self,
        frame: Sequence[int],
        patch_size: Sequence[int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
    ) -> None:
        if len(frame) != 3 or len(patch_size) != 3:
            raise ValueError(f"frame: expected 3 sides and a 3-d patch size, got {frame} and {patch_size}")
        d, h, w = (int(s) for s in frame)
        p0, p1, p2 = (int(p) for p in patch_size)
        if d % p0 or h % p1 or w % p2:
            raise ValueError(f"frame: {(d, h, w)} is not a multiple of patch_size {(p0, p1, p2)}")
        super().__init__(
            in_channels=1,
            img_size=(d, h, w),
            patch_size=(p0, p1, p2),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="perceptron",
            classification=False,
            dropout_rate=0.0,
        )
        self.frame = (d, h, w)
        self.grid = (d // p0, h // p1, w // p2)

    def forward(self, x: Tensor) -> Tensor:
        tokens, _ = super().forward(x)  # (B, g0*g1*g2, hidden), final LayerNorm applied
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)
