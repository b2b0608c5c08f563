"""The GRU corrector (carried hidden state, bounded heads) and the sparse logit-domain update."""

from __future__ import annotations

import pytest
import torch

from app.models import get_model_config
from app.models.corrector import GRUCorrector, apply_correction
from app.models.sampling import SamplingConfig, build_corrector_input


def _corrector(seed: int = 0, **kwargs) -> GRUCorrector:
    torch.manual_seed(seed)
    return GRUCorrector(**{"embed_dim": 16, "hidden_size": 32, **kwargs}).eval()


def _features(batch: int = 1, rows: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, rows, 8, generator=torch.Generator().manual_seed(seed))


# --- GRUCorrector ---------------------------------------------------------------------------------


RECURRENCES = pytest.mark.parametrize("recurrence", ["points", "rounds"])


@RECURRENCES
def test_output_shapes_and_registry_kwargs(recurrence):
    model = _corrector(num_layers=2, recurrence=recurrence)
    out = model(_features(batch=3, rows=10), None)
    assert out.delta_p.shape == (3, 10)
    assert out.delta_c is not None and out.delta_c.shape == (3, 10, 3)
    assert out.hidden.shape == (2, 3, 32)
    cfg = get_model_config("compact")
    out = GRUCorrector(**{**cfg.corrector_kwargs, "recurrence": recurrence})(_features(rows=400), None)
    assert out.delta_p.shape == (1, 400) and out.hidden.shape == (1, 1, cfg.corrector_kwargs["hidden_size"])


def test_offsets_head_can_be_switched_off():
    out = _corrector(use_offsets=False)(_features(), None)
    assert out.delta_c is None


@RECURRENCES
def test_untrained_corrector_is_close_to_identity(recurrence):
    out = _corrector(recurrence=recurrence)(_features(rows=400), None)
    assert out.delta_p.abs().max() < 0.05
    assert torch.round(out.delta_c).abs().max() == 0


@RECURRENCES
def test_heads_are_bounded_even_with_huge_weights(recurrence):
    model = _corrector(max_offset=1.5, recurrence=recurrence)
    with torch.no_grad():
        for head in (model.prob_head, model.coord_head):
            head.weight.normal_(0.0, 1000.0)
    out = model(_features(rows=50) * 10, None)
    assert out.delta_p.abs().max() <= 1.0
    assert out.delta_c.abs().max() <= 1.5
    assert out.delta_c.abs().max() > 1.4  # saturates: the bound is the active constraint


@RECURRENCES
def test_hidden_state_is_carried_and_replays_are_bit_identical(recurrence):
    model = _corrector(recurrence=recurrence)
    x1, x2 = _features(seed=1), _features(seed=2)
    with torch.no_grad():
        first = model(x1, None)
        assert torch.equal(first.hidden, model(x1, model.init_hidden(1)).hidden)  # None == zeros
        fresh = model(x2, None)
        carried = model(x2, first.hidden)
        replay = model(x2, first.hidden.clone())
    assert not torch.equal(fresh.delta_p, carried.delta_p)  # same input, different history
    assert not torch.equal(fresh.hidden, carried.hidden)
    assert torch.equal(carried.delta_p, replay.delta_p)
    assert torch.equal(carried.delta_c, replay.delta_c)
    assert torch.equal(carried.hidden, replay.hidden)


