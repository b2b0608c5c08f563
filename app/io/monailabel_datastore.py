"""The MONAI Label datastore: images a viewer uploads and the labels it saves, kept as files in one directory.

3D Slicer's MONAILabel module works against a server-side datastore: it uploads the volume it shows
(``PUT /datastore/?image=<name>``), runs the model on it by that id (``POST /infer/{model}?image=<name>``),
saves the finished label (``PUT /datastore/label?image=<name>``), lists the datastore and asks for the next
unlabelled image (``POST /activelearning/{strategy}``). This module is that store, laid out like MONAI
Label's ``LocalDatastore`` so that ``GET /datastore/?output=all`` has the shape the module reads:

    <root>/datastore.json             {name, description, images_dir, labels_dir, objects: {id: {image, labels}}}
    <root>/images/<file><ext>         the uploaded image, bytes as received
    <root>/labels/<tag>/<file><ext>   the saved label of tag <tag> ("final" unless the client names another)

``objects[id] = {"image": {"ext", "info"}, "labels": {tag: {"ext", "info"}}}``; a label's id is its image's
id, as upstream. File names are derived from the id (``_file_stem``: safe characters plus a digest), since
Slicer's ids are volume node names that may hold spaces or slashes. Every file and the index are written to a
temporary name and renamed, so a crash leaves either the old or the new state; the index is read back at
start-up, so saved labels survive a restart. One process owns a root (as one process owns its sessions).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_FILE = "datastore.json"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
DEFAULT_LABEL_TAG = "final"
"""MONAI Label's ``DefaultLabelTag.FINAL``: the tag of a label saved without one."""
MAX_ID_CHARS = 256
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# Image and label files this server reads (app.io.volumes.detect_format); ".seg.nrrd" is Slicer's segmentation.
_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".npz", ".zip", ".bin")


