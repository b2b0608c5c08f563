"""Stateless MONAI Label calls on top of stateful sessions: one session per image, one object per label.

MONAI Label clients (OHIF's MONAI Label panel, 3D Slicer's MONAILabel module) are stateless: every
``POST /infer/{model}`` names the image and sends *all* clicks placed so far for a label. The bridge keeps
a small map ``image key -> (our Session, label -> Track)`` so that each call only does what is new:

* **image key**: ``datastore:<image id>`` (an image uploaded to the datastore, as Slicer does, read from its
  file), ``dicomweb:<SeriesInstanceUID>`` (the id OHIF sends; the series is read from the DICOMweb
  server once) or ``upload:<session id>`` (an image uploaded with ``PUT /session/``, as Slicer does).
* **Track**: the object id of the label in that session and the foreground/background click lists of the
  last call, in the order the client sent them.
* **incremental**: when the new lists *extend* the previous ones (the old lists are prefixes of the new),
  only the added clicks are applied, as one refinement round in ``REFINE_MODE`` ("gru": the corrector's
  sparse step on the object's state); no new click = nothing runs, the current mask is returned.
* **replay**: when they do not (a click was removed or moved, a new foreground click lies outside the
  object's box, or the label was switched back and forth), the object is removed and rebuilt from all the
  clicks in one round in ``INITIAL_MODE`` (the decoder reads every click), exactly as for a label's first
  call. Replaying keeps the answer a function of the click lists the client shows.
* **box from clicks**: these viewers send no box, and a model trained with a box on every sample (the
  shipped ``compact``) answers clicks alone with nothing. A label's first round (and a replay) therefore
  starts with a box prompt: the foreground clicks' bounding box widened by ``CLICK_BOX_MARGIN_MM`` on every
  side (at least ``CLICK_BOX_MIN_VOXELS``), clipped to the image, then the clicks. A later foreground click
  outside that box replays the label with the widened box.

Coordinates: both clients send voxel indices (i, j, k) of the image as loaded (Slicer: RAS -> IJK of the
volume node, rounded; OHIF: ``worldToIndex`` of the cornerstone volume, rounded). i runs along columns (x),
j along rows (y), k along slices (z), so (i, j, k) is our (z, y, x) = (k, j, i). The slice order is the one
GDCM sorting gives (``app.io.volumes``), which is also the order both viewers sort a series in.

Sessions made here are ordinary sessions of the manager (same capacity, expiry and locks); their token is
never handed out. When the manager is full, the least recently used bridge session that is not busy is
closed to make room (once); a DICOMweb image whose session expired is simply loaded again on its next call.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import CapacityExceeded, InvalidInput, ServiceError, SessionNotFound
from app.io.volumes import LoadedVolume, VolumeMeta
from app.sessions.manager import SessionManager
from app.sessions.session import Geometry, Session

INITIAL_MODE = "decoder"
"""Mode of a label's first round (and of a replay): the decoder reads all clicks at once."""
REFINE_MODE = "gru"
"""Mode of an incremental round: the corrector's sparse step with only the new clicks."""
CLICK_BOX_MARGIN_MM = 10.0
"""Half-width added around the foreground clicks to make a label's box (a lesion-sized neighbourhood)."""
CLICK_BOX_MIN_VOXELS = 2
MAX_LABEL_CHARS = 64
UNNAMED_TRACK_PREFIX = "unnamed@"
"""Track key prefix of deepgrow calls without a label, then the first foreground click's (z, y, x)."""
MAX_CLICKS = 64  # per list, as the v1 clicks route allows per request

Point = tuple[int, int, int]
Action = Literal["created", "incremental", "replayed", "unchanged", "cleared"]
ImageLoader = Callable[[str], Awaitable[LoadedVolume]]


@dataclass(frozen=True)
class StoredImages:
    """The datastore as the bridge sees it: whether it holds an image id, and how to read that image."""

    has: Callable[[str], bool]
    load: ImageLoader


@dataclass(frozen=True)
class ClickRequest:
    """The clicks of one label in one call, in (z, y, x)."""

    label: str
    foreground: tuple[Point, ...]
    background: tuple[Point, ...]
    named: bool = True  # False: a deepgrow call without "label" (OHIF's), see MonaiLabelBridge._unnamed


@dataclass
class Track:
    """What the bridge remembers of one label of one image."""

    object_id: int
    foreground: tuple[Point, ...] = ()
    background: tuple[Point, ...] = ()
    box: tuple[int, int, int, int, int, int] | None = None  # inclusive (z0, y0, x0, z1, y1, x1)


