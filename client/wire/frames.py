"""The binary diff frame of the WebSocket stream: encode, decode (untrusted bytes), apply. numpy + stdlib.

A frame tells a client exactly which voxels of one object's binary mask changed and to what, so the client
can rebuild the mask bit for bit. Layout (all little-endian; byte by byte in docs/wire-format.md):

    header (64 bytes)   magic "SGDF", format version, kind, flags, step code, object_id, version,
                        base_version, D, H, W, count, n_runs, bbox[6]
    payload             n_runs runs as pairs of LEB128 varints (gap, (length - 1) << 1 | value),
                        zlib-compressed when flags & FLAG_ZLIB

A *run* is a maximal stretch of consecutive flat C-order indices into (D, H, W) whose new values are equal;
``gap`` is its start minus the end (exclusive) of the previous run (the first run's gap is its start).
Changes from a prompt are blobs, so runs make the frame small: a few bytes per changed row segment.

Kinds: ``KIND_DIFF`` applies on a mask at ``base_version`` and lifts it to ``version``; ``KIND_SNAPSHOT``
replaces the whole mask (runs of foreground voxels; the answer to a resync).

Coordinates: flat index ``i = (z * H + y) * W + x`` of the (D, H, W) volume in SimpleITK
``GetArrayFromImage`` order; ``bbox`` is inclusive (z0, y0, x0, z1, y1, x1).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"SGDF"
FRAME_FORMAT_VERSION = 1

KIND_DIFF = 0
KIND_SNAPSHOT = 1
KIND_NAMES = {KIND_DIFF: "diff", KIND_SNAPSHOT: "snapshot"}

FLAG_ZLIB = 0x01
"""The payload is a zlib stream."""
FLAG_HAS_BBOX = 0x02
"""The bbox fields are meaningful (set exactly when count > 0)."""
_KNOWN_FLAGS = FLAG_ZLIB | FLAG_HAS_BBOX

STEP_CODES: dict[str, int] = {
    "none": 0,  # snapshots
    "box": 1,
    "gru": 2,
    "decoder": 3,
    "mask": 4,
    "undo": 5,
    "reset": 6,
    "remove": 7,
}
STEP_NAMES: dict[int, str] = {code: name for name, code in STEP_CODES.items()}

HEADER = struct.Struct("<4sBBBBIIIIIIII6I")
HEADER_SIZE = HEADER.size  # 64 bytes

_U32_MAX = 0xFFFFFFFF
MAX_FRAME_VOXELS = _U32_MAX
"""The format's hard limit on D * H * W (flat indices and counts are uint32)."""
DEFAULT_MAX_VOXELS = 1 << 31
"""Default decode limit on D * H * W (2 Gi voxels)."""
DEFAULT_MAX_PAYLOAD_BYTES = 32 << 20
"""Default decode limit on the (decompressed) payload size."""
_MAX_VARINT_BYTES = 5  # values stay below 2**33: gap < 2**32, (length - 1) << 1 | value < 2**33
_COMPRESS_MIN_BYTES = 64  # below this, zlib's own header costs more than it saves

Bbox = tuple[int, int, int, int, int, int]


class VersionMismatchError(ValueError):
    """A diff's ``base_version`` is not the version of the mask it is applied to: the client missed a frame
    (or got one twice) and must resync."""

    def __init__(self, object_id: int, expected: int, got: int) -> None:
        super().__init__(f"frame: object {object_id} diff applies on version {got}, local mask is at {expected}")
        self.object_id = object_id
        self.expected = expected
        self.got = got


