"""Algorithm 1 (uncertainty / error sampling) and the 8-d state tensor, on small hand-computed ROIs."""

from __future__ import annotations

import math

import pytest
import torch

from app.models.sampling import (
    SamplingConfig,
    build_corrector_input,
    mask_from_logits,
    sample_errors,
    sample_uncertain,
    uncertain_candidates,
    update_candidates,
)


def _line(values: list[float]) -> torch.Tensor:
    """A (1, 1, n) logits ROI: flat index == x."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flat(coords: torch.Tensor, shape: tuple[int, int, int]) -> list[int]:
    return ((coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]).tolist()


# --- SamplingConfig -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=0.6), "tau"),
        (dict(k=0), "k"),
        (dict(k=2.5), "k"),
        (dict(radius=-1.0), "radius"),
        (dict(radius=math.inf), "radius"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        SamplingConfig(**kwargs)


def test_config_defaults_are_the_papers():
    cfg = SamplingConfig()
    assert (cfg.tau, cfg.k, cfg.radius) == (0.1, 200, 4.0)


# --- uncertainty set ------------------------------------------------------------------------------


def test_tau_band_is_strict_with_paper_default():
    # sigmoid(0.40) = 0.59869 -> |p-0.5| = 0.0987 < 0.1 (in); sigmoid(0.41) = 0.60109 -> 0.1011 (out).
    logits = _line([0.41, 0.40, -0.41, -0.40, 5.0])
    coords, probs, valid = sample_uncertain(logits, tau=0.1, k=5)
    assert valid.tolist() == [True, True, False, False, False]
    assert sorted(coords[:2, 2].tolist()) == [1, 3]


def test_tau_band_edge_at_float32_resolution():
    # |p - 0.5| < 0.1  <=>  |z| < logit(0.6) = ln(1.5) = 0.405465108...; the float32 neighbours of ln(1.5)
    # fall on either side of the strict band, whatever the sign.
    edge = math.log(1.5)
    t = torch.tensor(edge, dtype=torch.float32)
    t = t if float(t) < edge else torch.nextafter(t, torch.tensor(0.0))
    below, above = float(t), float(torch.nextafter(t, torch.tensor(1.0)))
    assert below < edge < above
    _, _, valid = sample_uncertain(_line([above, -above, below, -below]), tau=0.1, k=4)
    assert valid.sum() == 2
    # tau = 0.5 keeps every finite logit but not saturated ones (|p - 0.5| = 0.5 is not < 0.5).
    _, _, valid = sample_uncertain(_line([30.0, -1e30, math.inf, math.nan]), tau=0.5, k=4)
    assert valid.tolist() == [True, True, False, False]


def test_equal_distances_from_opposite_signs_tie_by_flat_index():
    coords, _, valid = sample_uncertain(_line([0.3, 0.2, -0.2, 0.3, -0.3]), tau=0.1, k=5)
    assert coords[:5, 2].tolist() == [1, 2, 0, 3, 4] and valid.all()


def test_ranking_by_distance_then_flat_index():
    # flat:      0     1     2     3     4     5     6      7
    values = [0.30, 0.10, -0.10, 0.00, 0.10, 2.00, -0.35, 0.05]
    logits = torch.tensor(values).reshape(2, 2, 2)
    coords, probs, valid = sample_uncertain(logits, tau=0.1, k=10)
    n = int(valid.sum())
    assert n == 7  # 2.0 -> p = 0.88 is outside the band
    assert _flat(coords[:n], (2, 2, 2)) == [3, 7, 1, 2, 4, 0, 6]
    assert coords[:n].tolist()[0] == [0, 1, 1]
    torch.testing.assert_close(probs[:n], torch.sigmoid(torch.tensor(values)[[3, 7, 1, 2, 4, 0, 6]]))


@pytest.mark.parametrize(("k", "expected"), [(4, [3, 7, 1, 2]), (3, [3, 7, 1]), (1, [3])])
def test_truncation_keeps_the_most_uncertain_and_cuts_ties_by_flat_index(k, expected):
    values = [0.30, 0.10, 0.10, 0.00, 0.10, 2.00, -0.35, 0.05]
    coords, _, valid = sample_uncertain(torch.tensor(values).reshape(2, 2, 2), tau=0.1, k=k)
    assert valid.all()
    assert coords.shape == (k, 3)
    assert _flat(coords, (2, 2, 2)) == expected


def test_uncertain_matches_a_brute_force_reference_with_many_ties():
    g = _gen(3)
    logits = torch.randint(-6, 7, (6, 7, 8), generator=g).float() * 0.05  # many exact ties
    for k in (1, 17, 100, 400):
        coords, probs, valid = sample_uncertain(logits, tau=0.1, k=k)
        # Exact reference in float64: |p - 0.5| = |sigmoid(z) - 0.5| with z the stored float32 logit.
        dist = (torch.sigmoid(logits.reshape(-1).double()) - 0.5).abs().tolist()
        ref = sorted((round(d, 12), i) for i, d in enumerate(dist) if d < 0.1)[:k]
        n = int(valid.sum())
        assert n == len(ref)
        assert _flat(coords[:n], (6, 7, 8)) == [i for _, i in ref]


def test_uncertain_pads_exactly_to_k_with_zeros():
    coords, probs, valid = sample_uncertain(_line([5.0, -5.0, 0.05]), tau=0.1, k=6)
    assert coords.shape == (6, 3) and probs.shape == (6,) and valid.shape == (6,)
    assert valid.tolist() == [True] + [False] * 5
    assert coords.dtype == torch.long and valid.dtype == torch.bool
    assert coords[1:].abs().sum() == 0 and probs[1:].abs().sum() == 0


def test_uncertain_empty_set_is_all_padding():
    coords, probs, valid = sample_uncertain(torch.full((3, 3, 3), 9.0), tau=0.1, k=4)
    assert not valid.any() and coords.abs().sum() == 0 and probs.abs().sum() == 0


# --- error set -----------------------------------------------------------------------------------


def _one_click_errors(radius: float, logits: torch.Tensor | None = None, label: int = 1, k: int = 100):
    logits = torch.full((9, 9, 9), -5.0) if logits is None else logits  # mask 0 everywhere
    return sample_errors(
        logits, torch.tensor([[4, 4, 4]]), torch.tensor([label]), radius=radius, k=k, generator=_gen()
    )


def test_error_set_is_the_radius_ball_inclusive():
    coords, labels, valid = _one_click_errors(radius=2.0)
    members = {tuple(c) for c in coords[valid].tolist()}
    assert len(members) == 33  # integer points with d^2 in {0,1,2,3,4}: 1 + 6 + 12 + 8 + 6
    assert (6, 4, 4) in members  # distance exactly r
    assert (5, 5, 5) in members  # sqrt(3)
    assert (6, 5, 4) not in members  # sqrt(5) > r
    assert labels[valid].eq(1).all()
    coords, _, valid = _one_click_errors(radius=1.999)
    assert (6, 4, 4) not in {tuple(c) for c in coords[valid].tolist()}


def test_error_set_excludes_voxels_whose_mask_already_matches():
    logits = torch.full((9, 9, 9), -5.0)
    logits[4, 4, 5] = 5.0  # already foreground: agrees with the positive click
    logits[4, 4, 3] = 0.0  # p = 0.5 exactly: mask (p > 0.5) is 0, so still an error
    coords, _, valid = _one_click_errors(radius=1.0, logits=logits)
    members = {tuple(c) for c in coords[valid].tolist()}
    assert members == {(4, 4, 4), (3, 4, 4), (5, 4, 4), (4, 3, 4), (4, 5, 4), (4, 4, 3)}
    _, _, valid = _one_click_errors(radius=3.0, label=0)  # negative click on background: nothing wrong
    assert not valid.any()


def test_error_set_is_clipped_to_the_roi():
    coords, _, valid = sample_errors(
        torch.full((3, 3, 3), -5.0), torch.tensor([[0, 0, 0]]), torch.tensor([1]), 1.0, 10, _gen()
    )
    assert {tuple(c) for c in coords[valid].tolist()} == {(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)}


def test_overlapping_balls_take_the_label_of_the_latest_click():
    logits = _line([-5.0] * 7)  # mask 0 everywhere
    pos, neg = [0, 0, 1], [0, 0, 3]  # radius 2 balls: x in [0, 3] and x in [1, 5]
    coords, labels, valid = sample_errors(
        logits, torch.tensor([pos, neg]), torch.tensor([1, 0]), 2.0, 8, _gen()
    )
    # x = 1..3 belong to the later negative click (agrees with mask 0): only x = 0 is an error.
    assert coords[valid][:, 2].tolist() == [0] and labels[valid].tolist() == [1.0]
    coords, labels, valid = sample_errors(
        logits, torch.tensor([neg, pos]), torch.tensor([0, 1]), 2.0, 8, _gen()
    )
    assert coords[valid][:, 2].tolist() == [0, 1, 2, 3] and labels[valid].tolist() == [1.0] * 4


def test_error_padding_keeps_flat_order_and_does_not_consume_the_generator():
    g = _gen(5)
    before = g.get_state()
    coords, labels, valid = sample_errors(
        _line([-5.0] * 6), torch.tensor([[0, 0, 2]]), torch.tensor([1]), 1.0, 5, g
    )
    assert torch.equal(g.get_state(), before)
    assert valid.tolist() == [True, True, True, False, False]
    assert coords[:3, 2].tolist() == [1, 2, 3]
    assert coords[3:].abs().sum() == 0 and labels[3:].abs().sum() == 0


def test_error_subsample_is_seeded_and_reproducible():
    logits = torch.full((9, 9, 9), -5.0)

    def draw(seed: int) -> torch.Tensor:
        coords, _, valid = sample_errors(
            logits, torch.tensor([[4, 4, 4]]), torch.tensor([1]), 4.0, 20, _gen(seed)
        )
        assert valid.all()
        return coords

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    flat = _flat(a, (9, 9, 9))
    assert flat == sorted(set(flat))  # unique, flat-index order
    assert ((a - 4).pow(2).sum(1) <= 16).all()


def test_no_clicks_gives_all_padding():
    coords, labels, valid = sample_errors(
        torch.zeros(2, 2, 2),
        torch.zeros(0, 3, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        4.0,
        3,
        _gen(),
    )
    assert coords.shape == (3, 3) and not valid.any()


@pytest.mark.parametrize(
    ("clicks", "labels", "field"),
    [
        (torch.tensor([[1, 1, 1]]), torch.tensor([2]), "labels"),
        (torch.tensor([[1, 1]]), torch.tensor([1]), "clicks"),
        (torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([1]), "clicks"),
        (torch.tensor([[1, 1, 1]]), torch.tensor([1, 0]), "labels"),
    ],
)
def test_error_sampling_rejects_bad_clicks(clicks, labels, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        sample_errors(torch.zeros(3, 3, 3), clicks, labels, 1.0, 4, _gen())


# --- state tensor --------------------------------------------------------------------------------


def test_feature_layout_per_column():
    volume_shape = (10, 20, 30)
    roi = (2, 4, 6, 6, 10, 14)
    logits = torch.full((4, 6, 8), -5.0)
    logits[1, 2, 3] = 0.2  # the only uncertain voxel: volume (3, 6, 9); its mask is 1
    cfg = SamplingConfig(tau=0.1, k=8, radius=1.0)
    inp = build_corrector_input(
        logits, roi, volume_shape, torch.tensor([[4, 7, 10]]), torch.tensor([1]), (5, 10, 15), cfg, _gen()
    )
    assert inp.features.shape == (16, 8) and inp.features.dtype == torch.float32
    assert inp.coords.shape == (16, 3) and inp.coords.dtype == torch.long
    assert (inp.n_uncertain, inp.n_error, inp.k) == (1, 7, 8)

    p = float(torch.sigmoid(torch.tensor(0.2)))
    torch.testing.assert_close(inp.features[0], torch.tensor([3 / 10, 6 / 20, 9 / 30, p, 1.0, 0.5, 0.5, 0.5]))
    assert inp.coords[0].tolist() == [3, 6, 9]
    # Uncertainty padding rows 1..7: zero features, zero coords, invalid.
    assert inp.features[1:8].abs().sum() == 0 and inp.coords[1:8].abs().sum() == 0
    assert inp.valid.tolist() == [True] + [False] * 7 + [True] * 7 + [False]

    ball = [(3, 7, 10), (4, 6, 10), (4, 7, 9), (4, 7, 10), (4, 7, 11), (4, 8, 10), (5, 7, 10)]
    assert [tuple(c) for c in inp.coords[8:15].tolist()] == ball  # volume coords, flat-index order
    expected = torch.tensor([[z / 10, y / 20, x / 30, 1.0, 1.0, 0.5, 0.5, 0.5] for z, y, x in ball])
    torch.testing.assert_close(inp.features[8:15], expected)
    assert inp.features[15].abs().sum() == 0 and inp.coords[15].abs().sum() == 0


def test_negative_click_rows_carry_label_zero_and_stay_valid():
    logits = torch.full((3, 3, 3), 5.0)  # mask 1 everywhere
    cfg = SamplingConfig(k=2, radius=0.0)
    inp = build_corrector_input(
        logits,
        (0, 0, 0, 3, 3, 3),
        (3, 3, 3),
        torch.tensor([[1, 1, 1]]),
        torch.tensor([0]),
        (1, 1, 1),
        cfg,
        _gen(),
    )
    assert inp.n_error == 1
    torch.testing.assert_close(
        inp.features[2], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0, 1.0, 1 / 3, 1 / 3, 1 / 3])
    )


def test_build_without_clicks_and_rejects_bad_roi():
    logits = torch.zeros(2, 2, 2)
    cfg = SamplingConfig(k=3)
    no_clicks = torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    inp = build_corrector_input(logits, (0, 0, 0, 2, 2, 2), (4, 4, 4), *no_clicks, (1, 1, 1), cfg, _gen())
    assert inp.n_uncertain == 3 and inp.n_error == 0 and not inp.valid[3:].any()
    with pytest.raises(ValueError, match="^roi"):
        build_corrector_input(logits, (0, 0, 0, 3, 2, 2), (4, 4, 4), *no_clicks, (1, 1, 1), cfg, _gen())
    with pytest.raises(ValueError, match="^roi"):
        build_corrector_input(logits, (3, 0, 0, 5, 2, 2), (4, 4, 4), *no_clicks, (1, 1, 1), cfg, _gen())


def test_the_mask_is_a_positive_logit():
    assert mask_from_logits(torch.tensor([-0.5, 0.0, 0.5, 1.0, 3.0])).tolist() == [False, False, True, True, True]


@pytest.mark.parametrize(("kwargs", "field"), [(dict(tau=0.6), "tau"), (dict(tau=0.0), "tau"), (dict(k=0), "k")])
def test_uncertain_sampling_checks_its_own_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        sample_uncertain(_line([0.0, 1.0]), **{"tau": 0.1, "k": 2, **kwargs})


@pytest.mark.parametrize(("kwargs", "field"), [(dict(radius=-1.0), "radius"), (dict(k=0), "k")])
def test_error_sampling_checks_its_own_arguments(kwargs, field):
    args = {"radius": 1.0, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}"):
        sample_errors(_line([0.0, 1.0]), torch.tensor([[0, 0, 0]]), torch.tensor([1]), args["radius"], args["k"],
                      _gen())


def test_the_band_edge_itself_is_outside_when_it_is_a_float32():
    """A tau whose logit bound is exactly a float32 (here 1.0): |z| == 1.0 is not strictly inside."""
    tau = 0.23105857863000487  # 2 atanh(2 tau) == 1.0 in float64
    assert 2.0 * math.atanh(2.0 * tau) == 1.0
    below = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
    coords, _, valid = sample_uncertain(_line([1.0, below, -1.0, 5.0]), tau, 4)
    assert valid.tolist() == [True, False, False, False] and coords[0].tolist() == [0, 0, 1]


def test_the_band_edge_stays_outside_when_the_band_is_updated():
    tau = 0.23105857863000487  # the logit bound is exactly 1.0 (see above)
    before = _line([5.0, 0.5, 5.0, 5.0])
    after = _line([1.0, 0.5, 0.25, 5.0])  # written: 0 (to the edge) and 2 (into the band)
    updated = update_candidates(uncertain_candidates(before, tau), after, torch.tensor([0, 2]), tau)
    assert updated.tolist() == uncertain_candidates(after, tau).tolist() == [1, 2]


def test_given_candidates_do_not_skip_the_tau_check():
    with pytest.raises(ValueError, match="^tau"):
        sample_uncertain(_line([0.0, 1.0]), 0.6, 2, candidates=torch.tensor([0]))


def test_exactly_k_errors_are_all_kept_without_drawing():
    g = _gen(5)
    before = g.get_state()
    _, _, valid = sample_errors(_line([-5.0] * 6), torch.tensor([[0, 0, 2]]), torch.tensor([1]), 1.0, 3, g)
    assert valid.all() and torch.equal(g.get_state(), before)  # |E_t| == K: no subset drawn


@pytest.mark.parametrize("shape", [(838862, 4, 5), (1, 838862, 20)])
def test_coordinates_are_exact_beyond_float32_integers(shape):
    """Flat index 2**24 + 3 rounds up in float32 (to a multiple of h*w, resp. w): integer division only."""
    flat_index = 2**24 + 3
    logits = torch.full(shape, 5.0)
    logits.view(-1)[flat_index] = 0.0  # the only uncertain voxel
    coords, _, valid = sample_uncertain(logits, 0.1, 1)
    _, h, w = shape
    assert valid.all() and coords[0].tolist() == [flat_index // (h * w), (flat_index // w) % h, flat_index % w]


def test_input_rules_at_their_edges():
    for bad in (torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(2, 2)):  # each rule on its own
        with pytest.raises(ValueError, match=r"^logits: expected a 3-D floating point tensor \(rd, rh, rw\)$"):
            sample_uncertain(bad, 0.1, 2)
    with pytest.raises(ValueError, match="^logits"):
        sample_uncertain(torch.zeros(2, 2, 2).numpy(), 0.1, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^labels: expected an integer tensor of shape \(2,\)$"):
        sample_errors(torch.zeros(3, 3, 3), torch.tensor([[1, 1, 1], [0, 0, 0]]), torch.tensor([1, 0, 1]), 1.0, 4,
                      _gen())
    cfg = SamplingConfig(k=2)
    no_clicks = torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    for volume_shape in ((0, 4, 4), (4, 4)):
        with pytest.raises(ValueError, match="^volume_shape"):
            build_corrector_input(torch.zeros(0, 4, 4), (0, 0, 0, 0, 4, 4), volume_shape, *no_clicks, (0, 0, 0),
                                  cfg, _gen())
    with pytest.raises(ValueError, match="^roi: .* is empty"):
        build_corrector_input(torch.zeros(0, 2, 2), (1, 0, 0, 1, 2, 2), (4, 4, 4), *no_clicks, (1, 1, 1), cfg,
                              _gen())
    thin = build_corrector_input(torch.zeros(1, 2, 2), (0, 0, 0, 1, 2, 2), (1, 2, 2), *no_clicks, (0, 1, 1), cfg,
                                 _gen())  # a one-slice volume is a volume
    assert thin.n_uncertain == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = _gen(0)
    logits = torch.randn(12, 20, 24, generator=g) * 0.5
    clicks, labels = torch.tensor([[5, 9, 11], [6, 10, 12]]), torch.tensor([1, 0])
    cfg = SamplingConfig(k=50)
    cpu = build_corrector_input(
        logits, (2, 0, 0, 14, 20, 24), (16, 20, 24), clicks, labels, (5, 9, 11), cfg, _gen(1)
    )
    gpu = build_corrector_input(
        logits.cuda(),
        (2, 0, 0, 14, 20, 24),
        (16, 20, 24),
        clicks.cuda(),
        labels.cuda(),
        (5, 9, 11),
        cfg,
        _gen(1),
    )
    assert gpu.features.is_cuda and gpu.coords.is_cuda
    assert torch.equal(cpu.coords, gpu.coords.cpu())
    torch.testing.assert_close(cpu.features, gpu.features.cpu())