@dataclass
class ImageEntry:
    """One image the bridge serves: its session and its labels' tracks."""

    key: str
    name: str
    session: Session
    meta: VolumeMeta
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tracks: dict[str, Track] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    source_file: Path | None = None  # the uploaded file (PUT /session/), served by GET /session/{id}?image=true
    expiry_s: float | None = None  # PUT /session/?expiry=: idle seconds before the bridge ends it

    def expired(self, now: float) -> bool:
        return self.expiry_s is not None and now - self.last_used > self.expiry_s

    def next_object_id(self) -> int:
        return max((t.object_id for t in self.tracks.values()), default=0) + 1


@dataclass(frozen=True)
class TrackResult:
    label: str
    object_id: int
    version: int
    action: Action
    new_clicks: int


@dataclass(frozen=True)
class InferResult:
    """A label map (value = label value) in (D, H, W), with what the MONAI Label reply needs."""

    labelmap: np.ndarray
    label_names: dict[str, int]
    centroids: dict[str, list[int]]
    meta: VolumeMeta
    session_id: str
    tracks: list[TrackResult]


def label_value(label: str, labels: Sequence[str]) -> int:
    """The voxel value of ``label`` in a result: 1 + its index in the configured labels (1 if not listed)."""
    return labels.index(label) + 1 if label in labels else 1


def parse_click_params(params: Mapping[str, Any], labels: Sequence[str], shape: tuple[int, int, int]
                       ) -> tuple[list[ClickRequest], Literal["deepgrow", "deepedit"]]:
    """The click requests of a MONAI Label ``params`` object, validated against a (D, H, W) image.

    deepgrow style: ``{"foreground": [[i, j, k], ...], "background": [...], "label": name?}`` (Slicer, OHIF
    deepgrow): one request for ``label`` (default: the first configured label).
    deepedit style: ``{"<label>": [[i, j, k], ...], ..., "background": [...], "label": name?}`` (OHIF and
    Slicer deepedit): one request per configured label the params name (an empty list too: the viewer shows
    no click of that label any more); background clicks are negative for each.
    Either style may carry no click at all, or background clicks only (upstream runs both).
    ``label`` must name a configured label; coordinates must be whole voxel indices (never rounded here: a
    fractional index means the client mixed up world and voxel coordinates). Raises ``InvalidInput`` naming
    ``params.<key>``.
    """
    label = params.get("label")
    if label is not None and (not isinstance(label, str) or label not in labels or label == "background"):
        shown = str(label)[:MAX_LABEL_CHARS]
        raise InvalidInput(f"params.label: unknown label {shown!r}; labels: {list(labels)}", field="params.label")
    if "foreground" in params:
        fg = _points(params, "foreground", shape)
        bg = _points(params, "background", shape)
        return [ClickRequest(label or labels[0], fg, bg, named=label is not None)], "deepgrow"
    bg = _points(params, "background", shape)
    requests = [ClickRequest(name, _points(params, name, shape), bg) for name in labels
                if name != "background" and name in params]
    return requests, "deepedit"


def _points(params: Mapping[str, Any], key: str, shape: tuple[int, int, int]) -> tuple[Point, ...]:
    raw = params.get(key, [])
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_CLICKS:
        raise InvalidInput(f"params.{key}: expected a list of at most {MAX_CLICKS} [i, j, k] voxel indices",
                           field=f"params.{key}")
    d, h, w = shape
    out = []
    for n, p in enumerate(raw):
        if (not isinstance(p, list) or len(p) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in p)):
            raise InvalidInput(f"params.{key}[{n}]: expected [i, j, k] voxel indices, got {str(p)[:60]}",
                               field=f"params.{key}")
        if any(v != int(v) for v in p):
            raise InvalidInput(f"params.{key}[{n}]: expected whole voxel indices [i, j, k], got {str(p)[:60]} "
                               "(not rounded: send the voxel's index, not a world or sub-voxel position)",
                               field=f"params.{key}")
        i, j, k = (int(v) for v in p)
        if not (0 <= i < w and 0 <= j < h and 0 <= k < d):
            raise InvalidInput(f"params.{key}[{n}]: voxel (i, j, k) = ({i}, {j}, {k}) is outside the image of "
                               f"size (i, j, k) = ({w}, {h}, {d})", field=f"params.{key}")
        out.append((k, j, i))
    return tuple(out)


def _extends(old: tuple[Point, ...], new: tuple[Point, ...]) -> bool:
    return len(new) >= len(old) and new[: len(old)] == old


