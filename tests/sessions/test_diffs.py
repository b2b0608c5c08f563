"""The binary diff frame: exact round trips, compactness, and rejection of malformed bytes."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from app.sessions.diffs import (
    VersionMismatchError,
    apply_diff,
    decode_diff,
    encode_change,
    encode_diff,
    encode_snapshot,
)
from client.wire.frames import (
    FLAG_HAS_BBOX,
    FLAG_ZLIB,
    HEADER,
    HEADER_SIZE,
    KIND_DIFF,
    KIND_SNAPSHOT,
    MAGIC,
    _varint_decode,
    _varint_encode,
)


def ball(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
    return (d2 <= radius**2).astype(np.uint8)


def changes(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(old.ravel() != new.ravel())
    return idx, new.ravel()[idx]


def roundtrip(old: np.ndarray, new: np.ndarray, **kwargs: object) -> tuple[bytes, np.ndarray]:
    idx, val = changes(old, new)
    data = encode_diff(idx, val, object_id=3, version=8, base_version=7, shape=old.shape, step="gru", **kwargs)
    frame = decode_diff(data)
    np.testing.assert_array_equal(frame.indices, idx)
    np.testing.assert_array_equal(frame.values, val)
    rebuilt = old.copy()
    assert apply_diff(rebuilt, frame, current_version=7) == 8
    return data, rebuilt


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("compress", [None, True, False])
def test_random_blob_changes_roundtrip_exactly(seed: int, compress: bool | None) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(5, 40)), int(rng.integers(5, 40)), int(rng.integers(5, 40)))
    old = np.zeros(shape, np.uint8)
    new = np.zeros(shape, np.uint8)
    for mask in (old, new):
        for _ in range(3):
            center = tuple(float(rng.uniform(0, s)) for s in shape)
            mask |= ball(shape, center, float(rng.uniform(1, 8)))  # type: ignore[arg-type]
    data, rebuilt = roundtrip(old, new, compress=compress)
    np.testing.assert_array_equal(rebuilt, new)
    frame = decode_diff(data)
    assert frame.step == "gru" and frame.object_id == 3 and frame.shape == shape
    if compress is not None:
        assert frame.compressed is compress
    if frame.count:
        z, y, x = np.unravel_index(frame.indices, shape)
        assert frame.bbox == (z.min(), y.min(), x.min(), z.max(), y.max(), x.max())


def test_empty_diff_is_a_bare_header_and_still_moves_the_version() -> None:
    mask = ball((10, 12, 14), (5, 6, 7), 3)
    data = encode_diff([], [], object_id=1, version=5, base_version=4, shape=mask.shape, step="decoder")
    assert len(data) == HEADER_SIZE
    frame = decode_diff(data)
    assert frame.count == 0 and frame.bbox is None and frame.n_runs == 0
    before = mask.copy()
    assert apply_diff(mask, frame, current_version=4) == 5
    np.testing.assert_array_equal(mask, before)


def test_whole_volume_diffs_use_the_dense_path_and_stay_exact() -> None:
    shape = (9, 10, 11)
    old = np.zeros(shape, np.uint8)
    _, rebuilt = roundtrip(old, np.ones(shape, np.uint8))
    assert rebuilt.all()
    # Noise: every voxel changes, values alternate at random -> many runs of both values.
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 2, shape, dtype=np.uint8)
    _, rebuilt = roundtrip(1 - noise, noise)
    np.testing.assert_array_equal(rebuilt, noise)


def test_snapshot_replaces_any_local_mask_for_resync() -> None:
    shape = (16, 20, 24)
    truth = ball(shape, (8, 10, 12), 6) | ball(shape, (2, 2, 2), 2)
    data = encode_snapshot(truth, object_id=2, version=11)
    frame = decode_diff(data)
    assert frame.is_snapshot and frame.version == 11 and frame.count == int(truth.sum())
    stale = np.random.default_rng(0).integers(0, 2, shape, dtype=np.uint8)
    assert apply_diff(stale, frame, current_version=3) == 11  # version not checked for snapshots
    np.testing.assert_array_equal(stale, truth)
    empty = decode_diff(encode_snapshot(np.zeros(shape, np.uint8), object_id=2, version=12))
    apply_diff(stale, empty)
    assert not stale.any()


def test_bool_masks_and_dense_snapshot() -> None:
    shape = (6, 7, 8)
    truth = np.ones(shape, np.uint8)
    truth[::2] = 0
    target = np.zeros(shape, bool)
    apply_diff(target, decode_diff(encode_snapshot(truth, object_id=1, version=1)))
    np.testing.assert_array_equal(target, truth.astype(bool))


def test_version_gap_raises_and_leaves_the_mask_untouched() -> None:
    old = ball((10, 10, 10), (5, 5, 5), 2)
    idx, val = changes(old, ball((10, 10, 10), (5, 5, 5), 4))
    frame = decode_diff(encode_diff(idx, val, object_id=4, version=9, base_version=8, shape=old.shape))
    mask = old.copy()
    with pytest.raises(VersionMismatchError) as info:
        apply_diff(mask, frame, current_version=6)
    assert info.value.expected == 6 and info.value.got == 8 and info.value.object_id == 4
    np.testing.assert_array_equal(mask, old)
    with pytest.raises(ValueError, match="mask: shape"):
        apply_diff(np.zeros((10, 10, 11), np.uint8), frame, current_version=8)


@pytest.mark.parametrize("current", [9, 12], ids=["duplicate", "stale"])
def test_a_frame_behind_the_mask_raises_and_leaves_the_mask_untouched(current: int) -> None:
    """The version never goes backwards: a frame already applied (or older) is refused like a gap."""
    old = ball((10, 10, 10), (5, 5, 5), 2)
    idx, val = changes(old, ball((10, 10, 10), (5, 5, 5), 4))
    frame = decode_diff(encode_diff(idx, val, object_id=4, version=9, base_version=8, shape=old.shape))
    mask = old.copy()
    with pytest.raises(VersionMismatchError) as info:
        apply_diff(mask, frame, current_version=current)
    assert (info.value.expected, info.value.got) == (current, 8)
    np.testing.assert_array_equal(mask, old)
    assert apply_diff(mask, frame, current_version=8) == 9  # the matching base applies


def test_blob_change_frame_is_far_smaller_than_the_compressed_whole_mask() -> None:
    shape = (64, 128, 128)
    before = ball(shape, (32, 64, 64), 20)
    after = before | ball(shape, (32, 64, 86), 4)  # a click-sized bump on the surface
    idx, val = changes(before, after)
    frame = encode_diff(idx, val, object_id=1, version=2, base_version=1, shape=shape, step="gru")
    whole = io.BytesIO()
    np.savez_compressed(whole, mask=after)
    assert len(frame) < 0.05 * len(whole.getvalue())
    assert len(frame) < idx.size  # under one byte per changed voxel


def test_encode_change_reads_a_predictor_change() -> None:
    @dataclass(frozen=True)
    class FakeChange:
        object_id: int
        version: int
        step: str
        indices: np.ndarray
        values: np.ndarray
        bbox: tuple[int, int, int, int, int, int] | None

    change = FakeChange(7, 3, "box", np.array([5, 6, 7, 40], np.int64), np.array([1, 0, 1, 1], np.uint8),
                        (0, 1, 0, 0, 8, 0))
    frame = decode_diff(encode_change(change, shape=(2, 10, 5), base_version=2))
    assert (frame.object_id, frame.version, frame.base_version, frame.step) == (7, 3, 2, "box")
    assert frame.bbox == (0, 1, 0, 0, 8, 0)
    # What a consumer sees: applied on version 2 of a mask, exactly the change's voxels take its values.
    mask = np.zeros((2, 10, 5), np.uint8)
    mask.reshape(-1)[[6, 41]] = 1  # voxel 6 is switched off by the change, 41 is left alone
    assert apply_diff(mask, frame, current_version=2) == 3
    assert sorted(np.flatnonzero(mask).tolist()) == [5, 7, 40, 41]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"indices": [3, 2], "values": [1, 1]}, "indices: must be strictly ascending"),
        ({"indices": [2, 2], "values": [1, 1]}, "indices: must be strictly ascending"),
        ({"indices": [1000], "values": [1]}, "indices: out of range"),
        ({"indices": [-1], "values": [1]}, "indices: out of range"),
        ({"indices": [1], "values": [2]}, "values: must be 0 or 1"),
        ({"indices": [1, 2], "values": [1]}, "indices: expected two 1-D arrays"),
        ({"indices": [1], "values": [1], "step": "jump"}, "step: unknown step"),
        ({"indices": [1], "values": [1], "object_id": -1}, "object_id: must be in"),
        ({"indices": [1], "values": [1], "shape": (0, 2, 2)}, "shape: expected 3 positive"),
    ],
)
def test_encode_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"object_id": 1, "version": 2, "base_version": 1, "shape": (4, 5, 6)} | kwargs
    with pytest.raises(ValueError, match=match):
        encode_diff(**args)


def test_varints_roundtrip_at_boundaries() -> None:
    values = np.array([0, 1, 127, 128, 16383, 16384, 2**21, 2**32 - 1, 2**33 - 1], np.uint64)
    np.testing.assert_array_equal(_varint_decode(_varint_encode(values)), values)


# --- malformed frames --------------------------------------------------------------------------------

SHAPE = (4, 5, 6)


def header(**overrides: object) -> bytes:
    fields = {
        "magic": MAGIC, "fmt": 1, "kind": KIND_DIFF, "flags": FLAG_HAS_BBOX, "step": 2, "oid": 1, "version": 2,
        "base": 1, "d": SHAPE[0], "h": SHAPE[1], "w": SHAPE[2], "count": 3, "n_runs": 1, "bbox": (0, 0, 1, 0, 0, 3),
    } | overrides
    return HEADER.pack(fields["magic"], fields["fmt"], fields["kind"], fields["flags"], fields["step"],
                       fields["oid"], fields["version"], fields["base"], fields["d"], fields["h"], fields["w"],
                       fields["count"], fields["n_runs"], *fields["bbox"])  # type: ignore[misc]


GOOD_PAYLOAD = bytes([1, (2 << 1) | 1])  # one run: gap 1, length 3, value 1


def test_the_reference_frame_is_valid() -> None:
    frame = decode_diff(header() + GOOD_PAYLOAD)
    np.testing.assert_array_equal(frame.indices, [1, 2, 3])


def _zlib(data: bytes) -> bytes:
    return zlib.compress(data)


MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "shorter than"),
    ("short header", header()[:40], "shorter than"),
    ("bad magic", header(magic=b"XXXX") + GOOD_PAYLOAD, "bad magic"),
    ("future format", header(fmt=2) + GOOD_PAYLOAD, "unsupported format version"),
    ("unknown kind", header(kind=9) + GOOD_PAYLOAD, "unknown kind"),
    ("unknown flag", header(flags=FLAG_HAS_BBOX | 0x80) + GOOD_PAYLOAD, "unknown flags"),
    ("unknown step", header(step=200) + GOOD_PAYLOAD, "unknown step"),
    ("zero dim", header(d=0) + GOOD_PAYLOAD, "empty shape"),
    ("huge shape", header(d=65535, h=65535, w=2) + GOOD_PAYLOAD, "over the limit"),
    ("count > voxels", header(count=1000, n_runs=1) + GOOD_PAYLOAD, "exceeds the volume"),
    ("runs > count", header(count=3, n_runs=4) + GOOD_PAYLOAD * 4, "runs for"),
    ("count 0 with runs", header(count=0, n_runs=0, flags=0, bbox=(0,) * 6) + GOOD_PAYLOAD, "cannot hold"),
    ("bbox flag without voxels", header(count=0, n_runs=0), "bbox flag"),
    ("voxels without bbox flag", header(flags=0, bbox=(0,) * 6) + GOOD_PAYLOAD, "bbox flag"),
    ("bbox outside", header(bbox=(0, 0, 1, 4, 0, 3)) + GOOD_PAYLOAD, "not inside"),
    ("bbox reversed", header(bbox=(0, 0, 3, 0, 0, 1)) + GOOD_PAYLOAD, "not inside"),
    ("bbox junk without flag", header(count=0, n_runs=0, flags=0, bbox=(0, 0, 0, 0, 0, 1)), "must be zero"),
    ("truncated payload", header() + GOOD_PAYLOAD[:1], "cannot hold"),
    ("trailing junk", header() + GOOD_PAYLOAD + b"\x00", "varints"),
    ("payload ends in a varint", header() + bytes([1, 0x85]), "ends inside a varint"),
    ("varint too long", header() + bytes([0x81, 0x80, 0x80, 0x80, 0x80, 0x00, 5]), "longer than 5 bytes"),
    ("lengths do not sum to count", header(count=4) + GOOD_PAYLOAD, "cover 3 voxels"),
    ("run past the end", header(count=3) + bytes([118, 2 << 1 | 1]), "past the volume"),
    ("gap out of range", header() + bytes([0xFF, 0x7F, 5]), "out of range"),
    ("corrupt zlib", header(flags=FLAG_HAS_BBOX | FLAG_ZLIB) + b"\x78\x9cgarbage", "corrupt zlib"),
    ("truncated zlib", header(flags=FLAG_HAS_BBOX | FLAG_ZLIB) + _zlib(GOOD_PAYLOAD)[:-3], "zlib payload"),
    ("zlib junk after", header(flags=FLAG_HAS_BBOX | FLAG_ZLIB) + _zlib(GOOD_PAYLOAD) + b"x", "zlib payload"),
    ("zlib bomb", header(flags=FLAG_HAS_BBOX | FLAG_ZLIB) + _zlib(GOOD_PAYLOAD + bytes(10_000_000)), "zlib"),
    ("snapshot with base", header(kind=KIND_SNAPSHOT, base=3, step=0) + GOOD_PAYLOAD, "snapshot must have"),
]


@pytest.mark.parametrize(("name", "data", "match"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_frames_are_rejected(name: str, data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_diff(data)


def test_payload_limit_is_enforced_before_inflating() -> None:
    shape_header = header(d=1024, h=1024, w=1024, count=10_000_000, n_runs=5_000_000,
                          bbox=(0, 0, 0, 1, 1, 1), flags=FLAG_HAS_BBOX | FLAG_ZLIB)
    with pytest.raises(ValueError, match="payload bytes, over"):
        decode_diff(shape_header + _zlib(bytes(100)), max_payload_bytes=1 << 20)
    with pytest.raises(ValueError, match="over the limit"):
        decode_diff(header(d=100, h=100, w=100) + GOOD_PAYLOAD, max_voxels=1000)


def test_random_corruption_only_ever_raises_value_error() -> None:
    rng = np.random.default_rng(0)
    shape = (12, 14, 16)
    old = ball(shape, (6, 7, 8), 4)
    idx, val = changes(old, ball(shape, (6, 7, 9), 5))
    frames = [
        encode_diff(idx, val, object_id=1, version=2, base_version=1, shape=shape, compress=False),
        encode_diff(idx, val, object_id=1, version=2, base_version=1, shape=shape, compress=True),
        encode_snapshot(old, object_id=1, version=1),
    ]
    n_ok = 0
    for i in range(1500):
        data = bytearray(frames[i % 3])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(0, len(data)))]
        try:
            frame = decode_diff(bytes(data), max_voxels=1 << 24)
        except ValueError:
            continue
        n_ok += 1
        mask = np.zeros(frame.shape, np.uint8)
        apply_diff(mask, frame)  # whatever decoded must also apply without error
        assert int(mask.sum()) <= frame.count
    assert n_ok < 1500


def test_header_layout_is_64_little_endian_bytes() -> None:
    data = encode_diff([7], [1], object_id=0x01020304, version=9, base_version=8, shape=(2, 3, 4), step="undo")
    assert data[:4] == b"SGDF" and data[4] == 1 and data[5] == KIND_DIFF and data[6] == FLAG_HAS_BBOX
    assert data[7] == 5  # "undo"
    assert struct.unpack_from("<IIIIIIII", data, 8) == (0x01020304, 9, 8, 2, 3, 4, 1, 1)
    assert struct.unpack_from("<6I", data, 40) == (0, 1, 3, 0, 1, 3)
    assert data[HEADER_SIZE:] == bytes([7, 0 << 1 | 1])
