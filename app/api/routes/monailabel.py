"""MONAI Label compatibility: the routes OHIF's MONAI Label panel and 3D Slicer's MONAILabel module call.

    GET    /info/                   app info: one interactive model, as "deepedit" and as "deepgrow"
    POST   /infer/{model}           ?image=<datastore id | SeriesInstanceUID>|&session_id=<id>
                                    &output=image|json|all|dicom_seg
                                    form: params (JSON: foreground/background or clicks per label), file?
    PUT    /session/                ?expiry=<s>, form: files (one image file, or the files of one DICOM series)
    GET    /session/{id}            session info (404 when unknown or expired); ?image=true: the uploaded file
    DELETE /session/{id}

The datastore, active learning and training routes are in ``app.api.routes.monailabel_datastore``.

The shapes follow MONAI Label's server (``monailabel/endpoints``): ``output=all`` (the default, as the
Slicer client sends none) is ``multipart/form-data`` with a ``params`` part (application/json, no filename)
and an ``image`` part (application/octet-stream, filename ``label.nrrd``), encoded with urllib3 as MONAI
Label's requests-toolbelt encoder does. The work behind them is ``app.sessions.monailabel_bridge``.

The routes are always mounted; ``app.api.monailabel_gate`` answers 404 while ``monailabel_enabled`` is off
(the dependency checks again) and asks for ``X-API-Key`` when keys are configured unless
``monailabel_open`` is set (docs/service.md, "MONAI Label compatibility").
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException
from urllib3.filepost import encode_multipart_formdata

import app as app_package
from app.api.deps import ManagerDep, SettingsDep
from app.api.dicomweb_deps import BridgeDep, LimitsDep, OptionalDatastoreDep, dicomweb_errors
from app.api.errors import error_responses
from app.api.monailabel_params import parse_params
from app.api.responses import dicom_seg
from app.errors import InvalidInput
from app.io.label_files import RESULT_DTYPES, RESULT_EXTENSIONS, encode_label_image
from app.io.volumes import LoadedVolume, VolumeLimits, load_volume
from app.schemas import paths
from app.schemas.monailabel import (
    ACTIVE_LEARNING_STRATEGIES,
    DEEPEDIT_MODEL,
    DEEPGROW_MODEL,
    AppInfo,
    DatastoreInfo,
    InferOutput,
    ModelInfo,
    SessionCreatedML,
    SessionInfoML,
)
from app.sessions.manager import SessionManager
from app.sessions.monailabel_bridge import ImageEntry, InferResult, MonaiLabelBridge, label_value

router = APIRouter(tags=["MONAI Label compatibility"])

_ERRORS = error_responses(
    401, 404, 422, 502,
    s401="API keys configured, no or a wrong X-API-Key (and not opened).",
    s404="Compatibility routes disabled, or unknown model / session.",
    s422="Bad params, clicks outside the image, unknown series; `field`.")


@router.get(paths.MONAILABEL_INFO, summary="MONAI Label app info", responses=_ERRORS)
async def info(bridge: BridgeDep, settings: SettingsDep, datastore: OptionalDatastoreDep) -> AppInfo:
    labels = {"background": 0, **{name: label_value(name, bridge.labels) for name in bridge.labels}}
    description = (f"Interactive 3D segmentation ({settings.model_config_name}): clicks refine one object per "
                   "label and image; repeated clicks are applied incrementally.")
    models = {
        DEEPEDIT_MODEL: ModelInfo(type="deepedit", labels=labels, description=description),
        DEEPGROW_MODEL: ModelInfo(type="deepgrow", labels=labels, description=description),
    }
    # Slicer's "Next Sample" offers the strategies listed here, so they exist only with a datastore.
    strategies = {name: {"description": text} for name, text in ACTIVE_LEARNING_STRATEGIES.items()
                  } if datastore is not None else {}
    stats = DatastoreInfo(**datastore.status()) if datastore is not None else DatastoreInfo(total=len(bridge))
    return AppInfo(name="segvol-interactive", description=description, version=app_package.__version__,
                   labels=list(labels), models=models, strategies=strategies, datastore=stats)


@router.post(paths.MONAILABEL_INFER, summary="Run the interactive model on an image with clicks",
             response_class=Response, responses=_ERRORS)
async def infer(
    model: str,
    bridge: BridgeDep,
    limits: LimitsDep,
    image: Annotated[str, Query(max_length=256, description="SeriesInstanceUID on the DICOMweb server.")] = "",
    session_id: Annotated[str, Query(max_length=64, description="From PUT /session/ (wins over image).")] = "",
    output: Annotated[InferOutput | None, Query(description="image | json | all (default all) | dicom_seg (a "
                                                            "DICOM SEG of the result; images read from DICOM).")
                      ] = None,
    params: Annotated[str, Form(max_length=1 << 20, description="JSON: clicks and result options.")] = "{}",
    file: Annotated[UploadFile | None, File(description="The image itself, instead of image/session_id.")] = None,
    label: Annotated[UploadFile | None, File(description="Not supported (scribbles).")] = None,
) -> Response:
    if model not in (DEEPEDIT_MODEL, DEEPGROW_MODEL):
        raise HTTPException(404, f"model: no model {model[:64]!r}; models: {[DEEPEDIT_MODEL, DEEPGROW_MODEL]}")
    if label is not None:
        raise InvalidInput("label: label volumes (scribbles) are not supported by this model", field="label")
    options = parse_params(params)
    if session_id:
        entry = bridge.uploaded(session_id)
    elif file is not None:
        entry = await _entry_for_file(bridge, file, limits)
    elif image:
        entry = await bridge.image(image)
    else:
        raise InvalidInput("image: give image (a SeriesInstanceUID), session_id or file", field="image")
    # Everything the reply needs is checked before a click runs: a refused call leaves the labels as they were.
    result_format = _result_format(options)
    if output == "dicom_seg" and entry.session.dicom_headers is None:
        raise InvalidInput(f"output: dicom_seg needs an image read from DICOM (a DICOMweb series or the files of "
                           f"a DICOM series); {entry.name[:80]!r} is not", field="output")
    started = time.perf_counter()
    result = await bridge.infer(entry, options)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    if output == "dicom_seg":
        return await _dicom_seg_reply(result, entry)
    return await _infer_reply(result, result_format, output or "all", elapsed_ms)


@router.put(paths.MONAILABEL_SESSIONS, summary="Upload an image for later /infer calls (MONAI Label session)",
            responses=_ERRORS)
async def create_session(
    bridge: BridgeDep,
    manager: ManagerDep,
    limits: LimitsDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="One image file, or the files of one DICOM series.")],
    expiry: Annotated[int, Query(ge=0, description="Idle seconds before the session ends (0: the server's "
                                                   "idle_timeout_s, also the most allowed).")] = 0,
) -> SessionCreatedML:
    if expiry > settings.idle_timeout_s:
        raise InvalidInput(f"expiry: at most {int(settings.idle_timeout_s)} s on this server (idle_timeout_s), "
                           f"got {expiry}", field="expiry")
    await bridge.ensure_room()  # before the upload is decoded
    loaded, name, data = await _read_files(files, limits)
    entry = await bridge.upload(loaded, name)
    entry.expiry_s = float(expiry) if expiry else None
    path = bridge.file_for(name)
    await asyncio.to_thread(path.write_bytes, data)
    entry.source_file = path
    return SessionCreatedML(session_id=_upload_id(entry), session_info=_session_info(entry, manager))


@router.get(paths.MONAILABEL_SESSION, summary="MONAI Label session info (?image=true: the uploaded image file)",
            response_model=SessionInfoML, responses=_ERRORS)
async def get_session(session_id: str, bridge: BridgeDep, manager: ManagerDep,
                      image: bool = False) -> Any:
    entry = bridge.uploaded(session_id)
    if image:  # the file as uploaded (several DICOM files: the zip of them)
        assert entry.source_file is not None  # every PUT /session/ keeps its upload
        return FileResponse(entry.source_file, media_type="application/octet-stream", filename=entry.name)
    return _session_info(entry, manager)


@router.delete(paths.MONAILABEL_SESSION, summary="Delete a MONAI Label session", responses=_ERRORS)
async def delete_session(session_id: str, bridge: BridgeDep, manager: ManagerDep) -> SessionInfoML:
    entry = bridge.uploaded(session_id)
    info = _session_info(entry, manager)
    await bridge.remove(entry)
    return info


# --- helpers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultFormat:
    """How the result label map is written (MONAI Label's ``result_*`` params)."""

    extension: str
    dtype: str
    compress: bool


def _result_format(options: dict[str, Any]) -> ResultFormat:
    extension = options.get("result_extension") or ".nrrd"
    dtype = options.get("result_dtype") or "uint16"
    if extension not in RESULT_EXTENSIONS:
        raise InvalidInput(f"params.result_extension: expected one of {list(RESULT_EXTENSIONS)}, got "
                           f"{str(extension)[:32]!r}", field="params.result_extension")
    if dtype not in RESULT_DTYPES:
        raise InvalidInput(f"params.result_dtype: expected one of {list(RESULT_DTYPES)}, got {str(dtype)[:32]!r}",
                           field="params.result_dtype")
    return ResultFormat(extension, dtype, bool(options.get("result_compress", False)))


async def _dicom_seg_reply(result: InferResult, entry: ImageEntry) -> Response:
    headers = entry.session.dicom_headers
    assert headers is not None  # checked before the clicks ran
    names = {value: name for name, value in result.label_names.items() if value}
    present = {int(v) for v in np.unique(result.labelmap) if v}
    if not present:
        raise InvalidInput("output: the result is empty; a DICOM SEG needs at least one segmented voxel",
                           field="output")
    seg = await dicom_seg(result.labelmap, headers, {v: names.get(v, f"label {v}") for v in present})
    return Response(seg, media_type="application/dicom",
                    headers={"Content-Disposition": 'attachment; filename="label.dcm"'})


async def _infer_reply(result: InferResult, fmt: ResultFormat, output: str, elapsed_ms: float) -> Response:
    reply = {
        "label_names": result.label_names,
        "centroids": result.centroids,
        "latencies": {"infer": round(elapsed_ms / 1e3, 4)},
        "segsvc": {"tracks": [{"label": t.label, "object_id": t.object_id, "version": t.version,
                               "action": t.action, "new_clicks": t.new_clicks} for t in result.tracks]},
    }
    if output == "json":
        return JSONResponse(reply)
    segments = {name: value for name, value in result.label_names.items() if value}
    try:
        data = await asyncio.to_thread(encode_label_image, result.labelmap, result.meta, fmt.extension, fmt.dtype,
                                       fmt.compress, segments)
    except ValueError as e:
        raise InvalidInput(str(e), field=str(e).split(":", 1)[0]) from None
    filename = "label" + fmt.extension
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    body, content_type = encode_multipart_formdata({
        "params": (None, json.dumps(reply), "application/json"),
        "image": (filename, data, "application/octet-stream"),
    })
    return Response(body, media_type=content_type)


def _upload_id(entry: ImageEntry) -> str:
    return entry.key.split(":", 1)[1]


def _session_info(entry: ImageEntry, manager: SessionManager) -> SessionInfoML:
    now = int(time.time())
    idle_s = time.monotonic() - entry.last_used
    d, h, w = entry.meta.shape
    expires_in = manager.expires_in_s(entry.session)
    if entry.expiry_s is not None:
        expires_in = min(expires_in, entry.expiry_s - idle_s)
    return SessionInfoML(name=_upload_id(entry), image=entry.name, meta={"size_ijk": [w, h, d]},
                         create_ts=int(entry.created_at), last_access_ts=int(now - idle_s),
                         expiry=max(0, int(expires_in)))



async def _entry_for_file(bridge: MonaiLabelBridge, file: UploadFile, limits: VolumeLimits) -> ImageEntry:
    """The image sent inline with /infer: one entry per distinct file content, so clicks stay incremental."""
    data = await file.read()
    digest = hashlib.sha256(data).hexdigest()
    entry = bridge.keyed(f"file:{digest}")
    if entry is None:
        loaded = await _load_bytes(data, file.filename or "", limits)
        entry = await bridge.upload(loaded, file.filename or "", key=f"file:{digest}")
    return entry


async def _read_files(files: list[UploadFile], limits: VolumeLimits) -> tuple[LoadedVolume, str, bytes]:
    """The volume of ``PUT /session/``'s files, its name and the bytes it was read from."""
    if not files:
        raise InvalidInput("files: no file uploaded", field="files")
    if len(files) == 1:
        data = await files[0].read()
        name = files[0].filename or ""
        return await _load_bytes(data, name, limits, field="files"), name, data
    buf = io.BytesIO()  # several files: the slices of one DICOM series, read as a zip of them
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, f in enumerate(files):
            zf.writestr(f"{k:05d}.dcm", await f.read())
    data = buf.getvalue()
    return await _load_bytes(data, "series.zip", limits, field="files"), "series.zip", data


async def _load_bytes(data: bytes, filename: str, limits: VolumeLimits, field: str = "file") -> LoadedVolume:
    if not filename:
        raise InvalidInput(f"{field}: the upload has no filename (its extension picks the reader)", field=field)
    with dicomweb_errors(field):  # the same ValueError / VolumeTooLargeError mapping
        return await asyncio.to_thread(load_volume, data, filename, limits=limits)
