"""The compact backbone: shapes, the cached-embedding budget, prompt semantics, gradients, input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.models import build_backbone
from app.models.compact import PROMPT_CHANNELS, CompactBackbone, FastCPUConv3d

EMBEDDING_BUDGET_BYTES = 8_000_000  # per window, float32


@pytest.fixture(scope="module")
def model() -> CompactBackbone:
    torch.manual_seed(0)
    backbone = build_backbone("compact")
    assert isinstance(backbone, CompactBackbone)
    return backbone.eval()


@pytest.fixture(scope="module")
def small() -> CompactBackbone:
    """The same design at a tiny size, for the tests that need backward passes or batches."""
    torch.manual_seed(0)
    return CompactBackbone(
        frame=(8, 32, 32),
        channels=(4, 8, 8, 16),
        strides=((2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)),
        encoder_blocks=(1, 2, 1, 2),
        decoder_channels=(4, 4, 8, 8),
        click_sigma=(1.0, 2.0, 2.0),
        refine_channels=2,
    ).eval()


@pytest.fixture(scope="module")
def image(model: CompactBackbone) -> torch.Tensor:
    """(1, 1, d, h, w): a bright blob on a noisy background, in [0, 1]."""
    gen = torch.Generator().manual_seed(1)
    d, h, w = model.frame
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    blob = ((z - d / 2) / 6) ** 2 + ((y - h / 2) / 20) ** 2 + ((x - w / 2) / 16) ** 2 < 1
    img = 0.3 + 0.4 * blob.float() + 0.05 * torch.randn(d, h, w, generator=gen)
    return img.clamp(0, 1)[None, None]


@pytest.fixture(scope="module")
def embedding(model: CompactBackbone, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model.encode(image)


BOX = torch.tensor([[10.0, 40.0, 44.0, 21.0, 87.0, 83.0]])
FG_CLICK = (torch.tensor([[[16.0, 64.0, 64.0]]]), torch.tensor([[1]]))


def _decode(
    model: CompactBackbone, embedding: tuple[torch.Tensor, ...], **prompts: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(embedding, **prompts)


# ---------------------------------------------------------------- shapes and budget


@pytest.mark.parametrize("batch", [1, 2])
def test_encode_decode_shapes(model: CompactBackbone, image: torch.Tensor, batch: int) -> None:
    images = image.repeat(batch, 1, 1, 1, 1)
    with torch.no_grad():
        emb = model.encode(images)
        logits = model.decode(emb, boxes=BOX.repeat(batch, 1))
    assert isinstance(emb, tuple) and all(isinstance(t, torch.Tensor) for t in emb)
    assert [tuple(t.shape) for t in emb] == [(batch, 1, *model.frame)] + [
        (batch, c, *size) for c, size in zip(model.channels, model.scale_sizes[1:], strict=True)
    ]
    assert logits.shape == (batch, 1, *model.frame) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_cached_embedding_fits_the_budget(
    model: CompactBackbone, embedding: tuple[torch.Tensor, ...]
) -> None:
    total = sum(t.numel() * t.element_size() for t in embedding)
    assert total == model.embedding_bytes(1)
    assert total <= EMBEDDING_BUDGET_BYTES
    # No cached feature map at the full frame resolution except the 1-channel image itself.
    assert [t.shape[1] for t in embedding if t.shape[2:] == model.frame] == [1]


def test_shipped_parameter_count_is_small(model: CompactBackbone) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000  # float32 weights well under the 50 MB that ships in the repo


def test_batch_items_are_independent(small: CompactBackbone) -> None:
    images = torch.rand(2, 1, *small.frame, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor([[1.0, 4.0, 5.0, 6.0, 20.0, 25.0], [0.0, 8.0, 8.0, 3.0, 30.0, 12.0]])
    points = torch.tensor([[[4.0, 10.0, 12.0]], [[2.0, 20.0, 9.0]]])
    labels = torch.tensor([[1], [0]])
    mask = torch.randn(2, 1, *small.frame, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        both = small.decode(small.encode(images), boxes, points, labels, mask)
        each = [
            small.decode(
                small.encode(images[i : i + 1]),
                boxes[i : i + 1],
                points[i : i + 1],
                labels[i : i + 1],
                mask[i : i + 1],
            )
            for i in range(2)
        ]
    torch.testing.assert_close(both, torch.cat(each), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- prompts


def test_decode_is_deterministic(model: CompactBackbone, embedding: tuple[torch.Tensor, ...]) -> None:
    points, labels = FG_CLICK
    mask = torch.randn(1, 1, *model.frame, generator=torch.Generator().manual_seed(2))
    a = _decode(model, embedding, boxes=BOX, points=points, point_labels=labels, mask_logits=mask)
    b = _decode(model, embedding, boxes=BOX, points=points, point_labels=labels, mask_logits=mask)
    assert torch.equal(a, b)


def test_each_prompt_changes_the_output(model: CompactBackbone, embedding: tuple[torch.Tensor, ...]) -> None:
    points, labels = FG_CLICK
    nothing = _decode(model, embedding)
    box = _decode(model, embedding, boxes=BOX)
    box_click = _decode(model, embedding, boxes=BOX, points=points, point_labels=labels)
    mask = torch.full((1, 1, *model.frame), -4.0)
    mask[..., 12:20, 50:80, 50:80] = 4.0
    box_mask = _decode(model, embedding, boxes=BOX, mask_logits=mask)
    assert (box - nothing).abs().max() > 1e-4
    assert (box_click - box).abs().max() > 1e-4
    assert (box_mask - box).abs().max() > 1e-4


def test_background_click_differs_from_foreground_click(
    model: CompactBackbone, embedding: tuple[torch.Tensor, ...]
) -> None:
    points, _ = FG_CLICK
    fg = _decode(model, embedding, boxes=BOX, points=points, point_labels=torch.tensor([[1]]))
    bg = _decode(model, embedding, boxes=BOX, points=points, point_labels=torch.tensor([[0]]))
    assert (fg - bg).abs().max() > 1e-4


def test_padding_points_have_no_effect(model: CompactBackbone, embedding: tuple[torch.Tensor, ...]) -> None:
    points, labels = FG_CLICK
    padded_points = torch.cat([points, torch.tensor([[[3.0, 100.0, 7.0], [-50.0, 1e6, 2.0]]])], dim=1)
    padded_labels = torch.tensor([[1, -1, -1]])
    plain = _decode(model, embedding, boxes=BOX, points=points, point_labels=labels)
    padded = _decode(model, embedding, boxes=BOX, points=padded_points, point_labels=padded_labels)
    assert torch.equal(plain, padded)
    only_padding = _decode(
        model, embedding, boxes=BOX, points=padded_points[:, 1:], point_labels=padded_labels[:, 1:]
    )
    assert torch.equal(only_padding, _decode(model, embedding, boxes=BOX))


def test_prompt_maps_box_is_exact_at_every_scale(model: CompactBackbone) -> None:
    maps = model.prompt_maps(1, torch.device("cpu"), boxes=BOX)
    assert [tuple(m.shape) for m in maps] == [(1, len(PROMPT_CHANNELS), *size) for size in model.scale_sizes]
    z0, y0, x0, z1, y1, x1 = (int(v) for v in BOX[0])
    expected = torch.zeros(1, 1, *model.frame)
    expected[..., z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = 1.0  # inclusive box
    for scale, stride in enumerate(model.scale_strides):
        # Coverage at a coarse scale is the average of the full-resolution box mask over each voxel.
        coarse = F.avg_pool3d(expected, kernel_size=stride) if scale else expected
        torch.testing.assert_close(maps[scale][:, :1], coarse, atol=1e-6, rtol=0)
        assert maps[scale][:, 1:].abs().max() == 0  # no clicks, no mask


def test_prompt_maps_clicks_are_visible_at_every_scale(model: CompactBackbone) -> None:
    points = torch.tensor([[[5.0, 99.0, 17.0], [20.0, 30.0, 110.0]]])
    labels = torch.tensor([[1, 0]])
    maps = model.prompt_maps(1, torch.device("cpu"), points=points, point_labels=labels)
    fg, bg = PROMPT_CHANNELS.index("foreground_clicks"), PROMPT_CHANNELS.index("background_clicks")
    assert maps[0][0, fg, 5, 99, 17] == pytest.approx(1.0)
    assert maps[0][0, bg, 20, 30, 110] == pytest.approx(1.0)
    for scale, stride in enumerate(model.scale_strides):
        for channel, (z, y, x) in ((fg, (5, 99, 17)), (bg, (20, 30, 110))):
            where = (z // stride[0], y // stride[1], x // stride[2])  # the coarse voxel holding the click
            # The width at a scale is at least half its voxel: >= exp(-1.5) wherever the click falls in it.
            assert maps[scale][0, channel][where] >= math.exp(-1.5), (scale, channel)
        assert maps[scale][0, fg].max() <= 1.0
    # A foreground click leaves the background map untouched far from any background click.
    assert maps[0][0, bg, 5, 99, 17] < 1e-6


def test_prompt_maps_mask_channels(model: CompactBackbone) -> None:
    logits = torch.randn(1, 1, *model.frame, generator=torch.Generator().manual_seed(3))
    maps = model.prompt_maps(1, torch.device("cpu"), mask_logits=logits)
    prev, flag = PROMPT_CHANNELS.index("previous_mask"), PROMPT_CHANNELS.index("mask_given")
    for scale, stride in enumerate(model.scale_strides):
        expected = F.avg_pool3d(torch.sigmoid(logits), kernel_size=stride)
        torch.testing.assert_close(maps[scale][:, prev : prev + 1], expected, atol=1e-6, rtol=1e-5)
        assert bool((maps[scale][:, flag] == 1).all())
    without = model.prompt_maps(1, torch.device("cpu"))
    assert all(m.abs().max() == 0 for m in without)


# ---------------------------------------------------------------- training


def test_gradients_reach_every_parameter(small: CompactBackbone) -> None:
    image = torch.rand(2, 1, *small.frame, generator=torch.Generator().manual_seed(8))
    boxes = torch.tensor([[1.0, 4.0, 5.0, 6.0, 20.0, 25.0], [0.0, 8.0, 8.0, 3.0, 30.0, 12.0]])
    points = torch.tensor([[[4.0, 10.0, 12.0], [2.0, 6.0, 6.0]], [[2.0, 20.0, 9.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [0, -1]])
    mask = torch.randn(2, 1, *small.frame, generator=torch.Generator().manual_seed(9))
    target = (image > 0.5).float()
    small.zero_grad()
    logits = small.decode(small.encode(image), boxes, points, labels, mask)
    F.binary_cross_entropy_with_logits(logits, target).backward()
    missing = [n for n, p in small.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    small.zero_grad()
    assert missing == []


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), ((1, 3, 3), (1, 2, 2), (0, 1, 1))],
)
def test_fast_cpu_conv_matches_conv3d(kernel: object, stride: object, padding: object) -> None:
    torch.manual_seed(5)
    reference = nn.Conv3d(5, 7, kernel, stride=stride, padding=padding)
    fast = nn.Conv3d(5, 7, kernel, stride=stride, padding=padding)
    fast.load_state_dict(reference.state_dict())
    fast.__class__ = FastCPUConv3d
    x = torch.randn(2, 5, 6, 10, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = fast(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- bad input


def test_bad_encode_input_names_the_argument(model: CompactBackbone) -> None:
    with pytest.raises(ValueError, match=r"^image: "):
        model.encode(torch.zeros(1, *model.frame))
    with pytest.raises(ValueError, match=r"^image: "):
        model.encode(torch.zeros(1, 1, 16, 128, 128))
    with pytest.raises(ValueError, match=r"^image: "):
        model.encode(torch.zeros(1, 1, *model.frame, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^image: "):
        model.encode(torch.zeros(1, 1, *model.frame, dtype=torch.float64))


@pytest.mark.parametrize(
    ("argument", "prompts"),
    [
        ("boxes", dict(boxes=torch.zeros(1, 4))),
        ("boxes", dict(boxes=torch.zeros(2, 6))),
        ("boxes", dict(boxes=torch.tensor([[5.0, 5.0, 5.0, 4.0, 9.0, 9.0]]))),
        ("boxes", dict(boxes=torch.tensor([[0.0, 0.0, 0.0, float("nan"), 9.0, 9.0]]))),
        ("points", dict(points=torch.zeros(1, 2, 2), point_labels=torch.ones(1, 2, dtype=torch.long))),
        ("points", dict(points=torch.full((1, 1, 3), float("inf")), point_labels=torch.ones(1, 1))),
        ("point_labels", dict(points=torch.zeros(1, 2, 3))),
        ("point_labels", dict(point_labels=torch.ones(1, 2))),
        ("point_labels", dict(points=torch.zeros(1, 2, 3), point_labels=torch.ones(1, 3))),
        ("point_labels", dict(points=torch.zeros(1, 1, 3), point_labels=torch.tensor([[2]]))),
        ("mask_logits", dict(mask_logits=torch.zeros(1, 1, 16, 128, 128))),
    ],
)
def test_bad_decode_input_names_the_argument(
    model: CompactBackbone,
    embedding: tuple[torch.Tensor, ...],
    argument: str,
    prompts: dict[str, torch.Tensor],
) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        model.decode(embedding, **prompts)


def test_bad_embedding_names_the_argument(
    model: CompactBackbone, embedding: tuple[torch.Tensor, ...]
) -> None:
    for bad in (embedding[0], embedding[:-1], (embedding[0], *embedding[2:], embedding[1])):
        with pytest.raises(ValueError, match=r"^embedding: "):
            model.decode(bad, boxes=BOX)


def test_bad_hyper_parameters_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^frame: "):
        CompactBackbone(frame=(30, 128, 128))
    with pytest.raises(ValueError, match=r"^strides: "):
        CompactBackbone(strides=((2, 2, 2),))
    with pytest.raises(ValueError, match=r"^click_sigma: "):
        CompactBackbone(click_sigma=(1.0, 0.0, 2.0))
    with pytest.raises(ValueError, match=r"^norm: "):
        CompactBackbone(norm="batch")