class DatastoreError(ValueError):
    """A request the datastore refuses; the message starts with the field at fault."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    name: str  # the file name a download carries


def file_extension(filename: str, field: str = "file") -> str:
    """The extension of ``filename`` the datastore keeps (".nii.gz", ".seg.nrrd", ...); ``DatastoreError``
    naming ``field`` for a type no reader here handles."""
    lower = filename.lower()
    for ext in _EXTENSIONS:
        if lower.endswith(ext):
            return ext
    raise DatastoreError(f"{field}: unsupported file type {filename[:80]!r}; expected one of {list(_EXTENSIONS)}")


def check_id(value: str, field: str) -> str:
    if not value or len(value) > MAX_ID_CHARS or any(ord(c) < 32 for c in value):
        raise DatastoreError(f"{field}: expected an id of 1 to {MAX_ID_CHARS} printable characters")
    return value


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise DatastoreError("tag: expected 1 to 64 characters of letters, digits, '_', '.', '-'")
    return tag


def _file_stem(item_id: str) -> str:
    """A file name for ``item_id`` that is safe on any file system and unique per id."""
    readable = _UNSAFE.sub("_", item_id).strip("._")[:64] or "image"
    return f"{readable}-{hashlib.sha256(item_id.encode()).hexdigest()[:12]}"


class LabelDatastore:
    """Images and saved labels under ``root`` (thread-safe: routes call it through ``asyncio.to_thread``)."""

    def __init__(self, root: Path, name: str = "segvol-interactive") -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / LABELS_DIR).mkdir(parents=True, exist_ok=True)
        index = self.root / INDEX_FILE
        if index.exists():
            self._index: dict[str, Any] = json.loads(index.read_text())
        else:
            self._index = {"name": name, "description": "Images uploaded by MONAI Label clients and their labels",
                           "images_dir": IMAGES_DIR, "labels_dir": LABELS_DIR, "objects": {}}

    # --- reading ----------------------------------------------------------------------------------------

    def has_image(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._index["objects"]

    def image_file(self, image_id: str) -> StoredFile | None:
        with self._lock:
            obj = self._index["objects"].get(image_id)
            if obj is None:
                return None
            ext = obj["image"]["ext"]
        stem = _file_stem(image_id)
        return StoredFile(self.root / IMAGES_DIR / f"{stem}{ext}", f"{_UNSAFE.sub('_', image_id)[:64]}{ext}")

    def label_file(self, image_id: str, tag: str) -> StoredFile | None:
        with self._lock:
            obj = self._index["objects"].get(image_id)
            label = obj["labels"].get(tag) if obj else None
            if label is None:
                return None
            ext = label["ext"]
        return StoredFile(self.root / LABELS_DIR / tag / f"{_file_stem(image_id)}{ext}",
                          f"{_UNSAFE.sub('_', image_id)[:64]}{ext}")

    def json(self) -> dict[str, Any]:
        """The whole index, as MONAI Label's ``GET /datastore/?output=all``."""
        with self._lock:
            return json.loads(json.dumps(self._index))

    def status(self) -> dict[str, Any]:
        """Counts, as MONAI Label's ``GET /datastore/`` (and ``info.datastore``)."""
        with self._lock:
            objects = self._index["objects"].values()
            tags: dict[str, int] = {}
            for obj in objects:
                for tag in obj["labels"]:
                    tags[tag] = tags.get(tag, 0) + 1
            completed = sum(1 for obj in objects if DEFAULT_LABEL_TAG in obj["labels"])
            return {"total": len(self._index["objects"]), "completed": completed, "label_tags": tags,
                    "train": completed}

    def unlabeled(self) -> list[str]:
        """Image ids without a ``final`` label, oldest upload first."""
        with self._lock:
            items = [(obj["image"]["info"].get("ts", 0), image_id)
                     for image_id, obj in self._index["objects"].items() if DEFAULT_LABEL_TAG not in obj["labels"]]
        return [image_id for _, image_id in sorted(items)]

    # --- writing ----------------------------------------------------------------------------------------

    def add_image(self, image_id: str, data: bytes, ext: str, info: Mapping[str, Any]) -> str:
        """Store (or replace) the image ``image_id``; a replaced image loses its labels (they described
        other voxels)."""
        stem = _file_stem(check_id(image_id, "image"))
        with self._lock:
            old = self._index["objects"].get(image_id)
            self._write(self.root / IMAGES_DIR / f"{stem}{ext}", data)
            self._index["objects"][image_id] = {
                "image": {"ext": ext, "info": {**info, "ts": int(time.time()), "name": f"{stem}{ext}"}},
                "labels": {},
            }
            self._save_index()
            if old is not None:
                self._remove_files(image_id, old, keep_image_ext=ext)
        return image_id

    def save_label(self, image_id: str, data: bytes, ext: str, tag: str, info: Mapping[str, Any]) -> str:
        """Store the label of ``image_id`` under ``tag`` (replacing the previous one); its id is ``image_id``."""
        check_tag(tag)
        stem = _file_stem(image_id)
        with self._lock:
            obj = self._index["objects"].get(image_id)
            if obj is None:
                raise DatastoreError(f"image: no image {image_id[:80]!r} in the datastore")
            folder = self.root / LABELS_DIR / tag
            folder.mkdir(parents=True, exist_ok=True)
            self._write(folder / f"{stem}{ext}", data)
            old = obj["labels"].get(tag)
            obj["labels"][tag] = {"ext": ext, "info": {**info, "ts": int(time.time()), "name": f"{stem}{ext}"}}
            self._save_index()
            if old is not None and old["ext"] != ext:
                (folder / f"{stem}{old['ext']}").unlink(missing_ok=True)
        return image_id

    def _remove_files(self, image_id: str, obj: Mapping[str, Any], keep_image_ext: str) -> None:
        stem = _file_stem(image_id)
        if obj["image"]["ext"] != keep_image_ext:
            (self.root / IMAGES_DIR / f"{stem}{obj['image']['ext']}").unlink(missing_ok=True)
        for tag, label in obj["labels"].items():
            (self.root / LABELS_DIR / tag / f"{stem}{label['ext']}").unlink(missing_ok=True)

    def _save_index(self) -> None:
        self._write(self.root / INDEX_FILE, json.dumps(self._index, indent=1).encode())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
