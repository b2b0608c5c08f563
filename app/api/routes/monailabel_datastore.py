"""MONAI Label's datastore, active learning and training routes, as 3D Slicer's MONAILabel module calls them.

    PUT    /datastore/?image=<id>   (also /datastore/image) form: file, params -> {image}
    GET    /datastore/              ?output=stats (default) | all | train
    GET    /datastore/image         ?image=<id> -> the uploaded file
    PUT    /datastore/label         ?image=<id>&tag=<tag>, form: label, params -> {image, label}
                                    (an image of the DICOMweb server instead: the label as a DICOM SEG, STOW-RS)
    GET    /datastore/label         ?label=<id>&tag=<tag> -> the saved file
    POST   /activelearning/{strategy}  -> the next unlabelled image {id, name, ...} or {} when none is left
    GET    /train/                  ?check_if_running=true -> 404 (nothing runs); else {status: NOT_AVAILABLE}

Slicer's loop: upload the shown volume (``PUT /datastore/``), infer by that id, save the label, "Next Sample"
(active learning, then ``GET /datastore/image``). The files are kept by ``app.io.monailabel_datastore``
under ``monailabel_datastore_dir`` (``<storage_dir>/monailabel.datastore`` by default), so saved labels survive a
restart. Gated like the other MONAI Label routes (``app.api.monailabel_gate``).
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from app.api.dicomweb_deps import (
    BridgeDep,
    DatastoreDep,
    LimitsDep,
    OptionalDatastoreDep,
    OptionalDicomwebDep,
    dicomweb_errors,
)
from app.api.errors import error_responses
from app.api.monailabel_params import parse_params
from app.api.responses import dicom_seg
from app.errors import InvalidInput
from app.io.label_files import decode_label_upload
from app.io.monailabel_datastore import (
    DEFAULT_LABEL_TAG,
    DatastoreError,
    LabelDatastore,
    check_id,
    check_tag,
    file_extension,
)
from app.io.volumes import VolumeLimits, VolumeMeta, load_volume
from app.schemas import paths
from app.schemas.monailabel import (
    ACTIVE_LEARNING_STRATEGIES,
    DatastoreLabelSaved,
    ImageAdded,
    LabelSaved,
    TrainStatus,
)
from app.sessions.monailabel_bridge import MonaiLabelBridge

router = APIRouter(tags=["MONAI Label compatibility"])

_ERRORS = error_responses(
    401, 404, 413, 422, 502,
    s401="API keys configured, no or a wrong X-API-Key (and not opened).",
    s404="Compatibility routes disabled, no datastore configured, or unknown image / label.",
    s413="Upload past max_upload_bytes or max_voxels.",
    s422="Unreadable file, a label that does not fit its image, bad id / tag / params; `field`.")


def _refused(error: DatastoreError) -> InvalidInput:
    message = str(error)
    return InvalidInput(message, field=message.split(":", 1)[0])


@router.put(paths.MONAILABEL_DATASTORE, summary="Upload an image to the datastore (Slicer's upload_image; "
            "MONAI Label's older path of PUT /datastore/image)", responses=_ERRORS)
@router.put(paths.MONAILABEL_DATASTORE_IMAGE, summary="Upload an image to the datastore", responses=_ERRORS)
async def add_image(
    datastore: DatastoreDep,
    bridge: BridgeDep,
    limits: LimitsDep,
    file: Annotated[UploadFile, File(description="The image (.nrrd, .nii.gz, .nii, .mha, .npz, .zip).")],
    image: Annotated[str, Query(max_length=256, description="Image id (default: the file name).")] = "",
    params: Annotated[str, Form(max_length=1 << 20, description="JSON, kept as the image's info.")] = "{}",
) -> ImageAdded:
    options = parse_params(params)
    filename = file.filename or ""
    try:
        ext = file_extension(filename)
        image_id = check_id(image or filename[: len(filename) - len(ext)], "image")
    except DatastoreError as e:
        raise _refused(e) from None
    if ext in (".bin", ".seg.nrrd"):
        raise InvalidInput(f"file: {filename[:80]!r} is a label file type, not an image", field="file")
    data = await file.read()
    with dicomweb_errors("file"):  # a file this server cannot segment is refused before it is kept
        await asyncio.to_thread(load_volume, data, f"image{ext}", limits=limits)
    info = {k: v for k, v in options.items() if k != "client_id"}
    await asyncio.to_thread(datastore.add_image, image_id, data, ext, info)
    await bridge.forget_stored(image_id)  # a replaced image: the next /infer reads the new file
    return ImageAdded(image=image_id)


@router.get(paths.MONAILABEL_DATASTORE, summary="The datastore (Slicer's datastore())", responses=_ERRORS)
async def list_datastore(
    datastore: DatastoreDep,
    output: Annotated[Literal["stats", "all", "train"], Query()] = "stats",
) -> JSONResponse:
    if output == "all":
        return JSONResponse(await asyncio.to_thread(datastore.json))
    if output == "train":
        objects = (await asyncio.to_thread(datastore.json))["objects"]
        return JSONResponse([{"image": image_id, "label": image_id} for image_id, obj in objects.items()
                             if DEFAULT_LABEL_TAG in obj["labels"]])
    return JSONResponse(datastore.status())


@router.get(paths.MONAILABEL_DATASTORE_IMAGE, summary="Download a datastore image", responses=_ERRORS)
async def download_image(
    datastore: DatastoreDep,
    image: Annotated[str, Query(max_length=256)],
) -> FileResponse:
    found = datastore.image_file(image)
    if found is None:
        raise HTTPException(404, f"image: no image {image[:80]!r} in the datastore")
    return FileResponse(found.path, media_type="application/octet-stream", filename=found.name)


@router.put(paths.MONAILABEL_DATASTORE_LABEL, summary="Save a label (datastore image: kept as a file; DICOMweb "
            "series: stored as DICOM SEG with STOW-RS)", responses=_ERRORS)
async def save_label(
    bridge: BridgeDep,
    limits: LimitsDep,
    datastore: OptionalDatastoreDep,
    source: OptionalDicomwebDep,
    image: Annotated[str, Query(max_length=256, description="The image id (datastore) or SeriesInstanceUID.")],
    label: Annotated[UploadFile, File(description="label.nrrd / .seg.nrrd / .nii.gz, or label.bin (raw uint8, "
                                                  "x fastest)")],
    params: Annotated[str, Form(max_length=1 << 20)] = "{}",
    tag: Annotated[str, Query(max_length=64, description='Label tag (default "final").')] = "",
) -> DatastoreLabelSaved | LabelSaved:
    options = parse_params(params)
    try:
        tag = check_tag(tag or DEFAULT_LABEL_TAG)
        ext = file_extension(label.filename or "label.bin", field="label")
    except DatastoreError as e:
        raise _refused(e) from None
    data = await label.read()
    if datastore is not None and datastore.has_image(image):
        meta = await _datastore_meta(datastore, image, limits)
        labelmap = await _decode_label(data, label.filename or f"label{ext}", meta, limits)
        names = {name: value for value, name in sorted(_names_by_value(options, bridge, labelmap).items())}
        info = {**{k: v for k, v in options.items() if k != "client_id"}, "label_names": names}
        try:
            label_id = await asyncio.to_thread(datastore.save_label, image, data, ext, tag, info)
        except DatastoreError as e:
            raise _refused(e) from None
        return DatastoreLabelSaved(image=image, label=label_id)
    if source is None:
        raise InvalidInput(f"image: no image {image[:80]!r} in the datastore and no DICOMweb server is "
                           "configured (dicomweb_url)", field="image")
    entry = await bridge.image(image)
    labelmap = await _decode_label(data, label.filename or "label.bin", entry.meta, limits)
    present = [int(v) for v in np.unique(labelmap) if v != 0]
    if not present:
        raise InvalidInput("label: the label is empty; nothing to store", field="label")
    headers = entry.session.dicom_headers
    if headers is None:
        raise InvalidInput(f"image: {image[:80]!r} was not read from DICOM", field="image")
    by_value = _names_by_value(options, bridge, labelmap)
    seg = await dicom_seg(labelmap, headers, {v: by_value[v] for v in present})
    with dicomweb_errors("image"):
        stored = await asyncio.to_thread(source.store, seg)
    return LabelSaved(image=image, label=stored.sop_instance_uid, study_instance_uid=stored.study_instance_uid,
                      series_instance_uid=stored.series_instance_uid, sop_instance_uid=stored.sop_instance_uid)


@router.get(paths.MONAILABEL_DATASTORE_LABEL, summary="Download a saved label (Slicer's download_label)",
            responses=_ERRORS)
async def download_label(
    datastore: DatastoreDep,
    label: Annotated[str, Query(max_length=256, description="The label id (= its image id).")],
    tag: Annotated[str, Query(max_length=64)] = DEFAULT_LABEL_TAG,
) -> FileResponse:
    found = datastore.label_file(label, tag or DEFAULT_LABEL_TAG)
    if found is None:
        raise HTTPException(404, f"label: no label {label[:80]!r} with tag {tag[:64]!r} in the datastore")
    return FileResponse(found.path, media_type="application/octet-stream", filename=found.name)


@router.post(paths.MONAILABEL_ACTIVELEARNING, summary="The next image to label (Slicer's Next Sample)",
             responses=_ERRORS)
async def next_sample(
    strategy: str,
    datastore: DatastoreDep,
    request: Request,
    params: Annotated[dict[str, Any] | None, Body()] = None,
) -> JSONResponse:
    if strategy not in ACTIVE_LEARNING_STRATEGIES:
        raise HTTPException(404, f"strategy: no strategy {strategy[:64]!r}; strategies: "
                            f"{list(ACTIVE_LEARNING_STRATEGIES)}")
    candidates = await asyncio.to_thread(datastore.unlabeled)
    if not candidates:
        return JSONResponse({})  # upstream's answer when every image is labelled
    image_id = candidates[0] if strategy == "first" else random.choice(candidates)  # noqa: S311 - not security
    info = datastore.json()["objects"][image_id]["image"]["info"]
    return JSONResponse({**info, "id": image_id, "strategy": strategy})


@router.get(paths.MONAILABEL_TRAIN, summary="Training status: this server does not train", responses=_ERRORS)
async def train_status(check_if_running: bool = False) -> TrainStatus:
    if check_if_running:  # MONAI Label: 404 = no training task is running (the client reads it as False)
        raise HTTPException(404, "No Train Tasks are currently Running")
    return TrainStatus()


# --- helpers ------------------------------------------------------------------------------------------------


async def _datastore_meta(datastore: LabelDatastore, image_id: str, limits: VolumeLimits) -> VolumeMeta:
    found = datastore.image_file(image_id)
    if found is None:
        raise InvalidInput(f"image: no image {image_id[:80]!r} in the datastore", field="image")
    with dicomweb_errors("image"):
        loaded = await asyncio.to_thread(load_volume, found.path, found.name, limits=limits)
    return loaded.meta


async def _decode_label(data: bytes, filename: str, meta: VolumeMeta, limits: VolumeLimits) -> np.ndarray:
    try:
        return await asyncio.to_thread(decode_label_upload, data, filename, meta, limits)
    except ValueError as e:
        raise InvalidInput(str(e), field="label") from None


def _names_by_value(options: dict[str, Any], bridge: MonaiLabelBridge, labelmap: np.ndarray) -> dict[int, str]:
    """Value -> segment name of a saved label's values: Slicer's ``label_info`` [{name, idx}] where given,
    else the model's labels by value, else "label <v>"."""
    present = [int(v) for v in np.unique(labelmap) if v != 0]
    by_value = bridge.labelmap_names(present)
    for item in options.get("label_info") or []:
        if isinstance(item, dict) and isinstance(item.get("idx"), int) and isinstance(item.get("name"), str):
            if item["idx"] in by_value:
                by_value[item["idx"]] = item["name"][:64]
    return by_value
