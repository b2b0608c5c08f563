"""The compact backbone: a convolutional encoder whose cached multi-scale features feed a decoder that
takes the prompt maps at every scale. It is the CPU default.

Split (what makes a click cheap):
    encode(image)   once per view. A strided stem means no full-resolution *feature* is cached, only the
                    1-channel image itself (for the pointwise full-resolution head).
    decode(...)     per prompt. Rasterises box, clicks and previous mask into prompt maps, evaluates them at
                    every decoder scale, and runs a U-Net style decoder over the cached features.

Frame: (d, h, w) = (32, 128, 128) in the shipped config. Anisotropic on purpose: most CT/MR volumes have far
fewer (and thicker) slices than in-plane pixels, so 1:4:4 covers a roughly isotropic physical extent; 32
slices keep SegVol's window depth (same zoom-in tiling along z) while 128x128 in-plane costs a quarter of
SegVol's 256x256 per window. The last encoder level downsamples only in-plane for the same reason.

Scales, for frame (32, 128, 128) and strides ((2,2,2), (2,2,2), (2,2,2), (1,2,2)):
    scale 0  32x128x128  image (1 ch)              cached; full-resolution prompts; pointwise head
    scale 1  16x64x64    encoder level 1 (c1 ch)   cached; decoder output (coarse logits)
    scale 2  8x32x32     encoder level 2           cached
    scale 3  4x16x16     encoder level 3           cached
    scale 4  4x8x8       encoder level 4           cached; decoder bottleneck

Coordinates: frame voxel i is centred at float coordinate i and spans [i - 0.5, i + 0.5]; an inclusive
integer box [z0..z1] covers the edges [z0 - 0.5, z1 + 0.5]. A voxel at scale s (cumulative stride S) covers
frame voxels [S*j, S*j + S), centred at S*j + (S - 1) / 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock, UpSample
from torch import nn

from app.models.backbone import Backbone

Triple = tuple[int, int, int]

# Prompt map channels, in order, at every scale.
PROMPT_CHANNELS = ("box", "foreground_clicks", "background_clicks", "previous_mask", "mask_given")
_ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


class FastCPUConv3d(nn.Conv3d):
    """``nn.Conv3d`` that picks the fast CPU kernel itself; same parameters and state_dict keys.

    Why by hand: PyTorch's CPU dispatch (``ConvParams::use_mkldnn``, tuned for 2-D) sends a batch-1 3-D
    convolution with N*C*D*H <= 20480 to the native ``slow_conv3d``, which is 3-10x slower than oneDNN at
    the k>1 convolutions of this model (e.g. 16->16 channels at 16x64x64: 180 ms vs 19 ms, one thread),
    and 1x1x1 convolutions take a path about 2x slower than the batched matrix product they are.
    CPU float32 with zero padding: k>1 or strided -> oneDNN, 1x1x1 stride 1 -> ``baddbmm``.
    Anything else (CUDA, other dtypes) -> ``nn.Conv3d`` unchanged.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            return super()._conv_forward(input, weight, bias)
        pointwise = self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and self.groups == 1
        if pointwise and self.padding == (0, 0, 0):
            batch, c_out = input.shape[0], weight.shape[0]
            w = weight.flatten(1).expand(batch, -1, -1)  # (B, C_out, C_in)
            x = input.flatten(2)  # (B, C_in, V)
            if bias is None:
                out = torch.bmm(w, x)
            else:
                out = torch.baddbmm(bias[None, :, None].expand(batch, c_out, 1), w, x)
            return out.view(batch, c_out, *input.shape[2:])
        if _ONEDNN_AVAILABLE and torch.backends.mkldnn.enabled and not pointwise:
            return torch.mkldnn_convolution(
                input, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super()._conv_forward(input, weight, bias)


_ONEDNN_AVAILABLE = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


def _use_fast_cpu_convs(module: nn.Module) -> None:
    """Switch every plain ``nn.Conv3d`` inside ``module`` (MONAI blocks included) to ``FastCPUConv3d``.

    Changing the class keeps parameters, buffers and state_dict keys exactly as MONAI built them.
    """
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = FastCPUConv3d


class CompactBackbone(Backbone):
    """Convolutional encoder (MONAI ``UnetResBlock``s) + prompt-conditioned U-Net decoder.

    Args:
        frame: model input size (d, h, w); must be divisible by the cumulative strides.
        channels: encoder channels per level (level 1 = after the strided stem), e.g. (16, 32, 64, 128).
        strides: per-level downsampling stride (z, y, x), one per level; level 1's is the stem's.
        encoder_blocks: residual blocks per encoder level (>= 1; the first one of a level downsamples).
        decoder_channels: decoder channels per level (level 1 .. L), same length as ``channels``.
        click_sigma: gaussian width (z, y, x) of a click at full resolution, in frame voxels; at a coarser
            scale the width is at least half that scale's voxel, so a click is always visible there.
        refine_channels: hidden channels of the pointwise full-resolution head.
        norm: MONAI norm name; instance/group norms behave the same at batch size 1 (never batch norm).

    Shapes: ``encode`` (B, 1, d, h, w) -> tuple (image, f_1, ..., f_L) with f_l (B, channels[l-1], *size_l);
    ``decode`` -> (B, 1, d, h, w) logits.
    """

    supports_mask_prompt = True
    any_frame = True

    def __init__(
        self,
        frame: Sequence[int] = (32, 128, 128),
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        encoder_blocks: Sequence[int] = (1, 2, 2, 2),
        decoder_channels: Sequence[int] = (8, 16, 32, 64),
        click_sigma: Sequence[float] = (1.0, 2.0, 2.0),
        refine_channels: int = 4,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        self.frame = _triple("frame", frame)
        levels = len(channels)
        if levels < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels: expected positive channel counts, got {tuple(channels)}")
        if len(strides) != levels or len(encoder_blocks) != levels or len(decoder_channels) != levels:
            raise ValueError(
                "strides: channels, strides, encoder_blocks and decoder_channels need one entry per level, got "
                f"{len(channels)}, {len(strides)}, {len(encoder_blocks)}, {len(decoder_channels)}"
            )
        if any(n < 1 for n in encoder_blocks):
            raise ValueError(
                f"encoder_blocks: each level needs at least one block, got {tuple(encoder_blocks)}"
            )
        if len(click_sigma) != 3 or any(s <= 0 for s in click_sigma):
            raise ValueError(
                f"click_sigma: expected three positive widths (z, y, x), got {tuple(click_sigma)}"
            )
        if "batch" in norm.lower():
            raise ValueError(f"norm: {norm!r} depends on the batch; use an instance or group norm")
        self.strides: tuple[Triple, ...] = tuple(_triple("strides", s) for s in strides)

        # Cumulative stride and grid size of every scale; scale 0 is the frame itself.
        self.scale_strides: tuple[Triple, ...] = ((1, 1, 1),)
        for s in self.strides:
            prev = self.scale_strides[-1]
            self.scale_strides += ((prev[0] * s[0], prev[1] * s[1], prev[2] * s[2]),)
        for total in self.scale_strides:
            if any(f % t for f, t in zip(self.frame, total, strict=True)):
                raise ValueError(f"frame: {self.frame} is not divisible by the cumulative stride {total}")
        self.scale_sizes: tuple[Triple, ...] = tuple(
            (self.frame[0] // t[0], self.frame[1] // t[1], self.frame[2] // t[2]) for t in self.scale_strides
        )
        self.click_sigma = tuple(float(s) for s in click_sigma)
        self.channels = tuple(channels)
        self.decoder_channels = tuple(decoder_channels)
        n_prompt = len(PROMPT_CHANNELS)

        # Encoder: level l = UnetResBlock(stride) followed by (encoder_blocks[l] - 1) stride-1 blocks.
        self.encoder = nn.ModuleList()
        in_ch = 1
        for out_ch, stride, n_blocks in zip(channels, self.strides, encoder_blocks, strict=True):
            blocks = [_res_block(in_ch, out_ch, stride, norm)]
            blocks += [_res_block(out_ch, out_ch, 1, norm) for _ in range(n_blocks - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            in_ch = out_ch

        # Decoder: the bottleneck fuses the deepest features with the prompt maps; every level above
        # upsamples (1x1x1 conv + nearest; no transposed conv, which is slow on CPU) and fuses
        # [upsampled, skip features, prompt maps at that scale]. Convolutions followed by a norm carry no
        # bias (the norm would cancel it and leave it without gradient).
        self.bottleneck = _fuse_block(channels[-1] + n_prompt, decoder_channels[-1], norm)
        self.upsample = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(levels - 1):  # decoder level `level` (0-based) sits at scale level + 1
            self.upsample.append(
                UpSample(
                    3,
                    decoder_channels[level + 1],
                    decoder_channels[level],
                    scale_factor=self.strides[level + 1],
                    mode="nontrainable",
                    interp_mode="nearest",
                    align_corners=None,
                    bias=False,
                )
            )
            self.fuse.append(
                _fuse_block(
                    decoder_channels[level] + channels[level] + n_prompt, decoder_channels[level], norm
                )
            )
        # Heads see the prompt maps again without a norm after them: a spatially constant channel (the
        # mask-given flag) is erased by instance norm, so this is where the flag can act.
        self.coarse_head = UnetOutBlock(3, decoder_channels[0] + n_prompt, 1)
        self.refine_head = nn.Sequential(
            Convolution(3, 2 + n_prompt, refine_channels, kernel_size=1, act=_ACT, norm=None, bias=True),
            UnetOutBlock(3, refine_channels, 1),
        )
        _use_fast_cpu_convs(self)

    # ------------------------------------------------------------------ encode

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cached features of a batch of views.

        Args:
            image: (B, 1, d, h, w) in the model's dtype (float32), normalised to [0, 1], (d, h, w) == ``frame``.
        Returns:
            (image, f_1, ..., f_L): a copy of the input (B, 1, d, h, w) and f_l (B, channels[l-1],
            *scale_sizes[l]).
        """
        _check_shape("image", image, (None, 1, *self.frame))
        dtype = self.coarse_head.conv.conv.weight.dtype
        if image.dtype != dtype:
            raise ValueError(f"image: expected dtype {dtype} (the model's), got {image.dtype}")
        feats = [image.clone()]  # the cached embedding owns its copy of the image
        x = image
        for level in self.encoder:
            x = level(x)
            feats.append(x)
        return tuple(feats)

    def embedding_bytes(self, batch: int = 1) -> int:
        """Bytes of the float32 embedding that ``encode`` returns for ``batch`` views."""
        n = sum(c * d * h * w for c, (d, h, w) in zip(self.channels, self.scale_sizes[1:], strict=True))
        return 4 * batch * (self.frame[0] * self.frame[1] * self.frame[2] + n)

    # ------------------------------------------------------------------ decode

    def decode(
        self,
        embedding: tuple[torch.Tensor, ...],
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the prompted object in each view.

        Args:
            embedding: what ``encode`` returned for these B views.
            boxes: (B, 6) inclusive frame box [z0, y0, x0, z1, y1, x1] (float allowed), or None.
            points: (B, N, 3) float frame coordinates (z, y, x), or None.
            point_labels: (B, N) 1 foreground, 0 background, -1 padding (ignored whatever its coordinates).
            mask_logits: (B, 1, d, h, w) the object's current logits, or None.
        Returns:
            (B, 1, d, h, w) float32 logits.
        """
        image, feats = self._check_embedding(embedding)
        maps = self.prompt_maps(image.shape[0], image.device, boxes, points, point_labels, mask_logits)

        x = self.bottleneck(torch.cat([feats[-1], maps[-1]], dim=1))
        for level in reversed(range(len(self.fuse))):
            x = self.upsample[level](x)
            x = self.fuse[level](torch.cat([x, feats[level], maps[level + 1]], dim=1))
        coarse = self.coarse_head(torch.cat([x, maps[1]], dim=1))  # (B, 1, *scale_sizes[1])
        up = F.interpolate(coarse, size=self.frame, mode="trilinear", align_corners=False)
        return up + self.refine_head(torch.cat([up, image, maps[0]], dim=1))

    def prompt_maps(
        self,
        batch: int,
        device: torch.device,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The prompts rasterised at every scale (arguments as in ``decode``).

        Returns:
            One (B, 5, *scale_sizes[s]) float32 tensor per scale s = 0..L, channels ``PROMPT_CHANNELS``:
            box coverage (fraction of the voxel inside the box), foreground / background click maps (sums of
            gaussians clipped to 1), previous-mask probability (average over the voxel; 0 without a mask), and
            the mask-given flag (1 everywhere when ``mask_logits`` is given, else 0).
        """
        f32 = torch.float32
        boxes = self._check_boxes(boxes, batch)
        points, fg_bg = self._check_points(points, point_labels, batch)
        if boxes is not None:
            boxes = boxes.to(device=device, dtype=f32)
        if points is not None:
            points, fg_bg = points.to(device=device, dtype=f32), fg_bg.to(device=device, dtype=f32)
        if mask_logits is not None:
            _check_shape("mask_logits", mask_logits, (batch, 1, *self.frame))
            prob = torch.sigmoid(mask_logits.to(device=device, dtype=f32))
        maps = []
        for scale, (size, total) in enumerate(zip(self.scale_sizes, self.scale_strides, strict=True)):
            # Written into one zero-filled tensor: absent prompts cost nothing and no concatenation copy.
            out = torch.zeros(batch, len(PROMPT_CHANNELS), *size, device=device, dtype=f32)
            # Voxel centres of this scale in frame coordinates, one vector per axis.
            centres = [
                torch.arange(n, device=device, dtype=f32) * t + (t - 1) / 2
                for n, t in zip(size, total, strict=True)
            ]
            if boxes is not None:
                out[:, 0] = _box_coverage(boxes, centres, total)
            if points is not None:
                sigma = [max(s, t / 2) for s, t in zip(self.click_sigma, total, strict=True)]
                out[:, 1:3] = _gaussian_sum(points, fg_bg, centres, sigma)
            if mask_logits is not None:
                if scale > 0:  # average over each coarser voxel, from the previous scale
                    prob = F.avg_pool3d(prob, kernel_size=self.strides[scale - 1])
                out[:, 3:4] = prob
                out[:, 4] = 1.0
            maps.append(out)
        return maps

    # ------------------------------------------------------------------ validation

    def _check_embedding(self, embedding: object) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if not isinstance(embedding, tuple | list) or len(embedding) != len(self.encoder) + 1:
            raise ValueError(
                f"embedding: expected the tuple of {len(self.encoder) + 1} tensors that encode returns"
            )
        image = embedding[0]
        _check_shape("embedding", image, (None, 1, *self.frame))
        batch = image.shape[0]
        for c, size, f in zip(self.channels, self.scale_sizes[1:], embedding[1:], strict=True):
            _check_shape("embedding", f, (batch, c, *size))
        return image, tuple(embedding[1:])

    def _check_boxes(self, boxes: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if boxes is None:
            return None
        _check_shape("boxes", boxes, (batch, 6))
        if not torch.isfinite(boxes).all():
            raise ValueError("boxes: non-finite coordinates")
        if (boxes[:, 3:] < boxes[:, :3]).any():
            raise ValueError(
                "boxes: a max corner is below its min corner (inclusive [z0, y0, x0, z1, y1, x1])"
            )
        return boxes

    def _check_points(
        self, points: torch.Tensor | None, point_labels: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Returns the points with padding moved to the origin and (B, 2, N) foreground/background weights."""
        if points is None:
            if point_labels is not None:
                raise ValueError("point_labels: given without points")
            return None, torch.zeros(batch, 2, 0)
        if point_labels is None:
            raise ValueError("point_labels: required with points")
        _check_shape("points", points, (batch, None, 3))
        _check_shape("point_labels", point_labels, (batch, points.shape[1]))
        if ((point_labels != -1) & (point_labels != 0) & (point_labels != 1)).any():
            raise ValueError("point_labels: values must be 1 (foreground), 0 (background) or -1 (padding)")
        valid = point_labels >= 0
        points = torch.where(valid[..., None], points, torch.zeros_like(points))
        if not torch.isfinite(points).all():
            raise ValueError("points: non-finite coordinates")
        fg_bg = torch.stack([point_labels == 1, point_labels == 0], dim=1)
        return points, fg_bg


def _fuse_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """Mix [features, prompt maps] down to ``out_ch`` with a 1x1x1 conv, then one residual 3x3x3 block.

    The cheap pointwise mix first keeps the 3x3x3 convolutions at ``out_ch`` channels (decode cost).
    """
    mix = Convolution(3, in_ch, out_ch, kernel_size=1, act=_ACT, norm=norm, bias=False)
    return nn.Sequential(mix, _res_block(out_ch, out_ch, 1, norm))


def _res_block(in_ch: int, out_ch: int, stride: int | Triple, norm: str) -> UnetResBlock:
    return UnetResBlock(3, in_ch, out_ch, kernel_size=3, stride=stride, norm_name=norm, act_name=_ACT)


def _box_coverage(boxes: torch.Tensor, centres: list[torch.Tensor], total: Triple) -> torch.Tensor:
    """Fraction of each voxel inside the box: (B, 6) inclusive boxes -> (B, *size); separable per axis."""
    per_axis = []
    for axis, (c, t) in enumerate(zip(centres, total, strict=True)):
        lo_edge, hi_edge = c - t / 2, c + t / 2  # (n,) voxel extents in frame coordinates
        lo = boxes[:, axis, None] - 0.5  # (B, 1) inclusive voxel indices -> edges
        hi = boxes[:, axis + 3, None] + 0.5
        overlap = torch.minimum(hi, hi_edge) - torch.maximum(lo, lo_edge)
        per_axis.append(overlap.clamp(min=0) / t)  # (B, n)
    z, y, x = per_axis
    return z[:, :, None, None] * y[:, None, :, None] * x[:, None, None, :]


def _gaussian_sum(
    points: torch.Tensor, weights: torch.Tensor, centres: list[torch.Tensor], sigma: Sequence[float]
) -> torch.Tensor:
    """Sum of separable gaussians at the points, per channel, clipped to 1.

    Args:
        points: (B, N, 3) frame coordinates.
        weights: (B, C, N) weight of each point in each channel (0 removes a point exactly).
        centres: per axis, the (n_a,) voxel centres of the target grid.
        sigma: per axis gaussian width in frame voxels.
    Returns:
        (B, C, n_z, n_y, n_x).
    """
    g = [
        torch.exp(-0.5 * ((c[None, None, :] - points[..., axis, None]) / s) ** 2)  # (B, N, n_a)
        for axis, (c, s) in enumerate(zip(centres, sigma, strict=True))
    ]
    zy = (
        weights[..., None, None] * g[0][:, None, :, :, None] * g[1][:, None, :, None, :]
    )  # (B, C, N, n_z, n_y)
    return torch.einsum("bcnzy,bnx->bczyx", zy, g[2]).clamp(max=1.0)


def _triple(name: str, value: Sequence[int] | int) -> Triple:
    t = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(t) != 3 or any(int(v) != v or v < 1 for v in t):
        raise ValueError(f"{name}: expected three positive integers (z, y, x), got {value!r}")
    return int(t[0]), int(t[1]), int(t[2])


def _check_shape(name: str, tensor: object, expected: tuple[int | None, ...]) -> None:
    """Raise ValueError naming ``name`` unless ``tensor`` is a tensor of shape ``expected`` (None = any)."""
    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
    if (
        shape is None
        or len(shape) != len(expected)
        or any(e is not None and s != e for s, e in zip(shape, expected, strict=True))
    ):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        got = shape if shape is not None else type(tensor).__name__
        raise ValueError(f"{name}: expected shape {want}, got {got}")
