"""Compressed voxel data (``.nii.gz``, compressed MetaImage): size checks before inflating, then one pass.

A compressed upload is a promise about how much memory decoding it will take: its header declares the
unpacked size, and a few megabytes of a constant stream can declare gigabytes (a decompression bomb). So
the declared size is checked against a byte limit and against the bytes actually stored (a ratio limit,
as for zip members) before anything is inflated; then the data is inflated exactly once, streaming in
chunks, into a plain file that the reader opens, never past what the header declares. Problems raise
``ValueError`` starting with "file: " (``VolumeTooLargeError`` for the limits).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import IO

CHUNK_BYTES = 1 << 20
TRAILING_SLACK_BYTES = 1 << 20  # a gzip NIfTI may carry this much past its voxels (extensions, padding)
RATIO_FLOOR_BYTES = 8 << 20  # data this small is cheap to inflate whatever its ratio
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # MetaIO's inflateInit2(47): either header is accepted


class TooLarge(ValueError):
    """Over a byte or ratio limit; ``app.io.volumes`` turns it into ``VolumeTooLargeError`` (HTTP 413)."""


def check_declared(filename: str, declared: int, stored: int | None, max_bytes: int, max_ratio: int | None) -> None:
    """Refuse ``declared`` unpacked bytes past ``max_bytes``, or past ``max_ratio`` times the ``stored`` bytes.

    ``stored`` is None for uncompressed data (its size is checked against the file, not inflated).
    """
    if declared > max_bytes:
        raise TooLarge(f"file: {filename!r} declares {declared} bytes of voxel data, over the {max_bytes}-byte "
                       "volume limit")
    if stored is None or max_ratio is None or declared <= RATIO_FLOOR_BYTES:
        return
    ratio = declared / max(stored, 1)
    if ratio > max_ratio:
        raise TooLarge(f"file: {filename!r} declares {declared} bytes of voxel data in {stored} compressed bytes "
                       f"({ratio:.0f}:1, over {max_ratio}:1): refused as a decompression bomb")


def inflate_gzip_file(source: Path, out: IO[bytes], filename: str, cap: int) -> int:
    """Inflate the gzip file ``source`` into ``out``, at most ``cap`` bytes; return the bytes written.

    Stops at ``cap`` (what is past it is never inflated); a stream cut off before its end marker, or whose
    data or checksum is corrupt, is refused.
    """
    written = 0
    try:
        with gzip.open(source, "rb") as stream:
            while written < cap and (chunk := stream.read(min(CHUNK_BYTES, cap - written))):
                out.write(chunk)
                written += len(chunk)
    except EOFError:
        raise ValueError(f"file: {filename!r} is truncated (the gzip stream ends before its end marker)") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"file: {filename!r} is truncated or corrupt (gzip: {exc})") from None
    return written


def inflate_zlib(source: IO[bytes], stored: int, out: IO[bytes], filename: str, expected: int) -> None:
    """Inflate ``stored`` bytes of a zlib (or gzip) stream from ``source`` into ``out``: exactly ``expected`` bytes.

    Refused: a corrupt stream, one that ends before its end marker or before ``expected`` bytes, and one that
    would inflate past ``expected`` (inflating stops there).
    """
    inflater = zlib.decompressobj(_ZLIB_OR_GZIP)
    written = 0
    left = stored
    try:
        while not inflater.eof:
            pending = inflater.unconsumed_tail
            if not pending:
                if left <= 0:
                    break
                pending = source.read(min(CHUNK_BYTES, left))
                if not pending:
                    break
                left -= len(pending)
            chunk = inflater.decompress(pending, max(1, expected - written + 1))
            written += len(chunk)
            if written > expected:
                raise ValueError(f"file: {filename!r}: the compressed voxel data inflates past the {expected} bytes "
                                 "its header declares")
            out.write(chunk)
    except zlib.error as exc:
        raise ValueError(f"file: {filename!r}: the compressed voxel data is corrupt (zlib: {exc})") from None
    if not inflater.eof:
        raise ValueError(f"file: {filename!r}: the compressed voxel data is truncated (the zlib stream ends before "
                         "its end marker)")
    if written < expected:
        raise ValueError(f"file: {filename!r}: the compressed voxel data inflates to {written} bytes, the header "
                         f"declares {expected}")
