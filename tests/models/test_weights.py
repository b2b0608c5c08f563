"""Checkpoint loading: published layouts load exactly, everything else is refused by name."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from app.models import build_corrector, get_model_config, load_model
from app.models.__main__ import main as cli_main
from app.models.segvol import SegVol
from app.models.weights import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_into,
    read_checkpoint,
    save_checkpoint,
)

CONFIG = "segvol-test"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _segvol(with_text: bool, seed: int = 0) -> SegVol:
    torch.manual_seed(seed)
    return SegVol(**get_model_config(CONFIG).backbone_kwargs, with_text=with_text)


@pytest.fixture(scope="module")
def source() -> SegVol:
    """The 'published' model whose weights the files below carry."""
    return _segvol(with_text=True, seed=1)


def _published(
    model: nn.Module,
    prefix: str = "model.",
    *,
    norm_cross_attn: bool = True,
    text: bool = True,
    legacy_clip: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's state_dict as the published files lay it out."""
    out = {}
    for key, value in model.state_dict().items():
        if not norm_cross_attn and ".norm_cross_attn." in key:
            continue
        if not text and key.startswith("text_encoder."):
            continue
        if legacy_clip and key.startswith("text_encoder.clip_text_model."):
            key = key.replace("clip_text_model.", "clip_text_model.text_model.")
        out[prefix + key] = value.clone()
    if legacy_clip and text:
        legacy_buffer = "text_encoder.clip_text_model.text_model.embeddings.position_ids"
        out[prefix + legacy_buffer] = torch.arange(77)[None]
    return out


def _assert_loaded(target: nn.Module, reference: nn.Module, skip: tuple[str, ...] = ()) -> None:
    expected = reference.state_dict()
    for key, value in target.state_dict().items():
        if any(s in key for s in skip):
            continue
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("norm_cross_attn", [True, False], ids=["monai>=1.3", "monai<1.3"])
@pytest.mark.parametrize(
    "layout",
    ["hf_pytorch_model_bin", "segfm_model_state_dict", "segvol_v1_module_nested", "module_state_dict_nested"],
)
def test_published_layouts_load_exactly(
    tmp_path: Path, source: SegVol, layout: str, norm_cross_attn: bool
) -> None:
    if layout == "hf_pytorch_model_bin":
        payload: dict = _published(source, "model.", norm_cross_attn=norm_cross_attn)
    elif layout == "segfm_model_state_dict":
        payload = {
            "model_state_dict": _published(source, "model.", norm_cross_attn=norm_cross_attn),
            "epoch": 7,
        }
    elif layout == "segvol_v1_module_nested":
        payload = {"model": _published(source, "module.", norm_cross_attn=norm_cross_attn), "epoch": 2000}
    else:
        payload = {"state_dict": _published(source, "module.model.", norm_cross_attn=norm_cross_attn)}
    path = tmp_path / "weights.pth"
    torch.save(payload, path)

    target = _segvol(with_text=True, seed=2)
    report = load_checkpoint(path, target, config_name=CONFIG)

    _assert_loaded(target, source, skip=() if norm_cross_attn else (".norm_cross_attn.",))
    n_cross = sum(".norm_cross_attn." in k for k in source.state_dict())
    assert n_cross == 4  # 2 ViT blocks x (weight, bias)
    assert len(report.ignored_keys) == (0 if norm_cross_attn else n_cross)
    assert all(".norm_cross_attn." in k for k in report.ignored_keys)
    assert report.n_tensors == len(source.state_dict()) - len(report.ignored_keys)
    assert report.config == CONFIG and not report.has_corrector


def test_text_keys_are_ignored_when_text_is_opted_out(tmp_path: Path, source: SegVol) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_published(source), path)
    target = _segvol(with_text=False, seed=2)
    report = load_checkpoint(path, target, config_name=CONFIG)
    _assert_loaded(target, source)
    n_text = sum(k.startswith("text_encoder.") for k in source.state_dict())
    assert len(report.ignored_keys) == n_text
    assert "text branch not built" in report.summary()