@dataclass(frozen=True)
class DiffFrame:
    """A decoded frame. Runs are kept (not expanded) so a small frame never turns into a big allocation.

    Attributes:
        kind: KIND_DIFF or KIND_SNAPSHOT.
        object_id, version, base_version: the object, its version after this frame, the version the diff
            applies on (0 for snapshots: ignored).
        step: "box" | "gru" | "decoder" | "mask" | "undo" | "reset" | "remove" | "none" (snapshots).
        shape: (D, H, W) of the volume.
        count: voxels listed (changed voxels for a diff, foreground voxels for a snapshot).
        bbox: inclusive (z0, y0, x0, z1, y1, x1) of those voxels, None when count == 0.
        run_starts: (n_runs,) int64 flat start index of each run, ascending.
        run_lengths: (n_runs,) int64 run lengths (>= 1), summing to ``count``.
        run_values: (n_runs,) uint8 value (0/1) written on each run.
        compressed: whether the payload was zlib-compressed on the wire.
        nbytes: size of the encoded frame.
    """

    kind: int
    object_id: int
    version: int
    base_version: int
    step: str
    shape: tuple[int, int, int]
    count: int
    bbox: Bbox | None
    run_starts: np.ndarray
    run_lengths: np.ndarray
    run_values: np.ndarray
    compressed: bool = False
    nbytes: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.kind == KIND_SNAPSHOT

    @property
    def n_runs(self) -> int:
        return int(self.run_starts.shape[0])

    @property
    def indices(self) -> np.ndarray:
        """(count,) int64 ascending flat indices (allocates 8 * count bytes)."""
        return _expand_runs(self.run_starts, self.run_lengths, self.count)

    @property
    def values(self) -> np.ndarray:
        """(count,) uint8 values at ``indices``."""
        return np.repeat(self.run_values, self.run_lengths)


# --- varints -----------------------------------------------------------------------------------------


def _varint_encode(values: np.ndarray) -> bytes:
    """LEB128 (7 bits per byte, low group first, high bit = more bytes follow) of non-negative uint64s."""
    v = values.astype(np.uint64, copy=False)
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    total = int(nbytes.sum())
    ends = np.cumsum(nbytes)
    group_start = ends - nbytes
    pos_in_group = np.arange(total, dtype=np.int64) - np.repeat(group_start, nbytes)
    shifted = np.repeat(v, nbytes) >> (7 * pos_in_group).astype(np.uint64)
    out = (shifted & np.uint64(0x7F)).astype(np.uint8)
    more = pos_in_group < np.repeat(nbytes - 1, nbytes)
    out[more] |= 0x80
    return out.tobytes()


