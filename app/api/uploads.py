"""Reading uploaded files off the event loop: spool the multipart part to a temporary file, then parse it.

The request body size is bounded while it streams in (``app.api.middleware.BodySizeLimit``); the readers
in ``app.io.volumes`` check sizes again before decoding pixels.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fastapi import UploadFile

from app.errors import InvalidInput, InvalidVolume, PayloadTooLarge
from app.io.volumes import (
    LoadedVolume,
    SpacingOrder,
    VolumeLimits,
    VolumeMeta,
    VolumeTooLargeError,
    load_mask,
    load_volume,
)
from app.schemas.errors import field_from_message


def _suffix(filename: str) -> str:
    name = filename.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _load_volume_file(src: BinaryIO, filename: str, limits: VolumeLimits, spacing_order: SpacingOrder
                      ) -> LoadedVolume:
    with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
        path = Path(tmp) / f"upload{_suffix(filename)}"
        with path.open("wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
        return load_volume(path, filename, limits=limits, spacing_order=spacing_order)


async def read_volume(upload: UploadFile, limits: VolumeLimits, spacing_order: SpacingOrder) -> LoadedVolume:
    """The uploaded volume, validated (``InvalidVolume`` / ``PayloadTooLarge`` naming the problem)."""
    filename = upload.filename or ""
    if not filename:
        raise InvalidVolume("file: the upload has no filename (its extension picks the reader)", field="file")
    await upload.seek(0)
    try:
        return await asyncio.to_thread(_load_volume_file, upload.file, filename, limits, spacing_order)
    except ValueError as e:
        raise _upload_error(e, InvalidVolume) from e


async def read_mask(upload: UploadFile, like: VolumeMeta, limits: VolumeLimits) -> np.ndarray:
    """An uploaded (D, H, W) 0/1 mask of the session's shape (``InvalidInput`` naming the problem)."""
    filename = upload.filename or ""
    if not filename:
        raise InvalidInput("file: the upload has no filename (its extension picks the reader)", field="file")
    await upload.seek(0)
    data = await upload.read()
    try:
        return await asyncio.to_thread(load_mask, data, filename, like, limits=limits)
    except ValueError as e:
        raise _upload_error(e, InvalidInput) from e


def _upload_error(e: ValueError, kind: type[InvalidVolume] | type[InvalidInput]) -> Exception:
    """A loader's ValueError as a domain error naming its field (413 for an over-limit upload)."""
    message = str(e)
    field = field_from_message(message) or "file"
    if isinstance(e, VolumeTooLargeError):
        return PayloadTooLarge(message, field=field)
    return kind(message, field=field)
