"""Label volumes in the files MONAI Label clients exchange: results they read, labels they save.

* ``encode_label_image``: a (D, H, W) label map as NRRD or NIfTI with the image's geometry (SimpleITK), in
  the dtype and compression the client asks for (OHIF's panel asks ``.nrrd``, ``uint16``, uncompressed and
  reads the raw voxels itself; Slicer reads any file SimpleITK reads).
* ``decode_label_upload``: a saved label (``PUT /datastore/label``): NRRD/NIfTI (Slicer) read with the
  project's loader, or OHIF's ``label.bin``, the raw uint8 voxels in x-fastest order, which MONAI Label reads
  as ``np.fromfile(uint8).reshape((X, Y, Z), order="F")``, i.e. a C-order (Z, Y, X) array.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.io.volumes import VolumeLimits, VolumeMeta, load_volume

RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
RESULT_DTYPES: dict[str, type[np.unsignedinteger]] = {"uint8": np.uint8, "uint16": np.uint16}


def encode_label_image(labelmap: np.ndarray, meta: VolumeMeta, extension: str = ".nrrd",
                       dtype: str = "uint16", compress: bool = False) -> bytes:
    """The label map as a file of ``extension`` with ``meta``'s spacing, origin and direction.

    Raises ``ValueError`` naming ``params.result_extension`` / ``params.result_dtype`` for unsupported values.
    """
    if extension not in RESULT_EXTENSIONS:
        raise ValueError(f"params.result_extension: expected one of {list(RESULT_EXTENSIONS)}, got {extension!r}")
    if dtype not in RESULT_DTYPES:
        raise ValueError(f"params.result_dtype: expected one of {list(RESULT_DTYPES)}, got {dtype!r}")
    if labelmap.shape != meta.shape:
        raise ValueError(f"mask: shape {labelmap.shape} does not match the image's {meta.shape}")
    out = RESULT_DTYPES[dtype]
    if labelmap.size and int(labelmap.max()) > np.iinfo(out).max:
        raise ValueError(f"params.result_dtype: {dtype} cannot hold label value {int(labelmap.max())}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(labelmap, dtype=out))
    image.SetSpacing(tuple(float(s) for s in reversed(meta.spacing)))
    image.SetOrigin(tuple(float(o) for o in meta.origin))
    image.SetDirection(tuple(float(d) for d in meta.direction))
    with tempfile.TemporaryDirectory(prefix="label-") as tmp:
        path = Path(tmp) / f"label{extension}"
        sitk.WriteImage(image, str(path), useCompression=bool(compress) or extension == ".nii.gz")
        return path.read_bytes()


def decode_label_upload(data: bytes, filename: str, meta: VolumeMeta,
                        limits: VolumeLimits = VolumeLimits()) -> np.ndarray:  # noqa: B008
    """A saved label as a (D, H, W) integer label map of the image's shape; ``ValueError`` naming ``label``."""
    if filename.lower().endswith(".bin"):
        d, h, w = meta.shape
        if len(data) != d * h * w:
            raise ValueError(f"label: {filename!r} has {len(data)} bytes; a uint8 label of the image needs "
                             f"{d * h * w} (i, j, k = {w} x {h} x {d})")
        return np.frombuffer(data, dtype=np.uint8).reshape(meta.shape).copy()
    try:
        array = load_volume(data, filename, limits=limits).array
    except ValueError as e:
        raise ValueError("label: " + str(e).removeprefix("file: ")) from None
    if array.shape != meta.shape:
        raise ValueError(f"label: shape (D, H, W) {tuple(array.shape)} does not match the image's {meta.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise ValueError("label: values must be whole label numbers")
        array = np.round(array)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError("label: values must be in 0..65535")
    return array.astype(np.uint16 if array.size and array.max() > 255 else np.uint8)