@RECURRENCES
def test_gradients_reach_every_parameter(recurrence):
    model = _corrector(recurrence=recurrence).train()
    out = model(_features(batch=2), torch.randn(1, 2, 32))  # non-zero h_{t-1}: W_hh gets a gradient too
    (out.delta_p.sum() + out.delta_c.sum() + out.hidden.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_round_recurrence_ignores_padding_rows_and_point_order():
    model = _corrector(recurrence="rounds")
    x = _features(rows=12)
    x[0, :, 4] = torch.tensor([1.0] * 5 + [0.0] * 7)  # rows 5.. are padding
    noisy = x.clone()
    noisy[0, 5:, :4] = 9.0  # garbage in padding rows (validity 0) must not reach the state
    shuffled = x.clone()
    shuffled[0, :5] = x[0, [3, 1, 4, 0, 2]]
    with torch.no_grad():
        ref, a, b = model(x, None), model(noisy, None), model(shuffled, None)
    torch.testing.assert_close(a.hidden, ref.hidden)
    torch.testing.assert_close(b.hidden, ref.hidden)
    torch.testing.assert_close(b.delta_p[0, :5], ref.delta_p[0, [3, 1, 4, 0, 2]])


@RECURRENCES
def test_a_hidden_state_of_another_dtype_is_taken_in_the_models(recurrence):
    model, x = _corrector(recurrence=recurrence), _features()
    hidden = torch.rand(1, 1, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, other = model(x, hidden), model(x, hidden.double())
    assert other.hidden.dtype == torch.float32
    torch.testing.assert_close(other.delta_p, ref.delta_p)


def test_the_first_state_is_zeros_of_one_batch_by_default():
    model = _corrector(num_layers=2)
    assert torch.equal(model.init_hidden(), torch.zeros(2, 1, 32))
    assert model.use_offsets is True and _corrector(use_offsets=False).use_offsets is False


def test_unknown_recurrence_is_rejected():
    with pytest.raises(ValueError, match="^recurrence"):
        GRUCorrector(recurrence="sideways")


@pytest.mark.parametrize(
    ("x", "hidden", "field"),
    [
        (torch.zeros(1, 4, 7), None, "x"),
        (torch.zeros(4, 8), None, "x"),
        (torch.zeros(1, 4, 8), torch.zeros(1, 2, 32), "hidden"),
        (torch.zeros(1, 4, 8), torch.zeros(1, 1, 31), "hidden"),
    ],
)
def test_forward_rejects_bad_shapes(x, hidden, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        _corrector()(x, hidden)


# --- apply_correction -----------------------------------------------------------------------------

VOLUME = (10, 10, 10)
ROI = (1, 1, 1, 3, 4, 5)  # local extent (2, 3, 4), origin (1, 1, 1)


def _logits() -> torch.Tensor:
    return torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7))


def _rows(coords: list[list[int]], valid: list[bool], dp: list[float]):
    return torch.tensor(coords), torch.tensor(valid), torch.tensor(dp)


def _expected(z: float, dp: float, eps: float = 1e-4) -> torch.Tensor:
    p = torch.sigmoid(torch.tensor(z)) + dp
    return torch.logit(p.clamp(eps, 1 - eps))


def test_update_writes_only_valid_rows_in_the_logit_domain():
    logits = _logits()
    before = logits.clone()
    # rows 0-1 uncertainty, rows 2-3 error; row 1 is padding with a huge offset that must not land.
    coords, valid, dp = _rows(
        [[1, 1, 1], [2, 3, 4], [2, 2, 3], [0, 0, 0]], [True, False, True, False], [0.2, -0.9, -0.3, 0.9]
    )
    new, touched = apply_correction(logits, ROI, VOLUME, coords, valid, dp, None)
    assert torch.equal(logits, before)  # the input (kept for undo) is never mutated
    assert new.data_ptr() != logits.data_ptr()
    assert touched.tolist() == [[0, 0, 0], [1, 1, 2]]  # local, flat-index order
    changed = torch.zeros_like(logits, dtype=torch.bool)
    changed[0, 0, 0] = changed[1, 1, 2] = True
    assert torch.equal(new[~changed], logits[~changed])  # everything else bit-identical
    torch.testing.assert_close(new[0, 0, 0], _expected(logits[0, 0, 0].item(), 0.2))
    torch.testing.assert_close(new[1, 1, 2], _expected(logits[1, 1, 2].item(), -0.3))
    # Round trip: p' = p + dp.
    torch.testing.assert_close(torch.sigmoid(new[0, 0, 0]), torch.sigmoid(logits[0, 0, 0]) + 0.2)


def test_probabilities_are_clamped_before_the_logit():
    logits = torch.zeros(2, 3, 4)  # p = 0.5
    coords, valid, dp = _rows([[1, 1, 1], [1, 1, 2]], [True, True], [0.9, -0.9])
    new, _ = apply_correction(logits, ROI, VOLUME, coords, valid, dp, None, eps=1e-3)
    assert torch.isfinite(new).all()
    torch.testing.assert_close(torch.sigmoid(new[0, 0, 0]), torch.tensor(1 - 1e-3))
    torch.testing.assert_close(torch.sigmoid(new[0, 0, 1]), torch.tensor(1e-3))


def test_offsets_are_rounded_and_clamped_to_the_roi_and_volume():
    logits = _logits()
    coords = torch.tensor([[1, 1, 1], [2, 2, 2], [1, 1, 1], [0, 0, 0]])  # last: volume corner, outside ROI
    dc = torch.tensor([[0.4, 0.6, -1.6], [9.0, 9.0, 9.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    new, touched = apply_correction(
        logits, ROI, VOLUME, coords, torch.ones(4, dtype=torch.bool), torch.full((4,), 0.1), dc
    )
    # row 0: (1,1,1)+(0,1,-2) = (1,2,-1) -> ROI clamp (1,2,1) -> local (0,1,0)
    # row 1: (11,11,11) -> volume clamp (9,9,9) -> ROI clamp (2,3,4) -> local (1,2,3)
    # row 2: (-1,1,1) -> (0,1,1) -> (1,1,1) -> local (0,0,0); row 3: (0,0,0) -> local (0,0,0): error rows
    #        collide, the first error row (row 2) wins with the same dp.
    assert touched.tolist() == [[0, 0, 0], [0, 1, 0], [1, 2, 3]]
    changed = torch.zeros_like(logits, dtype=torch.bool)
    for z, y, x in touched.tolist():
        changed[z, y, x] = True
        torch.testing.assert_close(new[z, y, x], _expected(logits[z, y, x].item(), 0.1))
    assert torch.equal(new[~changed], logits[~changed])


def test_duplicate_targets_error_rows_win_then_first_row():
    logits = _logits()
    same = [1, 2, 3]
    # K = 3: rows 0-2 uncertainty, rows 3-5 error.
    coords = torch.tensor([same, same, [2, 2, 2], [2, 3, 4], same, same])
    dp = torch.tensor([0.11, 0.12, 0.13, 0.14, 0.15, 0.16])
    valid = torch.ones(6, dtype=torch.bool)
    new, touched = apply_correction(logits, ROI, VOLUME, coords, valid, dp, None)
    local = (0, 1, 2)
    torch.testing.assert_close(new[local], _expected(logits[local].item(), 0.15))  # first error row (4)
    # Without the error rows the first uncertainty row (0) wins.
    valid[4:] = False
    new, _ = apply_correction(logits, ROI, VOLUME, coords, valid, dp, None)
    torch.testing.assert_close(new[local], _expected(logits[local].item(), 0.11))
    assert touched.shape == (3, 3)


def test_apply_rejects_mismatched_inputs():
    logits = _logits()
    coords, valid, dp = _rows([[1, 1, 1], [1, 1, 1]], [True, True], [0.1, 0.1])
    with pytest.raises(ValueError, match="^roi"):
        apply_correction(logits, (0, 0, 0, 2, 3, 3), VOLUME, coords, valid, dp, None)
    with pytest.raises(ValueError, match="^delta_p"):
        apply_correction(logits, ROI, VOLUME, coords, valid, dp[:1], None)
    with pytest.raises(ValueError, match="^delta_c"):
        apply_correction(logits, ROI, VOLUME, coords, valid, dp, torch.zeros(2, 2))


def test_apply_rejects_bad_logits_eps_and_coords():
    coords, valid, dp = _rows([[1, 1, 1], [1, 1, 1]], [True, True], [0.1, 0.1])
    for logits in (torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(3, 4)):  # each rule on its own
        with pytest.raises(ValueError, match=r"^logits: expected a 3-D floating point tensor \(rd, rh, rw\)$"):
            apply_correction(logits, ROI, VOLUME, coords, valid, dp, None)
    for eps in (0.0, 0.5):  # the open interval (0, 0.5)
        with pytest.raises(ValueError, match="^eps"):
            apply_correction(_logits(), ROI, VOLUME, coords, valid, dp, None, eps=eps)
    for bad in (torch.ones(3, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)):  # odd rows; 2 columns
        with pytest.raises(ValueError, match="^coords"):
            apply_correction(_logits(), ROI, VOLUME, bad, torch.ones(bad.shape[0], dtype=torch.bool),
                             torch.full((bad.shape[0],), 0.1), None)
    with pytest.raises(ValueError, match="^delta_p"):  # only a leading batch of one is dropped
        apply_correction(_logits(), ROI, VOLUME, torch.ones(4, 3, dtype=torch.long), torch.ones(4, dtype=torch.bool),
                         torch.full((2, 2), 0.1), None)


def test_apply_takes_batched_deltas_and_other_dtypes():
    """A leading batch of one (the corrector's output) and other float/integer dtypes give the same update."""
    logits = _logits()
    coords = torch.tensor([[1, 1, 1], [2, 3, 4], [2, 2, 3], [1, 2, 2]])
    valid = torch.ones(4, dtype=torch.bool)
    dp = torch.tensor([0.2, -0.3, 0.1, 0.05])
    dc = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    ref_new, ref_touched = apply_correction(logits, ROI, VOLUME, coords, valid, dp, dc)
    for args in ((coords, dp[None], dc[None]), (coords.float(), dp.double(), dc), (coords.int(), dp, dc.double())):
        new, touched = apply_correction(logits, ROI, VOLUME, args[0], valid, args[1], args[2])
        assert torch.equal(touched, ref_touched) and torch.equal(new, ref_new)
    half, _ = apply_correction(logits.half(), ROI, VOLUME, coords, valid, dp, dc)  # written in the logits' dtype
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref_new, atol=2e-3, rtol=2e-3)
    strided = logits.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # same values, not contiguous
    assert not strided.is_contiguous()
    new, _ = apply_correction(strided, ROI, VOLUME, coords, valid, dp, dc)
    assert torch.equal(new, ref_new)


def test_a_non_finite_offset_drops_only_its_own_row():
    logits = _logits()
    coords, valid, dp = _rows([[1, 1, 1], [2, 3, 4]], [True, True], [0.2, 0.3])
    dc = torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])
    new, touched = apply_correction(logits, ROI, VOLUME, coords, valid, dp, dc)
    assert touched.tolist() == [[1, 2, 3]]
    torch.testing.assert_close(new[1, 2, 3], _expected(logits[1, 2, 3].item(), 0.3))


def test_offsets_clamp_to_the_volume_edges_where_the_roi_reaches_them():
    """An ROI on the volume's first and last voxels: moved points stop at the edges, 0 and D-1."""
    volume = (4, 4, 4)
    roi = (0, 0, 0, 4, 4, 4)
    coords = torch.tensor([[0, 0, 0], [3, 3, 3]])
    for dc in (torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]), None):
        _, touched = apply_correction(torch.zeros(4, 4, 4), roi, volume, coords, torch.ones(2, dtype=torch.bool),
                                      torch.full((2,), 0.1), dc)
        assert touched.tolist() == [[0, 0, 0], [3, 3, 3]]


