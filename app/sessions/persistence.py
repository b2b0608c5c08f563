"""Durable session inputs on disk, and the replay that rebuilds a session from them after a restart.

The metadata store keeps a session's record and its append-only prompt history; what it cannot hold is
written here, under ``Settings.storage_dir``, before the request that brought it is acknowledged:

    {storage_dir}/{session_id}/volume.npy            the (D, H, W) array exactly as ``init_state`` received it
    {storage_dir}/{session_id}/volume.json           geometry, seed and model fingerprint (written last)
    {storage_dir}/{session_id}/masks/{sha256}.npy    every mask uploaded with PUT .../mask, bit-packed

Every file is written to a temporary name, flushed to disk (fsync) and renamed over its final name
(``os.replace``), so a crash leaves either the whole file or none. A session is rebuilt by
``replay_history``: ``init_state`` on the stored volume with the stored seed, then every acknowledged
prompt in order. The predictor is deterministic for a given model, seed and prompt sequence, so the
rebuilt logits, hidden states, undo stacks and versions equal the ones acknowledged before the crash.

    storage = SessionStorage(Path("/var/lib/segsvc"))
    storage.save_volume(sid, volume, VolumeMeta(spacing, origin, direction, seed=0, model="..."))
    stored = storage.load_volume(sid)
    state = predictor.init_state(stored.array, stored.meta.spacing, seed=stored.meta.seed,
                                 exclusive_objects=stored.meta.exclusive_objects)
    versions = replay_history(predictor, state, history, lambda sha: storage.load_mask(sid, sha, shape))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from app.models import regions
from app.sessions.store import PromptRecord

if TYPE_CHECKING:
    from app.models import Predictor, SessionState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # secrets.token_urlsafe; never a path
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VOLUME = "volume.npy"
_VOLUME_META = "volume.json"
_MASKS = "masks"
# Several replicas share one storage_dir: a folder without a record may be a creation in flight on another
# replica (the volume is written before the record), so only folders this old are swept as orphans.
ORPHAN_GRACE_S = 3600.0


def storable_session_id(session_id: str) -> bool:
    """Whether ``session_id`` may name a storage folder (never a path)."""
    return _SESSION_ID.match(session_id) is not None


class ReplayError(Exception):
    """A stored session cannot be rebuilt (missing or corrupt file, or the replay diverged from its history)."""


@dataclass(frozen=True)
class VolumeMeta:
    """What a stored volume needs besides its voxels to rebuild the session exactly.

    Attributes:
        spacing: (sz, sy, sx) in mm, as given to ``init_state``.
        origin: LPS (x, y, z) of voxel [0, 0, 0].
        direction: 9 direction cosines, row-major.
        seed: the session's seed (``init_state(seed=...)``); the replay uses this one, not today's setting.
        model: ``model_fingerprint`` of the predictor that served the session.
        exclusive_objects: ``init_state(exclusive_objects=...)`` of the session; files written before the
            setting existed hold no value and were served with independent objects (False).
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    seed: int
    model: str
    exclusive_objects: bool = True

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> VolumeMeta:
        d = json.loads(text)
        if d.get("format") != FORMAT_VERSION:
            raise ReplayError(f"volume: unknown storage format {d.get('format')!r}")
        return cls(spacing=tuple(float(v) for v in d["spacing"]),  # type: ignore[arg-type]
                   origin=tuple(float(v) for v in d["origin"]),  # type: ignore[arg-type]
                   direction=tuple(float(v) for v in d["direction"]), seed=int(d["seed"]), model=str(d["model"]),
                   exclusive_objects=bool(d.get("exclusive_objects", False)))


@dataclass(frozen=True)
class StoredVolume:
    array: np.ndarray  # (D, H, W), the dtype of the upload
    meta: VolumeMeta


@dataclass(frozen=True)
class Persistence:
    """What a ``SessionManager`` needs to make its sessions durable.

    Attributes:
        storage: where volumes and masks are written.
        model: ``model_fingerprint`` of the served predictor (stored with every volume, checked on restore).
        keep_on_shutdown: on a graceful shutdown keep the records and files of live sessions, so that the
            next process restores them; true when the store outlives the process (Redis).
    """

    storage: SessionStorage
    model: str
    keep_on_shutdown: bool = False