def test_legacy_clip_layout_is_renamed_and_loads(tmp_path: Path, source: SegVol) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_published(source, legacy_clip=True), path)
    target = _segvol(with_text=True, seed=2)
    report = load_checkpoint(path, target, config_name=CONFIG)
    _assert_loaded(target, source)
    assert report.ignored_keys == ("text_encoder.clip_text_model.embeddings.position_ids",)


def test_a_text_model_refuses_a_file_without_text(tmp_path: Path, source: SegVol) -> None:
    path = tmp_path / "no_text.bin"
    torch.save(_published(source, text=False), path)
    with pytest.raises(CheckpointError, match=r"missing: text_encoder\.clip_text_model\.embeddings"):
        load_checkpoint(path, _segvol(with_text=True), config_name=CONFIG)


def test_own_format_round_trip_with_corrector_and_meta(tmp_path: Path, source: SegVol) -> None:
    corrector = nn.GRU(8, 16)
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, CONFIG, source, corrector, meta={"steps": 10, "data": ["a", "b"], "dice": 0.5})

    ckpt = read_checkpoint(path)
    assert ckpt.source_format == CHECKPOINT_FORMAT and ckpt.config == CONFIG and ckpt.corrector is not None
    target, target_corrector = _segvol(with_text=True, seed=2), nn.GRU(8, 16)
    report = load_checkpoint(path, target, target_corrector, config_name=CONFIG)
    _assert_loaded(target, source)
    _assert_loaded(target_corrector, corrector)
    assert report.has_corrector and report.meta == {"steps": 10, "data": ["a", "b"], "dice": 0.5}
    assert report.ignored_keys == ()

    with pytest.raises(CheckpointError, match="^config: .*'segvol-test', not 'segvol-base'"):
        load_checkpoint(path, target, config_name="segvol-base")
    with pytest.raises(CheckpointError, match=r"\(corrector\).*unexpected: weight_ih_l1"):
        load_checkpoint(_with_extra_corrector_key(tmp_path, path), target, nn.GRU(8, 16), config_name=CONFIG)


def test_load_model_builds_the_files_config_with_its_corrector(tmp_path: Path, source: SegVol) -> None:
    torch.manual_seed(3)
    corrector = build_corrector(CONFIG)
    path = tmp_path / "shipped.pt"
    save_checkpoint(path, CONFIG, source, corrector, meta={"trained_on": "synthetic"})
    backbone, loaded_corrector, report = load_model(path)  # config from the file, text opted out
    assert isinstance(backbone, SegVol) and not backbone.with_text
    assert loaded_corrector is not None
    _assert_loaded(backbone, _without_text(source))
    _assert_loaded(loaded_corrector, corrector)
    assert report.config == CONFIG and report.has_corrector


def test_load_into_checks_the_text_flag_against_the_backbone(tmp_path: Path, source: SegVol) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_published(source), path)
    target = _segvol(with_text=False, seed=2)
    with pytest.raises(ValueError, match="^with_text"):
        load_into(path, get_model_config(CONFIG), target, None, with_text=True)
    report = load_into(path, get_model_config(CONFIG), target, None, with_text=False)
    assert report.config == CONFIG
    _assert_loaded(target, _without_text(source))


def _without_text(model: SegVol) -> nn.Module:
    stripped = _segvol(with_text=False)
    stripped.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    )
    return stripped


