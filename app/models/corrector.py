"""The paper's GRU corrector (eq. 9) and the sparse logit-domain update (eqs. 10-11).

    inp = build_corrector_input(logits, roi, shape, clicks, labels, anchor, config, generator)
    out = corrector(inp.features[None], object_state.hidden)          # hidden carried across rounds
    new_logits, touched = apply_correction(logits, roi, shape, inp.coords, inp.valid,
                                           out.delta_p[0], out.delta_c[0] if out.delta_c is not None else None)
    object_state.hidden = out.hidden

Choices where the paper is ambiguous (SPEC section 2 wins):

- One GRU, one recurrent state h carried from round to round (the paper's h_{t-1} -> h_t). Default
  (``recurrence="points"``): within a round the GRU runs over the 2K points as a sequence (uncertainty rows,
  then error rows) starting from h_{t-1}, and its final state is h_t; each point's outputs read [its own
  embedding, its GRU output, h_t], so every point sees the whole round and the history. Alternative
  (``recurrence="rounds"``): the rounds are the time steps; the valid points' embeddings are pooled (mean,
  max) into one GRU step h_{t-1} -> h_t, and each point reads [its embedding, h_t]. Same contract, one serial
  step instead of 2K (much cheaper on CPU), order-invariant over the points.
- delta_p is a probability offset in (-1, 1) (tanh), added to p and clamped to [eps, 1 - eps] before going
  back to a logit: the session stores logits, never probabilities.
- delta_C is bounded (max_offset * tanh, in voxels), rounded to integers, clamped to the volume and the ROI.
  The update is written at the moved coordinate (the paper's C_t + delta_C_t); switch it off with
  ``use_offsets=False``.
- Output layers start near zero, so an untrained corrector is close to the identity.
- Two rows landing on the same voxel: error rows (user evidence) beat uncertainty rows; within a block the
  earlier row (more uncertain, or lower flat index) wins. No float accumulation, so results do not depend on
  scatter order or atomics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from app.models.constant_tensors import long_vector, strides

Recurrence = Literal["points", "rounds"]
VALID_COLUMN = 4  # the validity flag's column in the state tensor (see app.models.sampling)


@dataclass
class CorrectorOutput:
    """Outputs of one corrector round.

    Attributes:
        delta_p: (B, 2K) probability offsets in (-1, 1).
        delta_c: (B, 2K, 3) coordinate offsets in voxels, |.| <= max_offset; None when offsets are off.
        hidden: (L, B, H) the new recurrent state h_t.
    """

    delta_p: Tensor
    delta_c: Tensor | None
    hidden: Tensor


class GRUCorrector(nn.Module):
    """Per-point MLP embedding -> GRU from h_{t-1} (over the points, or one step per round) -> per-point heads.

    Args:
        in_features: feature columns of the state tensor (8).
        embed_dim: per-point embedding size.
        hidden_size: GRU state size H.
        num_layers: GRU layers L.
        max_offset: bound on |delta_c| in voxels.
        use_offsets: whether the coordinate head exists.
        recurrence: "points" (GRU over the 2K points, starting from h_{t-1}) or "rounds" (one GRU step per
            round on the pooled valid points); see the module docstring.
    """

    def __init__(
        self,
        in_features: int = 8,
        embed_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        max_offset: float = 2.0,
        use_offsets: bool = True,
        recurrence: Recurrence = "points",
    ) -> None:
        super().__init__()
        if max_offset < 0:
            raise ValueError(f"max_offset: must be >= 0, got {max_offset}")
        if recurrence not in ("points", "rounds"):
            raise ValueError(f"recurrence: must be 'points' or 'rounds', got {recurrence!r}")
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.max_offset = float(max_offset)
        self.use_offsets = use_offsets
        self.recurrence = recurrence
        self.embed = nn.Sequential(
            nn.Linear(in_features, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.GELU()
        )
        per_round = recurrence == "rounds"
        gru_in = 2 * embed_dim if per_round else embed_dim  # pooled (mean, max) or per point
        self.gru = nn.GRU(gru_in, hidden_size, num_layers=num_layers, batch_first=True)
        trunk_in = embed_dim + (hidden_size if per_round else 2 * hidden_size)
        self.trunk = nn.Sequential(nn.Linear(trunk_in, hidden_size), nn.GELU())
        self.prob_head = nn.Linear(hidden_size, 1)
        self.coord_head = nn.Linear(hidden_size, 3) if use_offsets else None
        for head in (self.prob_head, self.coord_head):
            if head is not None:  # near-identity start: tiny but non-zero, so gradients and state still flow
                nn.init.normal_(head.weight, std=1e-3)
                nn.init.zeros_(head.bias)

    def init_hidden(self, batch: int = 1, device: torch.device | str | None = None) -> Tensor:
        """(L, batch, H) zeros: the state before the first round."""
        return torch.zeros(self.num_layers, batch, self.hidden_size, device=device)

    def forward(self, x: Tensor, hidden: Tensor | None = None) -> CorrectorOutput:
        """One round.

        Args:
            x: (B, 2K, in_features) state tensors X_t.
            hidden: (L, B, H) h_{t-1}, or None for zeros (first round).

        Returns:
            ``CorrectorOutput`` with delta_p (B, 2K), delta_c (B, 2K, 3) or None, hidden (L, B, H).
        """
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected (B, 2K, {self.in_features}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        expected = (self.num_layers, b, self.hidden_size)
        if hidden is not None and tuple(hidden.shape) != expected:
            raise ValueError(f"hidden: expected {expected}, got {tuple(hidden.shape)}")
        if hidden is None:
            hidden = self.init_hidden(b, x.device)
        emb = self.embed(x)  # (B, 2K, E)
        hidden = hidden.to(emb.dtype)
        if self.recurrence == "points":
            seq, h_t = self.gru(emb, hidden)  # (B, 2K, H), (L, B, H)
            context = h_t[-1][:, None, :].expand(b, n, self.hidden_size)
            feat = self.trunk(torch.cat([emb, seq, context], dim=-1))
        else:
            h_t = self._round_step(_pool_valid(emb, x[..., VALID_COLUMN] > 0), hidden)
            feat = self._rounds_trunk(emb, h_t[-1])
        delta_p = torch.tanh(self.prob_head(feat)).squeeze(-1)
        delta_c = None
        if self.coord_head is not None:
            delta_c = self.max_offset * torch.tanh(self.coord_head(feat))
        return CorrectorOutput(delta_p=delta_p, delta_c=delta_c, hidden=h_t)

    def _round_step(self, pooled: Tensor, hidden: Tensor) -> Tensor:
        """One GRU time step through every layer, (B, I) and (L, B, H) -> h_t (L, B, H).

        ``nn.GRU`` on a one-step sequence, with the layer's own weights, but without the module's per-call
        sequence handling, which costs more than the step itself at B = 1.
        """
        out, layer_input = [], pooled
        for layer in range(self.num_layers):
            layer_input = torch.gru_cell(
                layer_input, hidden[layer],
                getattr(self.gru, f"weight_ih_l{layer}"), getattr(self.gru, f"weight_hh_l{layer}"),
                getattr(self.gru, f"bias_ih_l{layer}"), getattr(self.gru, f"bias_hh_l{layer}"),
            )
            out.append(layer_input)
        return torch.stack(out)

    def _rounds_trunk(self, emb: Tensor, context: Tensor) -> Tensor:
        """trunk([emb, context]) of every point, (B, N, E) and (B, H) -> (B, N, H).

        The context is one row per batch, shared by its N points: its share of the trunk's linear layer
        (with the bias) is computed once, not N times, which is two thirds of the layer's work per click.
        """
        linear, activation = self.trunk[0], self.trunk[1]
        e = emb.shape[-1]
        shared = nn.functional.linear(context, linear.weight[:, e:], linear.bias)  # (B, H)
        per_point = linear.weight[:, :e].t().expand(emb.shape[0], -1, -1)  # (B, E, H)
        return activation(torch.baddbmm(shared[:, None, :], emb, per_point))


def _pool_valid(emb: Tensor, valid: Tensor) -> Tensor:
    """(B, N, E) embeddings, (B, N) bool -> (B, 2E) [mean, max] over the valid rows (zeros if none)."""
    if emb.shape[0] == 1:  # one round at inference: only the valid rows, no weights or masked copies
        rows = emb[0] if bool(valid.all()) else emb[0].index_select(0, torch.nonzero(valid[0]).squeeze(1))
        if rows.shape[0] == 0:
            return emb.new_zeros(1, 2 * emb.shape[-1])
        return torch.cat([rows.mean(0), rows.amax(0)])[None]
    weight = valid.to(emb.dtype)[..., None]
    count = weight.sum(1).clamp_min(1.0)
    mean = (emb * weight).sum(1) / count
    maxed = emb.masked_fill(~valid[..., None], float("-inf")).amax(1)
    maxed = torch.where(valid.any(1, keepdim=True), maxed, torch.zeros_like(maxed))
    return torch.cat([mean, maxed], dim=-1)


def apply_correction(
    logits: Tensor,
    roi: tuple[int, ...],
    volume_shape: tuple[int, int, int],
    coords: Tensor,
    valid: Tensor,
    delta_p: Tensor,
    delta_c: Tensor | None,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Write p + delta_p at the (moved) valid sampled voxels, in the logit domain (paper eq. 10).

    Args:
        logits: (rd, rh, rw) logits over ``roi``; never modified.
        roi, volume_shape, coords, valid, delta_p, delta_c, eps: as for ``corrected_voxels``.

    Returns:
        new_logits: a new (rd, rh, rw) tensor, bit-identical to ``logits`` except at ``touched``.
        touched: (m, 3) long local (z, y, x) of the written voxels, unique, in flat-index order.
    """
    voxels, values = corrected_voxels(logits, roi, volume_shape, coords, valid, delta_p, delta_c, eps)
    new_logits = logits.clone(memory_format=torch.contiguous_format)
    new_logits.view(-1).index_copy_(0, voxels, values)
    _, h, w = logits.shape
    touched = torch.stack([voxels // (h * w), (voxels // w) % h, voxels % w], dim=1)
    return new_logits, touched


def corrected_voxels(
    logits: Tensor,
    roi: tuple[int, ...],
    volume_shape: tuple[int, int, int],
    coords: Tensor,
    valid: Tensor,
    delta_p: Tensor,
    delta_c: Tensor | None,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Where and what ``apply_correction`` writes, without writing it (the caller picks the tensor written to).

    Args:
        logits: (rd, rh, rw) logits over ``roi``; only read.
        roi: half-open (z0, y0, x0, z1, y1, x1) in volume voxels.
        volume_shape: (D, H, W).
        coords: (2K, 3) long volume (z, y, x); rows [0, K) uncertainty, [K, 2K) error.
        valid: (2K,) bool; invalid rows (and rows with a non-finite delta) write nothing.
        delta_p: (2K,) (or (1, 2K)) probability offsets.
        delta_c: (2K, 3) (or (1, 2K, 3)) voxel offsets, rounded before use; None = no move.
        eps: probabilities are clamped to [eps, 1 - eps] before the logit.

    Returns:
        voxels: (m,) long flat (C-order) indices into ``logits``, unique, ascending.
        values: (m,) the new logits there, in ``logits.dtype``.
    """
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError("logits: expected a 3-D floating point tensor (rd, rh, rw)")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps: must be in (0, 0.5), got {eps}")
    z0, y0, x0, z1, y1, x1 = (int(v) for v in roi)
    if (z1 - z0, y1 - y0, x1 - x0) != tuple(logits.shape):
        raise ValueError(f"roi: extent of {tuple(roi)} does not match logits shape {tuple(logits.shape)}")
    device = logits.device
    delta_p = delta_p.reshape(-1) if delta_p.dim() == 2 and delta_p.shape[0] == 1 else delta_p
    if delta_c is not None and delta_c.dim() == 3 and delta_c.shape[0] == 1:
        delta_c = delta_c[0]
    rows = coords.shape[0]
    if coords.dim() != 2 or coords.shape[1] != 3 or rows % 2:
        raise ValueError(f"coords: expected (2K, 3), got {tuple(coords.shape)}")
    if tuple(valid.shape) != (rows,):
        raise ValueError(f"valid: expected ({rows},), got {tuple(valid.shape)}")
    if tuple(delta_p.shape) != (rows,):
        raise ValueError(f"delta_p: expected ({rows},), got {tuple(delta_p.shape)}")
    if delta_c is not None and tuple(delta_c.shape) != (rows, 3):
        raise ValueError(f"delta_c: expected ({rows}, 3), got {tuple(delta_c.shape)}")

    dp = delta_p.to(device=device, dtype=torch.float32)
    keep = valid.to(device) & torch.isfinite(dp)
    target = coords.to(device=device, dtype=torch.long)
    if delta_c is not None:
        dc = delta_c.to(device)
        keep &= torch.isfinite(dc).all(1)
        target = target + torch.round(torch.nan_to_num(dc, nan=0.0, posinf=0.0, neginf=0.0)).long()
    # Clamped to the volume, then to the ROI: the ROI lies inside the volume, so that is one clamp to the ROI.
    extent = tuple(logits.shape)
    local = torch.clamp(target - long_vector((z0, y0, x0), device), min=long_vector((0, 0, 0), device),
                        max=long_vector(tuple(e - 1 for e in extent), device))
    flat_idx = (local * strides(extent, device)).sum(1)

    # One voxel, one write: error rows beat uncertainty rows, and within a block the first row wins. In that
    # priority order a stable sort by voxel puts each voxel's winner first; rows that write nothing get the
    # index ``size`` and sort last.
    by_priority = _by_priority(rows, device)
    size = logits.numel()
    voxel_of, order = torch.sort(torch.where(keep, flat_idx, size).index_select(0, by_priority), stable=True)
    first = torch.ones_like(keep)
    first[1:] = voxel_of[1:] != voxel_of[:-1]
    first &= voxel_of < size
    at = torch.nonzero(first).squeeze(1)
    voxels = voxel_of.index_select(0, at)
    winner_dp = dp.index_select(0, by_priority.index_select(0, order.index_select(0, at)))

    p = torch.sigmoid(logits.reshape(-1).index_select(0, voxels).float())
    p_new = (p + winner_dp).clamp(eps, 1.0 - eps)
    return voxels, torch.logit(p_new).to(logits.dtype)


@lru_cache(maxsize=8)
def _by_priority(rows: int, device: torch.device) -> Tensor:
    """(rows,) the rows in write priority order: error rows K..2K-1, then uncertainty rows 0..K-1."""
    k = rows // 2
    with torch.inference_mode(False):
        return torch.cat([torch.arange(k, rows, device=device), torch.arange(k, device=device)])
