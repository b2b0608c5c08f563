"""The corrector's forward pass against a reference written here from the SPEC's description (numpy, float64):
per-point MLP embedding with GELU, a GRU (PyTorch's gate equations, stated below) started from h_{t-1},
a GELU trunk over [embedding, GRU output, context], and tanh-bounded heads (delta_p in (-1, 1), delta_c in
(-max_offset, max_offset)). The heads are given large weights so that the bounds are active, not the near-
identity start: a missing activation or bound changes the numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.models.corrector import VALID_COLUMN, GRUCorrector


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _linear(p: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def _gru_step(p: dict[str, np.ndarray], layer: int, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """r = s(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x + b_in + r (W_hn h + b_hn)),
    h' = (1 - z) n + z h; PyTorch stacks the (r, z, n) blocks in that order."""
    gi = x @ p[f"gru.weight_ih_l{layer}"].T + p[f"gru.bias_ih_l{layer}"]
    gh = h @ p[f"gru.weight_hh_l{layer}"].T + p[f"gru.bias_hh_l{layer}"]
    i_r, i_z, i_n = np.split(gi, 3, axis=-1)
    h_r, h_z, h_n = np.split(gh, 3, axis=-1)
    r, z = _sigmoid(i_r + h_r), _sigmoid(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


def _reference(model: GRUCorrector, x: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    emb = _gelu(_linear(p, "embed.2", _gelu(_linear(p, "embed.0", x))))  # (B, N, E)
    b, n, _ = x.shape
    h = hidden.copy()  # (L, B, H)
    if model.recurrence == "points":
        outputs = np.zeros((b, n, model.hidden_size))
        for i in range(n):  # the GRU runs over the points, layer by layer at each step
            inp = emb[:, i]
            for layer in range(model.num_layers):
                h[layer] = _gru_step(p, layer, inp, h[layer])
                inp = h[layer]
            outputs[:, i] = inp
        context = np.repeat(h[-1][:, None, :], n, axis=1)
        trunk_in = np.concatenate([emb, outputs, context], axis=-1)
    else:  # one step per round on [mean, max] of the valid points' embeddings
        valid = x[..., VALID_COLUMN] > 0
        pooled = np.zeros((b, 2 * emb.shape[-1]))
        for j in range(b):
            rows = emb[j][valid[j]]
            if len(rows):
                pooled[j] = np.concatenate([rows.mean(0), rows.max(0)])
        inp = pooled
        for layer in range(model.num_layers):
            h[layer] = _gru_step(p, layer, inp, h[layer])
            inp = h[layer]
        trunk_in = np.concatenate([emb, np.repeat(h[-1][:, None, :], n, axis=1)], axis=-1)
    feat = _gelu(_linear(p, "trunk.0", trunk_in))
    delta_p = np.tanh(_linear(p, "prob_head", feat))[..., 0]
    delta_c = model.max_offset * np.tanh(_linear(p, "coord_head", feat))
    return delta_p, delta_c, h


@pytest.mark.parametrize(("recurrence", "layers"), [("points", 1), ("points", 2), ("rounds", 1), ("rounds", 2)])
def test_forward_matches_the_reference_equations(recurrence: str, layers: int) -> None:
    torch.manual_seed(3)
    model = GRUCorrector(embed_dim=12, hidden_size=10, num_layers=layers, max_offset=2.0,
                         recurrence=recurrence).double().eval()
    with torch.no_grad():
        for head in (model.prob_head, model.coord_head):
            assert head is not None
            head.weight.normal_(0.0, 3.0)  # saturating heads: the tanh bounds are active
            head.bias.normal_(0.0, 1.0)
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.5, size=(3, 9, 8))
    x[..., VALID_COLUMN] = (rng.random((3, 9)) > 0.3).astype(np.float64)
    x[1, :, VALID_COLUMN] = 0.0  # a sample with no valid point: its pooled input is zeros
    x[2, :, VALID_COLUMN] = 0.0
    x[2, 4, VALID_COLUMN] = 1.0  # one valid point: its mean is that point
    hidden = rng.normal(0.0, 0.5, size=(layers, 3, 10))

    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(hidden))
    delta_p, delta_c, h = _reference(model, x, hidden)

    assert out.delta_c is not None
    np.testing.assert_allclose(out.delta_p.numpy(), delta_p, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.delta_c.numpy(), delta_c, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.hidden.numpy(), h, rtol=1e-9, atol=1e-10)
    assert np.abs(delta_c).max() > 1.0  # the offsets reach well past the tanh's linear range
