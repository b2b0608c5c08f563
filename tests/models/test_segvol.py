"""SegVol: published parameter names and shapes, prompt semantics, decode() contract."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from app.models import get_model_config
from app.models.segvol import SegVol

REFERENCE_LIST = Path(__file__).resolve().parents[1] / "fixtures" / "segvol_state_dict.tsv"
FRAME = (16, 64, 64)  # segvol-test


def _reference() -> dict[str, tuple[tuple[int, ...], str]]:
    """The published state_dict list: key -> (shape, dtype)."""
    out = {}
    for line in REFERENCE_LIST.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


def _listed(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {"model." + k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}


def _segvol(config: str, **kwargs) -> SegVol:
    return SegVol(**get_model_config(config).backbone_kwargs, **kwargs)


@pytest.fixture(scope="module")
def base_with_text() -> SegVol:
    with torch.device("meta"):  # names and shapes only: no memory, no init time
        return _segvol("segvol-base", with_text=True)


@pytest.fixture(scope="module")
def tiny() -> SegVol:
    torch.manual_seed(0)
    return _segvol("segvol-test", with_text=True).eval()


@pytest.fixture(scope="module")
def embedding(tiny: SegVol) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return tiny.encode(torch.rand((1, 1, *FRAME), generator=generator))


def test_segvol_base_state_dict_equals_the_published_list(base_with_text: SegVol) -> None:
    reference = _reference()
    assert len(reference) == 498
    got = _listed(base_with_text)
    assert sorted(set(reference) - set(got)) == []
    assert sorted(set(got) - set(reference)) == []
    assert {k: v for k, v in got.items() if reference[k] != v} == {}
    assert list(got) == list(reference)  # same order too


def test_segvol_base_without_text_is_the_list_minus_the_text_branch() -> None:
    with torch.device("meta"):
        model = _segvol("segvol-base", with_text=False)
    expected = {k: v for k, v in _reference().items() if not k.startswith("model.text_encoder.")}
    assert _listed(model) == expected


def test_encode_returns_the_token_grid_as_a_feature_map(tiny: SegVol, embedding: torch.Tensor) -> None:
    assert tiny.embedding_size == (4, 4, 4)
    assert embedding.shape == (1, 48, 4, 4, 4)
    with pytest.raises(ValueError, match="^image"):
        tiny.encode(torch.zeros(1, 1, 16, 64, 32))


def test_decode_gives_frame_sized_logits_for_each_prompt(tiny: SegVol, embedding: torch.Tensor) -> None:
    boxes = torch.tensor([[2.0, 10, 10, 12, 40, 50], [0.0, 0, 0, 15, 63, 63]])
    with torch.no_grad():
        logits = tiny.decode(embedding, boxes=boxes)  # one cached view answering two prompts
    assert logits.shape == (2, 1, *FRAME)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])


def test_a_box_changes_the_logits(tiny: SegVol, embedding: torch.Tensor) -> None:
    with torch.no_grad():
        without = tiny.decode(embedding)
        with_box = tiny.decode(embedding, boxes=torch.tensor([[2.0, 10, 10, 12, 40, 50]]))
    assert without.shape == with_box.shape == (1, 1, *FRAME)
    assert (with_box - without).abs().max() > 1e-4


def test_box_corners_are_shifted_to_voxel_centres_and_typed(tiny: SegVol) -> None:
    encoder = tiny.prompt_encoder
    box = torch.tensor([[2.0, 10, 10, 12, 40, 50]])
    sparse, dense = encoder(None, box)
    corners = torch.tensor([[[2.5, 10.5, 10.5], [12.5, 40.5, 50.5]]])
    expected = encoder.encode_coords(corners)
    expected[:, 0] += encoder._point_embedding(2)[0]
    expected[:, 1] += encoder._point_embedding(3)[0]
    assert sparse.shape == (1, 2, 48)
    torch.testing.assert_close(sparse, expected)
    assert dense.shape == (1, 48, 4, 4, 4)


def test_a_padding_point_is_appended_only_without_a_box(tiny: SegVol) -> None:
    encoder = tiny.prompt_encoder
    points = (torch.tensor([[[5.0, 30, 30]]]), torch.tensor([[1]]))
    sparse_points_only, _ = encoder(points, None)
    sparse_with_box, _ = encoder(points, torch.tensor([[2.0, 10, 10, 12, 40, 50]]))
    assert sparse_points_only.shape[1] == 2  # point + padding
    torch.testing.assert_close(sparse_points_only[0, 1], encoder.not_a_point_embed.weight[0])
    assert sparse_with_box.shape[1] == 3  # point + two corners


def test_padding_points_are_ignored_wherever_they_are(tiny: SegVol, embedding: torch.Tensor) -> None:
    box = torch.tensor([[2.0, 10, 10, 12, 40, 50]])
    labels = torch.tensor([[1, -1]])
    with torch.no_grad():
        a = tiny.decode(embedding, box, torch.tensor([[[5.0, 30, 30], [0.0, 0, 0]]]), labels)
        b = tiny.decode(embedding, box, torch.tensor([[[5.0, 30, 30], [15.0, 63, 1]]]), labels)
        c = tiny.decode(
            embedding, box, torch.tensor([[[5.0, 30, 30], [15.0, 63, 1]]]), torch.tensor([[1, 0]])
        )
    torch.testing.assert_close(a, b)
    assert (c - a).abs().max() > 1e-4


def test_reference_point_normalisation_is_the_published_quirk(tiny: SegVol) -> None:
    encoder = tiny.prompt_encoder
    d, h, w = FRAME
    coords = torch.tensor([[[5.5, 30.5, 20.5]]])
    # SegVol: axis 0 / image_size[1], axis 1 / image_size[0], axis 2 / image_size[2].
    expected = encoder.pe_layer._pe_encoding(torch.tensor([[[5.5 / h, 30.5 / d, 20.5 / w]]]))
    torch.testing.assert_close(encoder.encode_coords(coords), expected)


def test_consistent_point_normalisation_matches_the_dense_grid(tiny: SegVol) -> None:
    consistent = copy.deepcopy(tiny.prompt_encoder)
    consistent.reference_point_normalisation = False
    dense = consistent.get_dense_pe()[0]  # (C, 4, 4, 4)
    cell = (1, 2, 3)
    patch = (4, 16, 16)
    centre = torch.tensor([[[(i + 0.5) * p for i, p in zip(cell, patch, strict=True)]]])
    torch.testing.assert_close(consistent.encode_coords(centre)[0, 0], dense[:, 1, 2, 3])
    assert not torch.allclose(tiny.prompt_encoder.encode_coords(centre)[0, 0], dense[:, 1, 2, 3])


def test_the_point_normalisation_flag_changes_the_logits(tiny: SegVol, embedding: torch.Tensor) -> None:
    torch.manual_seed(0)
    other = _segvol("segvol-test", with_text=True, reference_point_normalisation=False).eval()
    other.load_state_dict(tiny.state_dict())
    points, labels = torch.tensor([[[5.0, 30, 20]]]), torch.tensor([[1]])
    with torch.no_grad():
        assert (
            tiny.decode(embedding, None, points, labels) - other.decode(embedding, None, points, labels)
        ).abs().max() > 1e-4
        torch.testing.assert_close(tiny.decode(embedding), other.decode(embedding))  # prompt-free: same


def test_a_text_embedding_changes_the_logits(tiny: SegVol, embedding: torch.Tensor) -> None:
    box = torch.tensor([[2.0, 10, 10, 12, 40, 50]])
    token_ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        text = tiny.embed_text(token_ids)
        assert text.shape == (1, 48)
        with_text = tiny.decode(embedding, boxes=box, text_embedding=text)
        without = tiny.decode(embedding, boxes=box)
    assert (with_text - without).abs().max() > 1e-4
    assert not any(p.requires_grad for p in tiny.text_encoder.clip_text_model.parameters())  # frozen


def test_text_needs_the_text_branch() -> None:
    model = _segvol("segvol-test", with_text=False)
    assert not hasattr(model, "text_encoder")
    with pytest.raises(ValueError, match="^input_ids"):
        model.embed_text(torch.tensor([[49406, 49407]]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"boxes": torch.zeros(1, 4)}, "boxes"),
        ({"points": torch.zeros(1, 2, 3)}, "point_labels"),
        ({"points": torch.zeros(1, 2, 3), "point_labels": torch.zeros(1, 3)}, "point_labels"),
        ({"points": torch.zeros(1, 2), "point_labels": torch.zeros(1, 2)}, "points"),
        ({"text_embedding": torch.zeros(1, 7)}, "text_embedding"),
    ],
)
def test_decode_rejects_malformed_prompts(
    tiny: SegVol, embedding: torch.Tensor, kwargs: dict, field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        tiny.decode(embedding, **kwargs)


def test_decode_rejects_a_foreign_embedding(tiny: SegVol) -> None:
    with pytest.raises(ValueError, match="^embedding"):
        tiny.decode(torch.zeros(1, 48, 4, 4, 8))