class SessionStorage:
    """One directory per session under ``root`` (blocking file I/O: call from a worker thread)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def session_dir(self, session_id: str) -> Path:
        if not _SESSION_ID.match(session_id):
            raise ValueError(f"session_id: not a storable session id: {session_id!r}")
        return self.root / session_id

    def has_volume(self, session_id: str) -> bool:
        """True when the session's volume was completely written (its metadata file is written last)."""
        return (self.session_dir(session_id) / _VOLUME_META).is_file()

    def session_ids(self, *, older_than_s: float | None = None) -> list[str]:
        """Every session directory present (complete or not); only those unmodified for ``older_than_s``
        seconds when given."""
        now = time.time()
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _SESSION_ID.match(p.name)
                      and (older_than_s is None or now - p.stat().st_mtime > older_than_s))

    def save_volume(self, session_id: str, volume: np.ndarray, meta: VolumeMeta, *, exclusive: bool = False
                    ) -> None:
        """Write the session's volume; ``exclusive``: raise ``FileExistsError`` if its folder exists."""
        d = self.session_dir(session_id)
        d.mkdir(parents=True, exist_ok=not exclusive)
        _atomic_write(d / _VOLUME, lambda f: np.save(f, np.ascontiguousarray(volume), allow_pickle=False))
        _atomic_write(d / _VOLUME_META, lambda f: f.write(meta.to_json().encode("utf-8")))
        _fsync_dir(d)
        _fsync_dir(self.root)

    def load_volume(self, session_id: str) -> StoredVolume:
        d = self.session_dir(session_id)
        try:
            meta = VolumeMeta.from_json((d / _VOLUME_META).read_text(encoding="utf-8"))
            array = np.load(d / _VOLUME, allow_pickle=False)
        except (OSError, ValueError, KeyError) as e:
            raise ReplayError(f"volume: cannot read the stored volume ({_describe(e)})") from e
        if array.ndim != 3:
            raise ReplayError(f"volume: stored array has shape {list(array.shape)}, expected (D, H, W)")
        return StoredVolume(array, meta)

    def save_mask(self, session_id: str, mask: np.ndarray) -> str:
        """Store a 0/1 (D, H, W) mask under its sha256 (of its uint8 bytes, as the history records it);
        return the digest. Idempotent."""
        m = np.ascontiguousarray(mask).astype(np.uint8, copy=False)
        digest = hashlib.sha256(m.tobytes()).hexdigest()
        d = self.session_dir(session_id) / _MASKS
        path = d / f"{digest}.npy"
        if not path.is_file():
            d.mkdir(parents=True, exist_ok=True)
            packed = np.packbits(m.ravel() != 0)
            _atomic_write(path, lambda f: np.save(f, packed, allow_pickle=False))
            _fsync_dir(d)
        return digest

    def load_mask(self, session_id: str, digest: str, shape: tuple[int, int, int]) -> np.ndarray:
        """The (D, H, W) uint8 mask stored under ``digest``; its content is checked against the digest."""
        if not _SHA256.match(digest):
            raise ReplayError(f"mask: not a sha256 digest: {digest!r}")
        path = self.session_dir(session_id) / _MASKS / f"{digest}.npy"
        try:
            packed = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ReplayError(f"mask: cannot read stored mask {digest[:12]} ({_describe(e)})") from e
        n = int(np.prod(shape))
        if packed.dtype != np.uint8 or packed.size != (n + 7) // 8:
            raise ReplayError(f"mask: stored mask {digest[:12]} does not fit the volume {list(shape)}")
        mask = np.unpackbits(packed, count=n).reshape(shape)
        if hashlib.sha256(mask.tobytes()).hexdigest() != digest:
            raise ReplayError(f"mask: stored mask {digest[:12]} is corrupt (sha256 differs)")
        return mask

    def delete(self, session_id: str) -> None:
        """Remove everything stored for the session (no error when nothing is there)."""
        shutil.rmtree(self.session_dir(session_id), ignore_errors=True)


def model_fingerprint(predictor: Predictor) -> str:
    """sha256 of what decides a replay's result: config name, run-time settings and every weight's bytes.

    A session is only rebuilt by a predictor with the same fingerprint (other weights would give other masks).
    """
    import torch

    h = hashlib.sha256()
    h.update(predictor.config_name.encode())
    h.update(repr(predictor.config).encode())
    for part in (predictor.backbone, predictor.corrector):
        if part is None:
            continue
        for name, tensor in part.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def replay_history(
    predictor: Predictor,
    state: SessionState,
    history: Sequence[PromptRecord],
    load_mask: Callable[[str], np.ndarray],
) -> dict[int, int]:
    """Apply acknowledged prompts, oldest first, to a fresh ``state``; return the live objects' versions.

    ``load_mask(sha256)`` returns the mask a ``mask`` prompt recorded. Every prompt must land on the version
    its record holds; the first that does not (or that fails) raises ``ReplayError`` naming it.
    """
    for index, prompt in enumerate(history):
        where = f"history[{index}] ({prompt.op} on object {prompt.object_id})"
        try:
            version = _apply(predictor, state, prompt, load_mask)
        except ReplayError as e:
            raise ReplayError(f"{where}: {e}") from e
        except (ValueError, KeyError, TypeError) as e:
            raise ReplayError(f"{where}: the predictor refused it: {e}") from e
        if version != prompt.version:
            raise ReplayError(f"{where}: replay reached version {version}, the history says {prompt.version}")
    return {oid: obj.version for oid, obj in state.objects.items()}


def _apply(predictor: Predictor, state: SessionState, prompt: PromptRecord,
           load_mask: Callable[[str], np.ndarray]) -> int:
    oid, args = prompt.object_id, prompt.args
    match prompt.op:
        case "box":
            return predictor.add_box(state, oid, args["box"]).version
        case "text":
            return predictor.add_text(state, oid, args["text"], args["box"], args["points"] or None,
                                      args["labels"] or None).version
        case "clicks":
            changes = predictor.add_clicks(state, oid, args["points"], args["labels"], mode=args["mode"],
                                           refine=False)
            if changes[-1].version < prompt.version:  # a "both" click refined at once (before deferred refinement)
                changes.append(predictor.refine(state, oid))
            return changes[-1].version
        case "refine":  # the deferred decoder step of "both" clicks (app.sessions.refinement)
            return predictor.refine(state, oid).version
        case "region":  # a scribble or a lasso (app.models.regions), recorded as runs of flat indices
            region = regions.from_runs(args["runs"])
            return predictor.add_region(state, oid, region, args["label"], mode=args["mode"])[-1].version
        case "mask":
            return predictor.set_mask(state, oid, load_mask(args["sha256"])).version
        case "undo":
            return predictor.undo(state, oid).version
        case "reset":
            return predictor.reset(state, oid).version
        case "remove":
            return predictor.remove_object(state, oid).version
    raise ReplayError(f"unknown op {prompt.op!r}")


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync it, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    """Make the renames inside ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _describe(e: Exception) -> str:
    """An error without file paths (restore reasons reach clients)."""
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return f"{type(e).__name__}: {e}"
