"""Edges of the diff frame codec that the round-trip tests do not reach: exact limits, one-voxel frames, the
bounding box on every axis, field names in errors, read-only masks (found by mutation testing,
docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from app.schemas.frames import (
    VersionMismatchError,
    apply_diff,
    decode_diff,
    encode_diff,
    encode_snapshot,
    mask_bbox,
)

U32_MAX = 2**32 - 1


def test_mask_bbox_is_exact_on_every_axis() -> None:
    mask = np.zeros((7, 9, 11), np.uint8)
    mask[2, 3, 4] = 1
    mask[5, 7, 9] = 1
    mask[3, 6, 5] = 1  # inside: changes nothing
    assert mask_bbox(mask) == (2, 3, 4, 5, 7, 9)
    assert mask_bbox(np.zeros((2, 3, 4), np.uint8)) is None


@pytest.mark.parametrize("shape", [(1, 5, 6), (4, 1, 3), (2, 3, 1), (1, 1, 1)])
def test_a_one_voxel_diff_round_trips_on_thin_volumes(shape: tuple[int, int, int]) -> None:
    index = int(np.prod(shape)) - 1  # the last voxel
    data = encode_diff([index], [1], object_id=3, version=2, base_version=1, shape=shape, step="gru",
                       bbox=tuple(s - 1 for s in shape) * 2)
    frame = decode_diff(data)
    assert frame.count == 1 and frame.bbox == tuple(s - 1 for s in shape) * 2 and frame.nbytes == len(data)
    mask = np.zeros(shape, np.uint8)
    assert apply_diff(mask, frame, current_version=1) == 2
    assert np.flatnonzero(mask).tolist() == [index]


def test_a_frame_exactly_at_the_voxel_limit_is_accepted() -> None:
    shape = (4, 5, 6)
    data = encode_snapshot(np.ones(shape, np.uint8), object_id=1, version=1)
    assert decode_diff(data, max_voxels=120).count == 120
    with pytest.raises(ValueError, match="^frame: "):
        decode_diff(data, max_voxels=119)


def test_versions_span_the_whole_u32_range_and_errors_name_the_field() -> None:
    frame = decode_diff(encode_diff([0], [1], object_id=1, version=U32_MAX, base_version=U32_MAX - 1,
                                    shape=(1, 1, 2)))
    assert (frame.version, frame.base_version) == (U32_MAX, U32_MAX - 1)
    for field, kwargs in [("version", {"version": U32_MAX + 1, "base_version": 0}),
                          ("base_version", {"version": 1, "base_version": -1})]:
        with pytest.raises(ValueError, match=f"^{field}: must be in 0..{U32_MAX}"):
            encode_diff([0], [1], object_id=1, shape=(1, 1, 2), **kwargs)


def test_a_version_mismatch_says_which_object_and_versions() -> None:
    frame = decode_diff(encode_diff([0], [1], object_id=7, version=5, base_version=4, shape=(1, 1, 2)))
    with pytest.raises(VersionMismatchError, match="^frame: object 7 diff applies on version 4, local mask is at 2$"):
        apply_diff(np.zeros((1, 1, 2), np.uint8), frame, current_version=2)


def test_a_read_only_mask_is_refused_untouched() -> None:
    frame = decode_diff(encode_diff([0], [1], object_id=1, version=1, base_version=0, shape=(1, 1, 2)))
    mask = np.zeros((1, 1, 2), np.uint8)
    mask.flags.writeable = False
    with pytest.raises(ValueError, match="^mask: must be a writeable C-contiguous array"):
        apply_diff(mask, frame)
    assert not mask.any()


def test_the_encoder_compresses_when_it_helps() -> None:
    shape = (16, 64, 64)
    stripes = np.zeros(shape, np.uint8)
    stripes[:, :, ::2] = 1  # many short runs: a long, repetitive payload
    auto = encode_snapshot(stripes, object_id=1, version=1)
    plain = encode_snapshot(stripes, object_id=1, version=1, compress=False)
    frame = decode_diff(auto)
    assert frame.compressed and len(auto) < len(plain) / 4
    assert not decode_diff(plain).compressed
    mask = np.zeros(shape, np.uint8)
    apply_diff(mask, frame)
    assert np.array_equal(mask, stripes)