def test_the_first_error_row_beats_every_uncertainty_row():
    logits = _logits()
    # K = 2: rows 0-1 uncertainty, rows 2-3 error; rows 0 and 2 (the first error row) land on one voxel.
    coords = torch.tensor([[1, 1, 1], [2, 3, 4], [1, 1, 1], [2, 2, 2]])
    new, _ = apply_correction(logits, ROI, VOLUME, coords, torch.ones(4, dtype=torch.bool),
                              torch.tensor([0.11, 0.12, 0.13, 0.14]), None)
    torch.testing.assert_close(new[0, 0, 0], _expected(logits[0, 0, 0].item(), 0.13))


# --- one full round --------------------------------------------------------------------------------


@pytest.mark.parametrize("use_offsets", [False, True])
def test_a_round_changes_nothing_outside_the_sampled_coordinates(use_offsets):
    volume_shape = (12, 16, 16)
    roi = (2, 3, 4, 10, 13, 14)
    logits = torch.randn(8, 10, 10, generator=torch.Generator().manual_seed(0))
    model = _corrector(use_offsets=use_offsets, max_offset=0.0 if use_offsets else 2.0)
    inp = build_corrector_input(
        logits,
        roi,
        volume_shape,
        torch.tensor([[5, 6, 7]]),
        torch.tensor([1]),
        (5, 6, 7),
        SamplingConfig(tau=0.2, k=30, radius=2.0),
        torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        out = model(inp.features[None], None)
    new, touched = apply_correction(
        logits, roi, volume_shape, inp.coords, inp.valid, out.delta_p, out.delta_c
    )
    sampled = torch.zeros_like(logits, dtype=torch.bool)
    local = inp.coords[inp.valid] - torch.tensor(roi[:3])
    sampled[local[:, 0], local[:, 1], local[:, 2]] = True
    assert touched.shape[0] == int(sampled.sum())
    assert torch.equal(new[~sampled], logits[~sampled])