def _with_extra_corrector_key(tmp_path: Path, path: Path) -> Path:
    payload = torch.load(path, weights_only=True)
    payload["corrector"]["weight_ih_l1"] = torch.zeros(48, 16)
    out = tmp_path / "extra_corrector.pt"
    torch.save(payload, out)
    return out


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("extra", "unexpected: mask_decoder.extra_head.weight"),
        ("missing", "missing: mask_decoder.iou_token.weight"),
        ("shape", "of another shape: prompt_encoder.no_mask_embed.weight (file (1, 47), model (1, 48))"),
        ("missing_vit", "missing: image_encoder.blocks.1.mlp.linear1.bias"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_by_key(
    tmp_path: Path, source: SegVol, edit: str, named: str
) -> None:
    state = _published(source)
    if edit == "extra":
        state["model.mask_decoder.extra_head.weight"] = torch.zeros(3)
    elif edit == "missing":
        del state["model.mask_decoder.iou_token.weight"]
    elif edit == "shape":
        state["model.prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 47)
    else:
        del state["model.image_encoder.blocks.1.mlp.linear1.bias"]
    path = tmp_path / "bad.bin"
    torch.save(state, path)
    target = _segvol(with_text=True, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, target, config_name=CONFIG)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched


def test_long_key_lists_are_truncated(tmp_path: Path, source: SegVol) -> None:
    path = tmp_path / "decoder_only.bin"
    torch.save({k: v for k, v in _published(source).items() if "image_encoder" not in k}, path)
    with pytest.raises(CheckpointError, match=r"missing: .*, \.\.\. and \d+ more"):
        load_checkpoint(path, _segvol(with_text=True), config_name=CONFIG)


def test_corrupted_truncated_and_foreign_files_are_refused(tmp_path: Path, source: SegVol) -> None:
    good = tmp_path / "good.bin"
    torch.save(_published(source), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(4096))
    pickled_object = tmp_path / "object.pth"
    torch.save({"model": argparse.Namespace(a=1)}, pickled_object)  # arbitrary objects never unpickle
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)

    for path in (truncated, garbage, pickled_object):
        with pytest.raises(CheckpointError, match="^path: cannot read .*corrupted, truncated"):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        read_checkpoint(not_a_dict)
    with pytest.raises(CheckpointError, match="^path: no checkpoint file"):
        read_checkpoint(tmp_path / "absent.bin")


def test_report_summary_names_what_was_loaded() -> None:
    report = LoadReport(
        config="segvol-base",
        source_format="state_dict",
        stripped_prefix="model.",
        n_tensors=474,
        n_params=180_000_000,
        ignored_keys=("text_encoder.dim_align.weight", "image_encoder.blocks.0.norm_cross_attn.weight"),
        has_corrector=False,
    )
    text = report.summary()
    assert "474 tensors, 180.0M values" in text and "'model.'" in text
    assert "ignored: 1 keys (text branch" in text and "ignored: 1 keys (norm_cross_attn" in text


# --- the verify-weights command -------------------------------------------------------------------


def test_verify_weights_cli(tmp_path: Path, source: SegVol, capsys: pytest.CaptureFixture[str]) -> None:
    published = tmp_path / "pytorch_model.bin"
    torch.save(_published(source, norm_cross_attn=False), published)
    own = tmp_path / "ours.pt"
    save_checkpoint(own, CONFIG, _segvol(with_text=False), None, meta={"note": "test"})
    bad = tmp_path / "bad.bin"
    state = _published(source)
    state["model.mask_decoder.extra_head.weight"] = torch.zeros(3)
    torch.save(state, bad)

    assert cli_main(["verify-weights", str(published), "--config", CONFIG, "--with-text"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "norm_cross_attn" in out
    assert cli_main(["verify-weights", str(own)]) == 0  # config read from the file
    assert f"config {CONFIG!r}" in capsys.readouterr().out
    assert cli_main(["verify-weights", str(own), "--config", "segvol-base"]) == 1
    assert "not 'segvol-base'" in capsys.readouterr().err
    assert cli_main(["verify-weights", str(tmp_path / "absent.bin"), "--config", CONFIG]) == 1
    assert cli_main(["verify-weights", str(published), "--config", "no-such-config"]) == 2
    assert "unknown config" in capsys.readouterr().err
    refused = cli_main(["verify-weights", str(bad), "--config", CONFIG])
    assert refused == 1
    assert "unexpected: mask_decoder.extra_head.weight" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_weights_as_a_user_runs_it(tmp_path: Path, source: SegVol) -> None:
    published = tmp_path / "pytorch_model.bin"
    torch.save(_published(source), published)
    result = subprocess.run(
        [sys.executable, "-m", "app.models", "verify-weights", str(published), "--config", CONFIG],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"OK: {published} loads into config {CONFIG!r}" in result.stdout
    assert "text branch not built" in result.stdout
