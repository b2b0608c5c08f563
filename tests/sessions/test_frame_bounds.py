"""``decode_diff``'s checks on hostile frames, each at its exact boundary: the last accepted value and the
first refused one. The frames are built byte by byte here (header struct + LEB128 pairs written by this
test), not by the encoder, so an encoder and decoder that drift together cannot hide a wrong bound."""

from __future__ import annotations

import struct
import zlib

import pytest

from app.schemas.frames import decode_diff

_HEADER = struct.Struct("<4sBBBBIIIIIIII6I")  # the layout docs/wire-format.md gives, restated
_FLAG_ZLIB, _FLAG_BBOX = 0x01, 0x02
_STEP_GRU = 2


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _frame(shape: tuple[int, int, int], runs: list[tuple[int, int, int]], *, count: int | None = None,
           bbox: tuple[int, ...] | None = None, compress: bool = False, n_runs: int | None = None) -> bytes:
    """A diff frame of ``runs`` = (gap, length, value) with the header's fields as given (or consistent)."""
    payload = b"".join(_leb128(gap) + _leb128(((length - 1) << 1) | value) for gap, length, value in runs)
    flags = 0
    if compress:
        payload, flags = zlib.compress(payload), flags | _FLAG_ZLIB
    total = sum(length for _, length, _ in runs) if count is None else count
    if bbox is None and total:
        bbox = (0, 0, 0, shape[0] - 1, shape[1] - 1, shape[2] - 1)
    if bbox is not None:
        flags |= _FLAG_BBOX
    header = _HEADER.pack(b"SGDF", 1, 0, flags, _STEP_GRU, 1, 2, 1, *shape, total,
                          len(runs) if n_runs is None else n_runs, *(bbox or (0,) * 6))
    return header + payload


@pytest.mark.parametrize("shape", [(0, 2, 2), (2, 0, 2), (2, 2, 0)])
def test_an_empty_axis_is_refused_and_a_one_voxel_volume_is_not(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="^frame: empty shape"):
        decode_diff(_frame(shape, [], count=0))
    assert decode_diff(_frame((1, 1, 1), [(0, 1, 1)])).count == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_bbox_may_end_on_the_last_index_of_each_axis_and_not_past_it(axis: int) -> None:
    shape = (3, 4, 5)
    last = [s - 1 for s in shape]
    assert decode_diff(_frame(shape, [(0, 1, 1)], bbox=(0, 0, 0, *last))).bbox == (0, 0, 0, *last)
    past = list(last)
    past[axis] += 1
    with pytest.raises(ValueError, match="^frame: bbox .* is not inside shape"):
        decode_diff(_frame(shape, [(0, 1, 1)], bbox=(0, 0, 0, *past)))
    inverted = [0, 0, 0, *last]
    inverted[axis] = 2  # start after end on this axis
    inverted[axis + 3] = 1
    with pytest.raises(ValueError, match="^frame: bbox"):
        decode_diff(_frame(shape, [(0, 1, 1)], bbox=tuple(inverted)))


def test_a_run_may_end_exactly_at_the_volume_end_and_not_one_past() -> None:
    shape = (2, 3, 4)  # 24 voxels
    frame = decode_diff(_frame(shape, [(20, 4, 1)]))
    assert frame.run_starts.tolist() == [20] and int(frame.run_starts[-1] + frame.run_lengths[-1]) == 24
    with pytest.raises(ValueError, match="^frame: runs end at 25, past the volume's 24 voxels"):
        decode_diff(_frame(shape, [(21, 4, 1)]))
    # A gap or a length of the whole volume is out of range on its own, before any sum is taken.
    with pytest.raises(ValueError, match="^frame: run out of range"):
        decode_diff(_frame(shape, [(24, 1, 1)]))
    with pytest.raises(ValueError, match="^frame: run out of range"):
        decode_diff(_frame(shape, [(0, 25, 1)], count=24))  # the header's count is within the volume
    assert decode_diff(_frame(shape, [(0, 24, 1)])).count == 24  # the whole volume in one run


def test_the_payload_limit_is_checked_before_inflating_and_is_inclusive() -> None:
    # One run may need up to 2 varints x 5 bytes = 10 payload bytes: a limit of 10 admits it, 9 does not.
    data = _frame((2, 2, 2), [(0, 1, 1)], compress=True)
    assert decode_diff(data, max_payload_bytes=10).count == 1
    with pytest.raises(ValueError, match="^frame: 1 runs may need 10 payload bytes, over 9"):
        decode_diff(data, max_payload_bytes=9)


def test_counts_and_run_numbers_are_checked_at_their_bounds() -> None:
    shape = (1, 2, 3)  # 6 voxels
    with pytest.raises(ValueError, match="^frame: count 7 exceeds the volume's 6 voxels"):
        decode_diff(_frame(shape, [(0, 6, 1)], count=7))
    with pytest.raises(ValueError, match="^frame: 3 runs for 2 voxels"):
        decode_diff(_frame(shape, [(0, 1, 1), (1, 1, 0)], count=2, n_runs=3))
    two = decode_diff(_frame(shape, [(0, 1, 1), (1, 1, 0)]))  # as many runs as voxels: allowed
    assert two.count == 2 and two.run_starts.tolist() == [0, 2]
    with pytest.raises(ValueError, match="^frame: runs cover 2 voxels, header says 3"):
        decode_diff(_frame(shape, [(0, 1, 1), (1, 1, 0)], count=3))


def test_the_payload_must_hold_exactly_the_runs_it_announces() -> None:
    shape = (1, 4, 4)
    good = _frame(shape, [(0, 2, 1), (3, 1, 1)])
    assert decode_diff(good).count == 3  # the minimal payload: every varint one byte (2 x n_runs bytes)
    with pytest.raises(ValueError, match="^frame: "):
        decode_diff(good[:-1])  # one byte short
    with pytest.raises(ValueError, match="^frame: payload holds 6 varints, expected 4"):
        decode_diff(good + _leb128(0) + _leb128(0))