class MonaiLabelBridge:
    """The image map behind the MONAI Label routes (event loop thread only)."""

    def __init__(self, manager: SessionManager, labels: Sequence[str], load_image: ImageLoader | None,
                 stored: StoredImages | None = None) -> None:
        self.manager = manager
        self.labels = list(labels)
        self._load_image = load_image
        self._stored = stored
        self._entries: dict[str, ImageEntry] = {}
        self._closing: set[asyncio.Task[None]] = set()  # sessions ended for their expiry, being closed
        self._files: tempfile.TemporaryDirectory[str] | None = None  # uploads kept for ?image=true; removed at exit
        self._opening: dict[str, asyncio.Lock] = {}

    # --- images ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    async def image(self, image_id: str) -> ImageEntry:
        """The entry of an image id, loading it on first use or after expiry: an image of the datastore
        (``PUT /datastore/``, as Slicer uploads) if it holds that id, else a DICOMweb SeriesInstanceUID."""
        if self._stored is not None and self._stored.has(image_id):
            key, load = f"datastore:{image_id}", self._stored.load
        elif self._load_image is not None:
            key, load = f"dicomweb:{image_id}", self._load_image
        else:
            raise InvalidInput(f"image: {image_id[:80]!r} is not in the datastore and no DICOMweb server is "
                               "configured (dicomweb_url); upload the image (PUT /datastore/ or PUT /session/)",
                               field="image")
        entry = self._live(key)
        if entry is not None:
            return entry
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:  # two first calls for one image open one session
            entry = self._live(key)
            if entry is None:
                await self.ensure_room()  # before the image is transferred or read
                loaded = await load(image_id)
                entry = await self._open(key, image_id, loaded)
        self._opening.pop(key, None)
        return entry

    async def forget_stored(self, image_id: str) -> None:
        """End the session of a datastore image (its file was replaced: the next call loads the new one)."""
        entry = self._entries.get(f"datastore:{image_id}")
        if entry is not None:
            await self.remove(entry)

    async def upload(self, loaded: LoadedVolume, name: str, *, key: str | None = None) -> ImageEntry:
        """A new entry for an uploaded image: ``PUT /session/`` (key ``upload:<new id>``) or an image sent
        with ``/infer`` (``key``: its content digest, so that a repeated file finds its entry)."""
        return await self._open(key or f"upload:{uuid.uuid4()}", name, loaded)

    def file_for(self, name: str) -> Path:
        """A fresh path for keeping an uploaded file (the caller writes it and sets ``entry.source_file``);
        the file goes with its entry, the folder with the process."""
        if self._files is None:
            self._files = tempfile.TemporaryDirectory(prefix="segsvc-monailabel-")
        return Path(self._files.name) / f"{uuid.uuid4().hex}-{Path(name).name or 'image'}"

    def keyed(self, key: str) -> ImageEntry | None:
        """The live entry of ``key``, if any."""
        return self._live(key)

    def uploaded(self, upload_id: str) -> ImageEntry:
        """The live entry of an uploaded image; ``SessionNotFound`` naming ``session_id`` when gone."""
        entry = self._live(f"upload:{upload_id}")
        if entry is None:
            raise SessionNotFound(f"session_id: no session {upload_id[:80]!r} (unknown or expired: upload the "
                                  "image again)", field="session_id")
        return entry

    async def remove(self, entry: ImageEntry) -> None:
        self._forget(entry)
        try:
            await self.manager.close(entry.session)
        except ServiceError:
            pass  # already ended

    def _forget(self, entry: ImageEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if entry.source_file is not None:
            entry.source_file.unlink(missing_ok=True)

    def _prune(self) -> None:
        """Forget the entries whose sessions ended unseen (the reaper's idle expiry), with their kept files."""
        for entry in list(self._entries.values()):
            try:
                self.manager.get(entry.session.session_id)
            except ServiceError:
                self._forget(entry)

    def _live(self, key: str) -> ImageEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            self.manager.get(entry.session.session_id)
        except ServiceError:  # expired or closed: forget it
            self._forget(entry)
            return None
        now = time.monotonic()
        if entry.expired(now):  # the client's own expiry (PUT /session/?expiry=): end it now
            task = asyncio.get_running_loop().create_task(self.remove(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return None
        entry.last_used = now
        return entry

    async def ensure_room(self) -> None:
        """Make room for one more session (closing the least recently used idle bridge session if the
        manager is full); ``CapacityExceeded`` when none can go. Cheap: call it before reading an upload."""
        try:
            self.manager.check_room_for_session()
        except CapacityExceeded:
            if not await self._evict_one():
                raise

    async def _open(self, key: str, name: str, loaded: LoadedVolume) -> ImageEntry:
        self._prune()
        geometry = Geometry(spacing=loaded.spacing, origin=loaded.origin, direction=loaded.direction)
        await self.ensure_room()
        try:
            session, _token = await self._create(loaded, geometry)
        except CapacityExceeded:  # the device-byte limit, known only once the volume is encoded
            if not await self._evict_one():
                raise
            session, _token = await self._create(loaded, geometry)
        session.dicom_headers = loaded.dicom_headers  # DICOM SEG export and STOW need them
        entry = ImageEntry(key=key, name=name, session=session, meta=loaded.meta)
        self._entries[key] = entry
        return entry

    async def _create(self, loaded: LoadedVolume, geometry: Geometry) -> tuple[Session, str]:
        return await self.manager.create(loaded.array, geometry, modality=loaded.modality,
                                         source_format=loaded.source_format)

    async def _evict_one(self) -> bool:
        idle = [e for e in self._entries.values() if not e.lock.locked()]
        if not idle:
            return False
        await self.remove(min(idle, key=lambda e: e.last_used))
        return True

    # --- inference ------------------------------------------------------------------------------------------

    async def infer(self, entry: ImageEntry, params: Mapping[str, Any]) -> InferResult:
        """Apply the clicks of ``params`` to ``entry``'s objects (incrementally when possible).

        Values in the reply: deepgrow style answers its one label as 1 (what deepgrow-type clients expect,
        whatever the label's index); deepedit style answers every configured label with ``label_value``.
        ``label_names`` always maps every label of the request (deepgrow) or of the model (deepedit), so a
        client never has to guess which segment a value belongs to.
        """
        requests, style = parse_click_params(params, self.labels, entry.meta.shape)
        async with entry.lock:
            self.manager.mark_used(entry.session)
            if style == "deepgrow" and not requests[0].named:
                requests = self._unnamed(requests[0])
            results = [r for req in requests if (r := await self._apply(entry, req)) is not None]
            if style == "deepgrow":
                track = requests[0].label if requests else None
                values = {track: 1} if track is not None else {}
                labelmap, centroids = await self._paint(entry, values)
                # An unnamed call's result is named after the first label (the viewer files it itself).
                shown = requests[0].label if requests and requests[0].named else self.labels[0]
                names = {"background": 0, shown: 1}
                centroids = {shown: centroids[track]} if track in centroids else {}
            else:
                values = {name: label_value(name, self.labels) for name in self.labels if name != "background"}
                labelmap, centroids = await self._paint(entry, values)
                names = {"background": 0, **values}
        return InferResult(labelmap, names, centroids, entry.meta, entry.session.session_id, results)

    @staticmethod
    def _unnamed(req: ClickRequest) -> list[ClickRequest]:
        """The track of a deepgrow call that names no label (OHIF's deepgrow sends none, whichever of its
        labels is selected). Filing every such call under the first label made each label switch in the
        viewer replay that one object with the other label's clicks, losing the first label's work. Each
        label of the viewer starts with a foreground click of its own and keeps it first, so the first
        foreground click identifies the label: the same first click continues its object (incrementally, or
        replayed when a later click changed), another first click starts another object. Without a
        foreground click nothing is segmented, and no object is touched."""
        if not req.foreground:
            return []
        z, y, x = req.foreground[0]
        return [ClickRequest(f"{UNNAMED_TRACK_PREFIX}{z},{y},{x}", req.foreground, req.background, named=False)]

    async def _clicks_absent(self, entry: ImageEntry, req: ClickRequest) -> TrackResult | None:
        """A label with no foreground click. Background clicks alone outline nothing, so the label is empty:
        its object, if any, is removed ("cleared"; the viewer no longer shows a click of it).

        Upstream deepedit segments a label without clicks automatically; this model needs a prompt. The seam
        for that is here: a label's name can become a SegVol text prompt for the label's object, once the
        model takes text; until then a label without foreground clicks has no object.
        """
        track = entry.tracks.pop(req.label, None)
        if track is None:
            return None
        session = entry.session
        if session.has_object(track.object_id):
            await self.manager.remove_object(session, track.object_id)
        return TrackResult(req.label, track.object_id, session.versions.get(track.object_id, 0), "cleared", 0)

    async def _apply(self, entry: ImageEntry, req: ClickRequest) -> TrackResult | None:
        if not req.foreground:
            return await self._clicks_absent(entry, req)
        session = entry.session
        track = entry.tracks.get(req.label)
        alive = track is not None and session.has_object(track.object_id)
        if track is not None and alive and _extends(track.foreground, req.foreground) \
                and _extends(track.background, req.background) \
                and _inside(req.foreground[len(track.foreground):], track.box):
            new_fg = req.foreground[len(track.foreground):]
            new_bg = req.background[len(track.background):]
            if not new_fg and not new_bg:
                return TrackResult(req.label, track.object_id, session.versions.get(track.object_id, 0),
                                   "unchanged", 0)
            outcome = await self.manager.add_clicks(session, track.object_id, [*new_fg, *new_bg],
                                                    [1] * len(new_fg) + [0] * len(new_bg), mode=REFINE_MODE)
            track.foreground, track.background = req.foreground, req.background
            return TrackResult(req.label, track.object_id, outcome.version, "incremental",
                               len(new_fg) + len(new_bg))
        action: Action = "created" if track is None else "replayed"
        if track is None:
            track = entry.tracks[req.label] = Track(entry.next_object_id())
        elif alive:
            await self.manager.remove_object(session, track.object_id)
        track.foreground, track.background, track.box = (), (), None  # until the rebuild is acknowledged
        box = click_box(req.foreground, entry.meta.spacing, entry.meta.shape)
        if self.manager.predictor.supports_text:  # SegVol's text branch: the label's name is the text prompt
            await self.manager.add_text(session, track.object_id, req.label, box)
        elif box is not None:
            await self.manager.add_box(session, track.object_id, box)
        outcome = await self.manager.add_clicks(session, track.object_id, [*req.foreground, *req.background],
                                                [1] * len(req.foreground) + [0] * len(req.background),
                                                mode=INITIAL_MODE)
        track.foreground, track.background, track.box = req.foreground, req.background, box
        return TrackResult(req.label, track.object_id, outcome.version, action,
                           len(req.foreground) + len(req.background))

    async def _paint(self, entry: ImageEntry, values: Mapping[str, int]
                     ) -> tuple[np.ndarray, dict[str, list[int]]]:
        """The label map of the labels in ``values`` that have an object (value per label), and the
        centroid of each label that has voxels."""
        shown = [name for name in values if name in entry.tracks]
        dtype = np.uint8 if max(values.values(), default=0) <= 255 else np.uint16
        name_of = {entry.tracks[name].object_id: name for name in shown}
        if not name_of:
            return np.zeros(entry.meta.shape, dtype=dtype), {}
        # Overlaps: the service's rule (the most confident object wins), then object ids -> label values.
        object_labels, _versions = await self.manager.segmentation(entry.session, object_ids=list(name_of))
        lut = np.zeros(max(name_of) + 1, dtype=dtype)
        for oid, name in name_of.items():
            lut[oid] = values[name]
        labelmap = lut[object_labels]
        centroids: dict[str, list[int]] = {}
        for name in shown:
            where = np.nonzero(object_labels == entry.tracks[name].object_id)
            if not where[0].size:
                continue
            z, y, x = (int(round(float(np.mean(a)))) for a in where)
            centroids[name] = [values[name], x, y, z]  # [value, i, j, k], as MONAI Label reports them
        return labelmap, centroids

    def labelmap_names(self, values: Sequence[int]) -> dict[int, str]:
        """Segment names of label map values (configured labels by value; others "label <v>")."""
        return {v: (self.labels[v - 1] if 1 <= v <= len(self.labels) else f"label {v}") for v in values}


def click_box(foreground: Sequence[Point], spacing: Sequence[float], shape: Sequence[int]
              ) -> tuple[int, int, int, int, int, int] | None:
    """The box a label starts from: the foreground clicks' bounding box widened by ``CLICK_BOX_MARGIN_MM``
    per side (in voxels of each axis' spacing, at least ``CLICK_BOX_MIN_VOXELS``), clipped to ``shape``;
    None without a foreground click."""
    if not foreground:
        return None
    pts = np.asarray(foreground, dtype=np.int64)
    margin = [max(CLICK_BOX_MIN_VOXELS, int(round(CLICK_BOX_MARGIN_MM / max(float(sp), 1e-6)))) for sp in spacing]
    lo = [max(0, int(pts[:, a].min()) - margin[a]) for a in range(3)]
    hi = [min(int(shape[a]) - 1, int(pts[:, a].max()) + margin[a]) for a in range(3)]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def _inside(points: Sequence[Point], box: tuple[int, int, int, int, int, int] | None) -> bool:
    """Every point inside the inclusive ``box``; a first foreground click of a label without one is not."""
    if not points:
        return True
    if box is None:
        return False
    return all(box[a] <= p[a] <= box[a + 3] for p in points for a in range(3))
