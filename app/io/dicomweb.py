"""Read a DICOM series from a DICOMweb server and store DICOM instances back (QIDO-RS, WADO-RS, STOW-RS).

    source = DicomwebSource("http://orthanc:8042/dicom-web")
    loaded = source.load_series(series_uid, limits)     # LoadedVolume with dicom_headers, like a .zip upload
    source.store(seg_bytes)                             # STOW-RS; returns the stored instance's UIDs

The transport is the ``dicomweb-client`` package (QIDO search to find the series' study, WADO-RS retrieve of
every instance, STOW-RS store). The volume is then built by the project's own DICOM series loader
(``app.io.volumes``: GDCM slice sorting, geometry, each slice's header for DICOM SEG export): the retrieved
instances are written to a temporary zip and read exactly as an uploaded series would be, so a series from
DICOMweb and the same series uploaded as a zip give the same array.

Blocking (requests): call from a worker thread. Problems raise ``DicomwebError`` (the server is unreachable
or refused) or ``ValueError`` starting with the field at fault ("image: ..." for an unknown series).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from app.io.volumes import LoadedVolume, VolumeLimits, VolumeTooLargeError, load_volume

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"


class DicomwebError(RuntimeError):
    """The DICOMweb server could not be reached or refused a request (the message names which)."""


@dataclass(frozen=True)
class StoredInstance:
    """UIDs of an instance stored with STOW-RS."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class DicomwebSource:
    """One DICOMweb server (the ``dicomweb_url`` setting)."""

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        """``url``: the DICOMweb root; ``http://user:password@host/...`` logs in with HTTP basic auth."""
        from dicomweb_client.api import DICOMwebClient  # server-side only: importing app.io stays cheap
        from dicomweb_client.session_utils import create_session_from_user_pass

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        session = None
        if parts.username is not None:  # credentials go to a requests session, not into every request URL
            session = create_session_from_user_pass(unquote(parts.username), unquote(parts.password or ""))
            host = parts.hostname or ""
            netloc = f"[{host}]" if ":" in host else host
            parts = parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else ""))
        self._client = DICOMwebClient(url=urlunsplit(parts), session=session, timeout=timeout_s)
        self._client.set_http_retry_params(retry=False)  # a viewer waits on the answer: fail fast, clearly

    def study_of_series(self, series_uid: str) -> str:
        """The StudyInstanceUID of ``series_uid`` (QIDO-RS); ``ValueError`` naming ``image`` when unknown."""
        _check_uid(series_uid)
        found = self._call("QIDO-RS search for series", self._client.search_for_series,
                           search_filters={"SeriesInstanceUID": series_uid}, fields=["StudyInstanceUID"])
        studies = {_value(item, _STUDY_UID) for item in found if _value(item, _SERIES_UID) in ("", series_uid)}
        studies.discard("")
        if not studies:
            raise ValueError(f"image: no series {series_uid} on the DICOMweb server")
        if len(studies) > 1:
            raise ValueError(f"image: series {series_uid} appears in {len(studies)} studies")
        return studies.pop()

    def load_series(self, series_uid: str, limits: VolumeLimits = VolumeLimits()) -> LoadedVolume:  # noqa: B008
        """Retrieve every instance of ``series_uid`` (WADO-RS) and load them as one volume.

        Raises ``ValueError`` ("image: ...") for an unknown or unreadable series, ``VolumeTooLargeError`` past
        ``limits``, ``DicomwebError`` when the server fails.
        """
        study_uid = self.study_of_series(series_uid)
        datasets = self._call("WADO-RS retrieve series", self._client.retrieve_series,
                              study_instance_uid=study_uid, series_instance_uid=series_uid)
        if not datasets:
            raise ValueError(f"image: series {series_uid} has no instances")
        with tempfile.TemporaryDirectory(prefix="dicomweb-") as tmp:
            archive = Path(tmp) / "series.zip"
            total = 0
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                for k, ds in enumerate(datasets):
                    buf = io.BytesIO()
                    ds.save_as(buf, enforce_file_format=True)
                    total += buf.tell()
                    if total > limits.max_bytes:
                        raise VolumeTooLargeError(f"image: series {series_uid} is over the "
                                                  f"{limits.max_bytes}-byte upload limit")
                    zf.writestr(f"{k:05d}.dcm", buf.getvalue())
            try:
                return load_volume(archive, "series.zip", limits=limits)
            except VolumeTooLargeError:
                raise
            except ValueError as e:
                raise ValueError("image: " + str(e).removeprefix("file: ")) from None

    def store(self, instance: bytes) -> StoredInstance:
        """Store one DICOM Part 10 instance (STOW-RS) and return its UIDs."""
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(instance))
        self._call("STOW-RS store", self._client.store_instances, datasets=[ds])
        return StoredInstance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))

    def instances_of_series(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of a series (QIDO-RS), e.g. to check that a stored SEG is there."""
        found = self._call("QIDO-RS search for instances", self._client.search_for_instances,
                           study_instance_uid=study_uid, series_instance_uid=series_uid)
        return [_value(item, _SOP_UID) for item in found]

    def _call(self, what: str, fn, **kwargs):  # noqa: ANN001, ANN202 - thin wrapper around the client
        import requests

        try:
            return fn(**kwargs)
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            if status == 404 and what.startswith("WADO"):
                raise ValueError(f"image: the DICOMweb server has no such series ({what}: 404)") from None
            raise DicomwebError(f"dicomweb: {what} failed with HTTP {status}") from None
        except requests.RequestException as e:
            raise DicomwebError(f"dicomweb: {what} failed: {type(e).__name__}") from None


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _check_uid(uid: str) -> None:
    """A DICOM UID: digits and dots, at most 64 characters (also keeps the query string clean)."""
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise ValueError(f"image: {uid[:80]!r} is not a DICOM SeriesInstanceUID (digits and dots, "
                         "at most 64 characters)")