def _varint_decode(buf: bytes) -> np.ndarray:
    """Inverse of ``_varint_encode`` for varints of at most ``_MAX_VARINT_BYTES`` bytes -> uint64 array."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if b[-1] & 0x80:
        raise ValueError("frame: payload ends inside a varint")
    last = np.flatnonzero((b & 0x80) == 0)
    lengths = np.diff(last, prepend=-1)
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise ValueError("frame: varint longer than 5 bytes")
    first = last - lengths + 1
    out = np.zeros(last.shape, dtype=np.uint64)
    for k in range(_MAX_VARINT_BYTES):
        has = lengths > k
        if not has.any():
            break
        byte = (b[first[has] + k] & 0x7F).astype(np.uint64)
        out[has] |= byte << np.uint64(7 * k)
    return out


# --- runs --------------------------------------------------------------------------------------------


def _expand_runs(starts: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    indices: np.ndarray = np.arange(count, dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return indices


def _runs_from_changes(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = indices.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.uint8)
    breaks = (np.diff(indices) != 1) | (np.diff(values.astype(np.int8)) != 0)
    pos = np.concatenate(([0], np.flatnonzero(breaks) + 1))
    starts = indices[pos]
    lengths = np.diff(np.concatenate((pos, [n]))).astype(np.int64)
    return starts.astype(np.int64), lengths, values[pos].astype(np.uint8)


def _foreground_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.ascontiguousarray(mask).reshape(-1) != 0
    edges = np.diff(flat.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1).astype(np.int64)
    ends = np.flatnonzero(edges == -1).astype(np.int64)
    return starts, ends - starts


def _bbox_of_flat(indices: np.ndarray, shape: tuple[int, int, int]) -> Bbox | None:
    if indices.size == 0:
        return None
    z, y, x = np.unravel_index(indices, shape)
    return (int(z.min()), int(y.min()), int(x.min()), int(z.max()), int(y.max()), int(x.max()))


def mask_bbox(mask: np.ndarray) -> Bbox | None:
    """Inclusive (z0, y0, x0, z1, y1, x1) of the nonzero voxels of a (D, H, W) mask, None when empty."""
    fg = mask != 0
    zs = np.flatnonzero(fg.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    ys = np.flatnonzero(fg.any(axis=(0, 2)))
    xs = np.flatnonzero(fg.any(axis=(0, 1)))
    return (int(zs[0]), int(ys[0]), int(xs[0]), int(zs[-1]), int(ys[-1]), int(xs[-1]))


# --- encode ------------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape: expected 3 positive sizes (D, H, W), got {tuple(shape)}")
    d, h, w = (int(s) for s in shape)
    if d * h * w > MAX_FRAME_VOXELS:
        raise ValueError(f"shape: {d}x{h}x{w} exceeds the frame format's {MAX_FRAME_VOXELS} voxels")
    return d, h, w


def _check_u32(name: str, value: int) -> int:
    value = int(value)
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name}: must be in 0..{_U32_MAX}, got {value}")
    return value


def _pack(
    kind: int,
    step: str,
    object_id: int,
    version: int,
    base_version: int,
    shape: tuple[int, int, int],
    count: int,
    bbox: Bbox | None,
    starts: np.ndarray,
    lengths: np.ndarray,
    values: np.ndarray,
    compress: bool | None,
) -> bytes:
    if step not in STEP_CODES:
        raise ValueError(f"step: unknown step {step!r}; expected one of {sorted(STEP_CODES)}")
    n_runs = int(starts.shape[0])
    if n_runs:
        prev_end = np.concatenate(([0], (starts + lengths)[:-1]))
        pairs = np.empty(2 * n_runs, dtype=np.uint64)
        pairs[0::2] = (starts - prev_end).astype(np.uint64)
        pairs[1::2] = (((lengths - 1) << 1) | values.astype(np.int64)).astype(np.uint64)
        payload = _varint_encode(pairs)
    else:
        payload = b""
    flags = 0
    if compress or (compress is None and len(payload) >= _COMPRESS_MIN_BYTES):
        packed = zlib.compress(payload, 6)
        if compress or len(packed) < len(payload):
            payload, flags = packed, flags | FLAG_ZLIB
    if bbox is not None:
        flags |= FLAG_HAS_BBOX
    header = HEADER.pack(
        MAGIC,
        FRAME_FORMAT_VERSION,
        kind,
        flags,
        STEP_CODES[step],
        _check_u32("object_id", object_id),
        _check_u32("version", version),
        _check_u32("base_version", base_version),
        *shape,
        count,
        n_runs,
        *(bbox if bbox is not None else (0, 0, 0, 0, 0, 0)),
    )
    return header + payload


def encode_diff(
    indices: np.ndarray | Sequence[int],
    values: np.ndarray | Sequence[int],
    *,
    object_id: int,
    version: int,
    base_version: int,
    shape: Sequence[int],
    step: str = "mask",
    bbox: Sequence[int] | None = None,
    compress: bool | None = None,
) -> bytes:
    """Encode the voxels that changed between ``base_version`` and ``version`` of one object.

    Args:
        indices: (n,) strictly ascending flat C-order indices into ``shape``.
        values: (n,) new values, 0 or 1.
        shape: (D, H, W).
        bbox: inclusive box of ``indices``; computed when None.
        compress: zlib the payload: True always, False never, None when it makes the frame smaller.
    Returns:
        The frame bytes (a 64-byte header when nothing changed).
    """
    dhw = _check_shape(shape)
    idx = np.asarray(indices)
    val = np.asarray(values)
    if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
        raise ValueError(f"indices: expected two 1-D arrays of equal length, got {idx.shape} and {val.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices: expected integers, got {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size:
        if int(idx[0]) < 0 or int(idx[-1]) >= dhw[0] * dhw[1] * dhw[2]:
            raise ValueError(f"indices: out of range for shape {dhw}")
        if idx.size > 1 and not bool((np.diff(idx) > 0).all()):
            raise ValueError("indices: must be strictly ascending")
        if not bool(np.isin(val, (0, 1)).all()):
            raise ValueError("values: must be 0 or 1")
    starts, lengths, run_values = _runs_from_changes(idx, val)
    box: Bbox | None = None
    if idx.size and bbox is None:
        box = _bbox_of_flat(idx, dhw)
    elif idx.size:
        b = [int(v) for v in bbox]  # type: ignore[union-attr]
        if len(b) != 6:
            raise ValueError(f"bbox: expected 6 ints, got {bbox}")
        box = (b[0], b[1], b[2], b[3], b[4], b[5])
        if not all(0 <= box[a] <= box[a + 3] < dhw[a] for a in range(3)):
            raise ValueError(f"bbox: {box} is not an inclusive box inside shape {dhw}")
    return _pack(KIND_DIFF, step, object_id, version, base_version, dhw, int(idx.size), box, starts, lengths,
                 run_values, compress)


def encode_snapshot(mask: np.ndarray, *, object_id: int, version: int, compress: bool | None = None) -> bytes:
    """Encode a whole (D, H, W) mask (non-zero = foreground) as a snapshot frame at ``version``."""
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a (D, H, W) array, got shape {mask.shape}")
    dhw = _check_shape(mask.shape)
    starts, lengths = _foreground_runs(mask)
    count = int(lengths.sum())
    return _pack(KIND_SNAPSHOT, "none", object_id, version, 0, dhw, count, mask_bbox(mask),
                 starts, lengths, np.ones(starts.shape, dtype=np.uint8), compress)


# --- decode ------------------------------------------------------------------------------------------


def decode_diff(
    data: bytes | bytearray | memoryview,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> DiffFrame:
    """Decode and validate a frame from untrusted bytes; any inconsistency raises ``ValueError("frame: ...")``.

    Memory stays bounded by ``max_payload_bytes`` whatever the header claims: runs are not expanded.
    """
    buf = bytes(data)
    if len(buf) < HEADER_SIZE:
        raise ValueError(f"frame: {len(buf)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (magic, fmt, kind, flags, step_code, object_id, version, base_version, d, h, w, count, n_runs,
     *bbox_fields) = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ValueError(f"frame: bad magic {magic!r}, expected {MAGIC!r}")
    if fmt != FRAME_FORMAT_VERSION:
        raise ValueError(f"frame: unsupported format version {fmt} (this reader knows {FRAME_FORMAT_VERSION})")
    if kind not in KIND_NAMES:
        raise ValueError(f"frame: unknown kind {kind}")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"frame: unknown flags 0x{flags:02x}")
    if step_code not in STEP_NAMES:
        raise ValueError(f"frame: unknown step code {step_code}")
    if min(d, h, w) < 1:
        raise ValueError(f"frame: empty shape {(d, h, w)}")
    n_voxels = d * h * w
    if n_voxels > min(max_voxels, MAX_FRAME_VOXELS):
        raise ValueError(f"frame: shape {(d, h, w)} has {n_voxels} voxels, over the limit {max_voxels}")
    if count > n_voxels:
        raise ValueError(f"frame: count {count} exceeds the volume's {n_voxels} voxels")
    if n_runs > count:
        raise ValueError(f"frame: {n_runs} runs for {count} voxels")
    if (count == 0) != (n_runs == 0):
        raise ValueError(f"frame: count {count} with {n_runs} runs")
    has_bbox = bool(flags & FLAG_HAS_BBOX)
    if has_bbox != (count > 0):
        raise ValueError("frame: bbox flag must be set exactly when count > 0")
    bbox: Bbox | None = None
    if has_bbox:
        z0, y0, x0, z1, y1, x1 = bbox_fields
        if not (z0 <= z1 < d and y0 <= y1 < h and x0 <= x1 < w):
            raise ValueError(f"frame: bbox {tuple(bbox_fields)} is not inside shape {(d, h, w)}")
        bbox = (z0, y0, x0, z1, y1, x1)
    elif any(bbox_fields):
        raise ValueError("frame: bbox fields must be zero without the bbox flag")

    payload = buf[HEADER_SIZE:]
    max_len = 2 * _MAX_VARINT_BYTES * n_runs
    if max_len > max_payload_bytes:
        raise ValueError(f"frame: {n_runs} runs may need {max_len} payload bytes, over {max_payload_bytes}")
    if flags & FLAG_ZLIB:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(payload, max_len + 1)
        except zlib.error as exc:
            raise ValueError(f"frame: corrupt zlib payload ({exc})") from None
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data or len(raw) > max_len:
            raise ValueError("frame: zlib payload is truncated, too long, or followed by junk")
        payload = raw
    if not 2 * n_runs <= len(payload) <= max_len:
        raise ValueError(f"frame: {len(payload)} payload bytes cannot hold {n_runs} runs")
    pairs = _varint_decode(payload)
    if pairs.shape[0] != 2 * n_runs:
        raise ValueError(f"frame: payload holds {pairs.shape[0]} varints, expected {2 * n_runs}")
    gaps = pairs[0::2]
    codes = pairs[1::2]
    if n_runs and (int(gaps.max()) >= n_voxels or int(codes.max()) >> 1 >= n_voxels):
        raise ValueError("frame: run out of range")
    lengths = (codes >> np.uint64(1)).astype(np.int64) + 1
    run_values = (codes & np.uint64(1)).astype(np.uint8)
    # n_runs <= max_payload_bytes / 2 and each term < 2**33, so these int64 sums cannot overflow.
    if int(lengths.sum()) != count:
        raise ValueError(f"frame: runs cover {int(lengths.sum())} voxels, header says {count}")
    ends = np.cumsum(gaps.astype(np.int64) + lengths)
    if n_runs and int(ends[-1]) > n_voxels:
        raise ValueError(f"frame: runs end at {int(ends[-1])}, past the volume's {n_voxels} voxels")
    starts = ends - lengths
    if kind == KIND_SNAPSHOT and base_version != 0:
        raise ValueError("frame: a snapshot must have base_version 0")
    return DiffFrame(
        kind=kind,
        object_id=object_id,
        version=version,
        base_version=base_version,
        step=STEP_NAMES[step_code],
        shape=(d, h, w),
        count=count,
        bbox=bbox,
        run_starts=starts,
        run_lengths=lengths,
        run_values=run_values,
        compressed=bool(flags & FLAG_ZLIB),
        nbytes=len(buf),
    )


# --- apply -------------------------------------------------------------------------------------------


def apply_diff(mask: np.ndarray, frame: DiffFrame, current_version: int | None = None) -> int:
    """Apply ``frame`` in place to ``mask`` ((D, H, W) C-contiguous, uint8 or bool); return the new version.

    A diff needs ``current_version == frame.base_version`` (checked when given; else
    ``VersionMismatchError`` and the mask is untouched). A snapshot replaces the mask whatever its version.
    """
    if mask.shape != frame.shape:
        raise ValueError(f"mask: shape {mask.shape} does not match the frame's {frame.shape}")
    if not mask.flags.c_contiguous or not mask.flags.writeable:
        raise ValueError("mask: must be a writeable C-contiguous array")
    if frame.kind == KIND_DIFF and current_version is not None and current_version != frame.base_version:
        raise VersionMismatchError(frame.object_id, current_version, frame.base_version)
    flat = mask.reshape(-1)
    if frame.kind == KIND_SNAPSHOT:
        flat[:] = 0
    n_voxels = flat.shape[0]
    if frame.count <= n_voxels // 8:
        flat[frame.indices] = frame.values
    else:
        # Dense change: paint the runs through prefix sums over the volume instead of expanding
        # 8 * count bytes of indices.
        ends = frame.run_starts + frame.run_lengths
        cover = np.zeros(n_voxels + 1, dtype=np.int8)
        cover[frame.run_starts] += 1
        cover[ends] -= 1
        ones = np.zeros(n_voxels + 1, dtype=np.int8)
        on = frame.run_values == 1
        ones[frame.run_starts[on]] += 1
        ones[ends[on]] -= 1
        covered = np.cumsum(cover[:-1], dtype=np.int8).astype(bool)
        np.copyto(flat, np.cumsum(ones[:-1], dtype=np.int8).astype(flat.dtype), where=covered)
    return frame.version
