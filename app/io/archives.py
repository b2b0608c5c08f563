"""Untrusted archives and headers: zip members screened before anything is inflated, header fields that point
at other files kept inside the upload.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO

from app.io.volume_types import VolumeLimits, VolumeTooLargeError

_EXTERNAL_DATA_KEYS = {
    "nrrd": re.compile(rb"^\s*data ?file\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE),
    "metaimage": re.compile(rb"^\s*ElementDataFile\s*=\s*(.*)$", re.MULTILINE),
}


def check_no_external_data(path: Path, filename: str, kind: str, inside: Path | None = None) -> None:
    """Refuse headers that make the reader open files outside the upload (a path-traversal read)."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    header = head.split(b"\n\n", 1)[0] if kind == "nrrd" else head
    match = _EXTERNAL_DATA_KEYS[kind].search(header)
    if match is None:
        return
    target = match.group(1).strip().decode("latin-1")
    if kind == "metaimage" and target.upper() == "LOCAL":
        return
    if kind == "metaimage" and inside is not None and re.fullmatch(r"[\w.\-]+", target):
        if (path.parent / target).is_file() and (path.parent / target).resolve().is_relative_to(inside.resolve()):
            return
    raise ValueError(f"file: {filename!r} refers to external data {target!r}; upload a single-file volume "
                     "or a zip holding the header and its data")


def safe_extract(source: Path, filename: str, dest: Path, limits: VolumeLimits) -> None:
    """Extract a zip, refusing traversal, links, too many members and more than the byte budget."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"file: could not read {filename!r} as zip ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_zip_members:
            raise ValueError(f"file: {filename!r} has {len(members)} members, over the "
                             f"{limits.max_zip_members} limit")
        _check_declared_sizes(members, filename, limits)
        dest.mkdir(parents=True)
        budget = limits.max_unzipped_bytes
        for info in members:
            name = info.filename
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                raise ValueError(f"file: zip member {name!r} escapes the archive")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"file: zip member {name!r} is a symbolic link")
            if info.is_dir():
                continue
            target = dest.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    budget = _copy_bounded(src, out, budget, filename, limits)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise ValueError(f"file: corrupt zip member {name!r} ({exc})") from None
            except OSError as exc:  # a file where a folder is expected, a name too long, ...
                raise ValueError(f"file: cannot extract zip member {name!r} ({exc.strerror})") from None


def _check_declared_sizes(members: list[zipfile.ZipInfo], filename: str, limits: VolumeLimits) -> None:
    """Refuse a zip bomb from its central directory, before inflating anything.

    A member never inflates past the size it declares (``zipfile`` stops there and reports a CRC error), so
    the declared total bounds the work; an archive or a member that declares far more than it stores
    (deflate reaches ~1000:1 on constant bytes, medical images ~2-10:1) is refused once past
    ``_RATIO_FLOOR_BYTES`` unpacked.
    """
    declared = sum(info.file_size for info in members)
    if declared > limits.max_unzipped_bytes:
        raise VolumeTooLargeError(f"file: {filename!r} unpacks to more than {limits.max_unzipped_bytes} bytes "
                                  f"(its members declare {declared})")
    stored = sum(info.compress_size for info in members)
    whole = [(f"{filename!r}", declared, stored)]  # many small members, each under the floor, add up here
    for name, unpacked, packed in whole + [(f"zip member {i.filename!r}", i.file_size, i.compress_size)
                                           for i in members]:
        ratio = unpacked / max(packed, 1)
        if unpacked > _RATIO_FLOOR_BYTES and ratio > limits.max_zip_ratio:
            raise VolumeTooLargeError(f"file: {name} unpacks {ratio:.0f} times its stored size (over "
                                      f"{limits.max_zip_ratio}:1): refused as a zip bomb")


_RATIO_FLOOR_BYTES = 8 << 20  # members this small are cheap to inflate whatever their ratio


def _copy_bounded(src: IO[bytes], out: IO[bytes], budget: int, filename: str,
                  limits: VolumeLimits) -> int:
    while chunk := src.read(1 << 20):
        budget -= len(chunk)
        if budget < 0:
            raise VolumeTooLargeError(f"file: {filename!r} unpacks to more than {limits.max_unzipped_bytes} "
                                      "bytes")
        out.write(chunk)
    return budget
