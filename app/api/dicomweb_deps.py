"""Dependencies of the DICOMweb and MONAI Label routes: the DICOMweb source and the MONAI Label bridge.

Both are built on first use and kept on ``app.state`` next to the process's ``Services`` (a new lifespan,
as in tests, gets new ones). ``dicomweb_errors`` turns what the DICOMweb side reports into replies: a
series that is not there -> 422 naming ``image``/``series_uid``, over the upload limit -> 413, the DICOMweb
server failing or unreachable -> 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from app.api.deps import get_services
from app.errors import InvalidInput, PayloadTooLarge
from app.io.dicomweb import DicomwebError, DicomwebSource
from app.io.monailabel_datastore import LabelDatastore
from app.io.volumes import LoadedVolume, VolumeLimits, VolumeTooLargeError, load_volume
from app.schemas.errors import field_from_message
from app.sessions.monailabel_bridge import MonaiLabelBridge, StoredImages

_VOLUME_FIELDS = ("file", "image")


@contextmanager
def dicomweb_errors(field: str = "image") -> Iterator[None]:
    """Map the DICOMweb side's errors to replies (see the module docstring)."""
    try:
        yield
    except DicomwebError as e:
        raise HTTPException(502, str(e)) from None
    except VolumeTooLargeError as e:
        raise PayloadTooLarge(str(e), field=field) from None
    except ValueError as e:
        # The readers name the volume "file" or "image"; the reply names the request's own field for it
        # (``files`` of PUT /session/, ``image`` of a DICOMweb id), so a client finds the part at fault.
        message = str(e)
        head, sep, rest = message.partition(": ")
        if sep and head in _VOLUME_FIELDS and head != field:
            message = f"{field}: {rest}"
        raise InvalidInput(message, field=field_from_message(message) or field) from None


def volume_limits(conn: HTTPConnection) -> VolumeLimits:
    settings = get_services(conn).settings
    return settings.volume_limits


def dicomweb_source(conn: HTTPConnection) -> DicomwebSource | None:
    """The configured DICOMweb server, or None when ``dicomweb_url`` is unset."""
    url = get_services(conn).settings.dicomweb_url
    if not url:
        return None
    source: DicomwebSource | None = getattr(conn.app.state, "dicomweb_source", None)
    if source is None or source.url != url.rstrip("/"):
        source = DicomwebSource(url)
        conn.app.state.dicomweb_source = source
    return source


def require_dicomweb(conn: HTTPConnection) -> DicomwebSource:
    source = dicomweb_source(conn)
    if source is None:
        raise HTTPException(404, "dicomweb: this server has no DICOMweb server configured (dicomweb_url)")
    return source


async def load_series(source: DicomwebSource, series_uid: str, limits: VolumeLimits, field: str = "image"
                      ) -> LoadedVolume:
    """The series as a volume, read off the event loop, errors mapped as ``dicomweb_errors`` does."""
    with dicomweb_errors(field):
        return await asyncio.to_thread(source.load_series, series_uid, limits)


def monailabel_datastore(conn: HTTPConnection) -> LabelDatastore | None:
    """The MONAI Label datastore of ``monailabel_datastore_dir``, opened once; None when there is none."""
    root = get_services(conn).settings.monailabel_datastore_dir
    if root is None:
        return None
    held: LabelDatastore | None = getattr(conn.app.state, "monailabel_datastore", None)
    if held is None or held.root != root:
        held = LabelDatastore(root)
        conn.app.state.monailabel_datastore = held
    return held


def require_datastore(conn: HTTPConnection) -> LabelDatastore:
    datastore = monailabel_datastore(conn)
    if datastore is None:
        raise HTTPException(404, "datastore: this server keeps no MONAI Label datastore (set "
                            "monailabel_datastore or storage_dir)")
    return datastore


def get_bridge(conn: HTTPConnection) -> MonaiLabelBridge:
    """The MONAI Label bridge; 404 when the compatibility routes are off (``monailabel_enabled``)."""
    services = get_services(conn)
    if not services.settings.monailabel_enabled:
        raise HTTPException(404, "Not Found")
    held = getattr(conn.app.state, "monailabel_bridge", None)
    if held is None or held[0] is not services:
        source = dicomweb_source(conn)
        limits = volume_limits(conn)

        async def load(image_id: str) -> LoadedVolume:
            assert source is not None
            return await load_series(source, image_id, limits)

        datastore = monailabel_datastore(conn)
        stored = None
        if datastore is not None:
            store = datastore  # bound for the closure

            async def load_stored(image_id: str) -> LoadedVolume:
                found = store.image_file(image_id)
                if found is None:
                    raise InvalidInput(f"image: no image {image_id[:80]!r} in the datastore", field="image")
                with dicomweb_errors("image"):  # the same ValueError / too-large mapping
                    return await asyncio.to_thread(load_volume, found.path, found.name, limits=limits)

            stored = StoredImages(has=datastore.has_image, load=load_stored)
        bridge = MonaiLabelBridge(services.manager, services.settings.monailabel_labels,
                                  load if source is not None else None, stored)
        held = (services, bridge)
        conn.app.state.monailabel_bridge = held
    return held[1]  # type: ignore[no-any-return]


BridgeDep = Annotated[MonaiLabelBridge, Depends(get_bridge)]
DicomwebDep = Annotated[DicomwebSource, Depends(require_dicomweb)]
LimitsDep = Annotated[VolumeLimits, Depends(volume_limits)]
OptionalDicomwebDep = Annotated[DicomwebSource | None, Depends(dicomweb_source)]
DatastoreDep = Annotated[LabelDatastore, Depends(require_datastore)]
OptionalDatastoreDep = Annotated[LabelDatastore | None, Depends(monailabel_datastore)]
