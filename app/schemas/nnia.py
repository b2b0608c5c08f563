"""The NNIA packed-array format of nnInteractive's remote protocol (our implementation of its wire format).

    magic "NNIA" | version u8 (1) | codec u8 (1 = blosc2 ZSTD, 2 = blosc2 LZ4) | ndim u8 | dtype-name length u8
    | dtype name (ASCII numpy name, e.g. "uint8") | ndim x int64 dimensions
    | u32 chunk count | per chunk: u64 raw length, u64 compressed length, one blosc2 ``compress2`` frame

Little-endian throughout; a chunk holds at most 1 GiB of raw bytes (blosc2's per-call limit is 2 GiB).
``read_header`` parses the header alone, so a caller can check the shape and dtype against its limits
before spending memory on the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blosc2
import numpy as np

MAGIC = b"NNIA"
VERSION = 1
CHUNK_BYTES = 1 << 30
_CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
_ZSTD_ID = 1
ALLOWED_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                            "float16", "float32", "float64"})


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    payload_offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(buf: bytes | memoryview, field: str = "body") -> Header:
    """Parse and check the header; raises ``ValueError`` naming ``field``."""
    if len(buf) < 8:
        raise ValueError(f"{field}: not an NNIA packed array (too short)")
    magic, version, codec, ndim, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC:
        raise ValueError(f"{field}: not an NNIA packed array (magic {bytes(magic)!r})")
    if version != VERSION:
        raise ValueError(f"{field}: NNIA version {version} is not supported (expected {VERSION})")
    if codec not in _CODECS:
        raise ValueError(f"{field}: NNIA codec id {codec} is not supported (1 = ZSTD, 2 = LZ4)")
    offset = 8 + name_len + 8 * ndim
    if len(buf) < offset + 4:
        raise ValueError(f"{field}: NNIA header truncated")
    name = bytes(buf[8:8 + name_len]).decode("ascii", errors="replace")
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"{field}: dtype {name!r} is not supported (one of {sorted(ALLOWED_DTYPES)})")
    shape = struct.unpack_from(f"<{ndim}q", buf, 8 + name_len)
    if any(d < 0 for d in shape):
        raise ValueError(f"{field}: negative dimension in shape {list(shape)}")
    return Header(tuple(int(d) for d in shape), np.dtype(name), offset)


def unpack(buf: bytes, header: Header | None = None, field: str = "body") -> np.ndarray:
    """The array of a packed buffer; every chunk's declared and framed sizes are checked before decoding."""
    h = header or read_header(buf, field)
    out = np.empty(int(np.prod(h.shape, dtype=np.int64)), dtype=h.dtype)
    raw = out.view(np.uint8)
    mv = memoryview(buf)
    (nchunks,) = struct.unpack_from("<I", buf, h.payload_offset)
    offset, written = h.payload_offset + 4, 0
    for _ in range(nchunks):
        if len(buf) < offset + 16:
            raise ValueError(f"{field}: NNIA payload truncated")
        ulen, clen = struct.unpack_from("<QQ", buf, offset)
        offset += 16
        if written + ulen > raw.size or ulen % max(h.dtype.itemsize, 1) or offset + clen > len(buf):
            raise ValueError(f"{field}: NNIA chunk sizes do not match the shape {list(h.shape)}")
        frame = mv[offset:offset + clen]
        try:
            framed, _, _ = blosc2.get_cbuffer_sizes(frame)
        except Exception as e:  # blosc2 raises its own error types on a broken frame header
            raise ValueError(f"{field}: NNIA chunk is not a blosc2 frame ({e})") from e
        if framed != ulen:
            raise ValueError(f"{field}: NNIA chunk says {ulen} bytes, its frame {framed}")
        if ulen:
            blosc2.decompress2(frame, dst=raw[written:written + ulen])
        written += ulen
        offset += clen
    if written != raw.size:
        raise ValueError(f"{field}: NNIA payload holds {written} bytes, the shape needs {raw.size}")
    return out.reshape(h.shape)


def pack(arr: np.ndarray, clevel: int = 3) -> bytes:
    """Pack ``arr`` with ZSTD and no filter (masks and label blocks compress best so)."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    name = a.dtype.name.encode("ascii")
    parts = [struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, _ZSTD_ID, a.ndim, len(name), name),
             struct.pack(f"<{a.ndim}q", *a.shape)]
    raw = a.reshape(-1).view(np.uint8).data  # a memoryview over the array's bytes, no copy
    chunks = [raw[i:i + CHUNK_BYTES] for i in range(0, raw.nbytes, CHUNK_BYTES)]
    parts.append(struct.pack("<I", len(chunks)))
    for chunk in chunks:
        # typesize = the item size: an all-zero chunk whose length is no multiple of typesize makes a frame
        # blosc2 cannot read back.
        frame = blosc2.compress2(chunk, typesize=a.dtype.itemsize, codec=blosc2.Codec.ZSTD, clevel=clevel,
                                 filters=[blosc2.Filter.NOFILTER])
        parts.append(struct.pack("<QQ", chunk.nbytes, len(frame)))
        parts.append(frame)
    return b"".join(parts)
