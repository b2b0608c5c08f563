"""nnInteractive's leases on top of our sessions: one lease = one client = (once it sent an image) one session.

nnInteractive's remote protocol (``app.schemas.nninteractive``) is stateful per client but has no session id:
``/claim`` hands out a lease token that every later request carries. This module keeps ``token -> Lease`` and
maps each call onto our manager:

* ``set_image`` creates the lease's session (a second image replaces it); the image's axes 1..3 are taken as
  our (D, H, W) as they are, so the client's coordinates index its own array and no axis is ever swapped
  (send (z, y, x) arrays, as SimpleITK gives them, for the model to see slices as it was trained).
* the **target buffer** is the lease's one object (``OBJECT_ID``): its mask, at the declared shape and dtype;
  every prediction reply carries the mask's new values inside the bbox of the voxels that changed.
* interactions become our prompts: a positive box = a box prompt (a 2D box is first grown across slices by
  half its in-plane size, ``box_across_slices``); a negative box = a background region; a point = a click
  ("both" mode), and a positive point on an empty object starts it from the box MONAI Label's clicks get
  (``click_box``) first; a scribble or lasso = a region prompt; an initial segmentation = the object's mask.
* ``run_prediction=False`` queues an interaction; the next call that predicts (or ``/predict``) runs the queue
  in order. ``undo`` reverts the last interaction that ran (however many of our prompts it took).
* clocks: the **liveness** clock is reset by every request of the lease (heartbeats included), the **idle**
  clock by real actions only; ``sweep`` (every ``SWEEP_INTERVAL_S``) releases leases past either, and our
  session's own expiry ends its lease too. Gone leases answer ``LeaseGone`` (410).
* capacity: leases without a session yet count against ``max_sessions`` with the sessions (503 +
  Retry-After when full).

Calls of one lease run one at a time (``Lease.lock``), as the client makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.errors import CapacityExceeded, InvalidInput, LeaseGone, NothingToUndo, ObjectNotFound, ServiceError
from app.models import regions
from app.schemas.nninteractive import TARGET_DTYPES
from app.sessions.manager import SessionManager
from app.sessions.monailabel_bridge import click_box
from app.sessions.outcomes import PromptOutcome
from app.sessions.session import Geometry, Session

log = logging.getLogger(__name__)

OBJECT_ID = 1
"""The one object of a lease's session: nnInteractive segments one target at a time."""
SWEEP_INTERVAL_S = 15.0
POINT_MODE = "both"
REGION_MODE = "both"

Kind = Literal["bbox", "point", "scribble", "lasso", "initial_seg"]
Box3 = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""Half-open [lo, hi) per axis, as the protocol sends boxes and bboxes."""


@dataclass(frozen=True)
class Interaction:
    """One interaction as received, already checked against the image (``kind`` says which field is set)."""

    kind: Kind
    include: bool
    box: Box3 | None = None
    point: tuple[int, int, int] | None = None
    region: np.ndarray | None = None  # flat voxel indices (scribble, lasso)
    mask: np.ndarray | None = None  # (D, H, W) uint8 0/1 (initial segmentation)


@dataclass(frozen=True)
class Prediction:
    """What a prediction reply carries: whether anything ran, the changed region and its new values."""

    ran: bool
    bbox: Box3 | None = None
    block: np.ndarray | None = None


@dataclass
class Lease:
    token: str
    last_seen: float
    last_action: float
    session: Session | None = None
    target_shape: tuple[int, ...] | None = None
    target_dtype: str | None = None
    do_autozoom: bool = True
    queued: list[Interaction] = field(default_factory=list)
    undo_counts: list[int] = field(default_factory=list)  # our prompts per interaction that ran
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LeaseRegistry:
    """The leases of this process (see the module docstring)."""

    def __init__(self, manager: SessionManager, *, liveness_timeout_s: float, idle_timeout_s: float,
                 max_voxels: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.liveness_timeout_s = liveness_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_voxels = max_voxels
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._leases)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for lease in list(self._leases.values()):
            await self._drop(lease)

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_INTERVAL_S, self.liveness_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:  # the sweeper must outlive one bad lease
                log.exception("nninteractive: lease sweep failed")

    async def sweep(self) -> list[str]:
        """Release the leases past their liveness or idle clock, or whose session ended; return their tokens."""
        gone = [lease for lease in self._leases.values() if self._overdue(lease)]
        for lease in gone:
            await self._drop(lease)
        return [lease.token[:8] for lease in gone]

    def claim(self) -> Lease:
        """A new lease; ``CapacityExceeded`` when leases and sessions together fill ``max_sessions``."""
        waiting = sum(1 for lease in self._leases.values() if lease.session is None)
        if len(self.manager) + waiting >= self.manager.limits.max_sessions:
            raise CapacityExceeded(f"capacity: this server holds {self.manager.limits.max_sessions} sessions "
                                   "and leases at most; retry later", retry_after_s=self.manager.limits.retry_after_s)
        now = self._clock()
        lease = Lease(token=secrets.token_urlsafe(32), last_seen=now, last_action=now)
        self._leases[lease.token] = lease
        return lease

    async def get(self, token: str | None) -> Lease:
        """The live lease of ``token`` (its liveness clock reset); ``LeaseGone`` otherwise (an overdue lease the
        sweep has not reached yet is released here)."""
        lease = self._leases.get(token or "")
        if lease is None:
            raise LeaseGone("lease: unknown, released or expired lease token; claim a new one", field="lease")
        if self._overdue(lease):
            await self._drop(lease)
            raise LeaseGone("lease: the lease expired; claim a new one", field="lease")
        lease.last_seen = self._clock()
        return lease

    def peek(self, token: str | None) -> Lease:
        """Like ``get`` without resetting any clock (``/lease_status``)."""
        lease = self._leases.get(token or "")
        if lease is None or self._overdue(lease):
            raise LeaseGone("lease: unknown, released or expired lease token; claim a new one", field="lease")
        return lease

    async def release(self, token: str | None) -> None:
        """End the lease and its session; an unknown token is fine (release is idempotent)."""
        lease = self._leases.get(token or "")
        if lease is not None:
            await self._drop(lease)

    def remaining_s(self, lease: Lease) -> float:
        now = self._clock()
        return max(0.0, min(lease.last_seen + self.liveness_timeout_s, lease.last_action + self.idle_timeout_s) - now)

    def acted(self, lease: Lease) -> None:
        lease.last_action = self._clock()

    # --- image and target -----------------------------------------------------------------------------------

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Before the image is decoded: 4D with one channel, no empty axis, within ``max_voxels``."""
        if len(shape) != 4:
            raise InvalidInput(f"image: expected a 4D [C, X, Y, Z] array, got shape {list(shape)}", field="image")
        if shape[0] != 1:
            raise InvalidInput(f"image: this model reads one channel, got {shape[0]}", field="image")
        if min(shape[1:]) < 1:
            raise InvalidInput(f"image: empty spatial axis in shape {list(shape)}", field="image")
        voxels = math.prod(int(s) for s in shape[1:])
        if voxels > self.max_voxels:
            raise InvalidInput(f"image: {voxels} voxels, this server accepts at most {self.max_voxels}",
                               field="image")

    async def set_image(self, lease: Lease, image: np.ndarray, spacing: Sequence[float] | None) -> tuple[int, ...]:
        """Create the lease's session from a [1, D, H, W] image (replacing an earlier image's session)."""
        self.check_image_shape(image.shape)
        volume = np.asarray(image[0], dtype=np.float32)
        if not np.isfinite(volume).all():
            raise InvalidInput("image: has non-finite values (NaN or inf)", field="image")
        geometry = Geometry(spacing=_spacing(spacing))
        old = lease.session
        lease.session, lease.queued, lease.undo_counts = None, [], []
        if old is not None:
            await self._close_session(old)
        self.manager.check_room_for_session()  # count, bytes and load (an image is the protocol's new session)
        session, _token = await self.manager.create(volume, geometry, source_format="nninteractive")
        lease.session = session
        self.acted(lease)
        return tuple(int(s) for s in image.shape)

    def set_target_buffer(self, lease: Lease, shape: Sequence[int], dtype: str) -> None:
        """Declare the buffer (before or after the image: its shape is checked against the image's spatial
        shape here when there is one, else at the first interaction)."""
        target = tuple(int(s) for s in shape)
        if len(target) != 3 or min(target) < 1:
            raise InvalidInput(f"shape: expected the image's 3 spatial sizes, got {list(shape)}", field="shape")
        if lease.session is not None and target != lease.session.shape:
            raise InvalidInput(f"shape: the target buffer must have the image's spatial shape "
                               f"{list(lease.session.shape)}, got {list(shape)}", field="shape")
        if dtype not in TARGET_DTYPES:
            raise InvalidInput(f"dtype: expected one of {list(TARGET_DTYPES)}, got {dtype!r}", field="dtype")
        lease.target_shape, lease.target_dtype = target, dtype
        self.acted(lease)

    def session_of(self, lease: Lease) -> Session:
        if lease.session is None:
            raise InvalidInput("image: no image yet; call set_image first", field="image")
        if lease.session.closed:
            self._leases.pop(lease.token, None)
            raise LeaseGone("lease: the lease's session expired; claim a new one", field="lease")
        return lease.session

    # --- interactions ---------------------------------------------------------------------------------------

    async def interact(self, lease: Lease, interaction: Interaction | None, run_prediction: bool) -> Prediction:
        """Queue ``interaction`` (None: ``/predict``); run the queue when ``run_prediction``."""
        session = self.session_of(lease)
        if lease.target_dtype is None or lease.target_shape != session.shape:
            raise InvalidInput(f"target_buffer: no target buffer of the image's shape {list(session.shape)} yet; "
                               "call set_target_buffer", field="target_buffer")
        if interaction is not None:
            lease.queued.append(interaction)
        self.acted(lease)
        if not run_prediction or not lease.queued:
            return Prediction(ran=False)
        outcomes: list[PromptOutcome] = []
        while lease.queued:
            item = lease.queued.pop(0)
            done = await self._apply(session, item)
            lease.undo_counts.append(len(done))
            outcomes.extend(done)
        return await self._prediction(lease, session, outcomes)

    async def undo(self, lease: Lease) -> Prediction:
        """Revert the last interaction that ran (all of the prompts it took); nothing to undo = ran false."""
        session = self.session_of(lease)
        self.acted(lease)
        lease.queued.clear()
        if not lease.undo_counts:
            return Prediction(ran=False)
        outcomes = []
        for _ in range(lease.undo_counts.pop()):
            try:
                outcomes.append(await self.manager.undo(session, OBJECT_ID))
            except (NothingToUndo, ObjectNotFound):
                break  # past our undo depth: what could be undone was
        return await self._prediction(lease, session, outcomes) if outcomes else Prediction(ran=False)

    async def reset(self, lease: Lease) -> None:
        """Empty the object (the client zeroed its buffer already); undoable like any interaction."""
        session = self.session_of(lease)
        self.acted(lease)
        lease.queued.clear()
        if session.has_object(OBJECT_ID):
            await self.manager.reset(session, OBJECT_ID)
            lease.undo_counts.append(1)

    async def _apply(self, session: Session, item: Interaction) -> list[PromptOutcome]:
        m, label = self.manager, int(item.include)
        if item.kind == "bbox":
            assert item.box is not None
            if item.include:
                return [await m.add_box(session, OBJECT_ID, box_across_slices(item.box, session))]
            flat = regions.from_mask(_box_mask(item.box, session.shape))
            return [await m.add_region(session, OBJECT_ID, flat, 0, mode=REGION_MODE)]
        if item.kind == "point":
            assert item.point is not None
            if item.include and session.object_is_blank(OBJECT_ID):
                box = click_box([item.point], session.record.spacing, session.shape)
                assert box is not None  # one foreground click
                first = await m.add_box(session, OBJECT_ID, box)
                return [first, await m.add_clicks(session, OBJECT_ID, [item.point], [1], mode="decoder")]
            return [await m.add_clicks(session, OBJECT_ID, [item.point], [label], mode=POINT_MODE)]
        if item.kind in ("scribble", "lasso"):
            assert item.region is not None
            return [await m.add_region(session, OBJECT_ID, item.region, label, mode=REGION_MODE)]
        assert item.mask is not None
        return [await m.set_mask(session, OBJECT_ID, item.mask)]

    async def _prediction(self, lease: Lease, session: Session, outcomes: Sequence[PromptOutcome]) -> Prediction:
        boxes = [o.bbox for o in outcomes if o.bbox is not None]
        if not boxes:
            return Prediction(ran=True)
        lo = [min(b[a] for b in boxes) for a in range(3)]
        hi = [max(b[a + 3] for b in boxes) + 1 for a in range(3)]
        mask, _version = await self.manager.get_mask(session, OBJECT_ID)
        block = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(lease.target_dtype or "uint8")
        bbox: Box3 = ((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))
        return Prediction(ran=True, bbox=bbox, block=block)

    # --- internals ------------------------------------------------------------------------------------------

    def _overdue(self, lease: Lease) -> bool:
        now = self._clock()
        if now - lease.last_seen > self.liveness_timeout_s or now - lease.last_action > self.idle_timeout_s:
            return True
        return lease.session is not None and lease.session.closed

    async def _drop(self, lease: Lease) -> None:
        self._leases.pop(lease.token, None)
        if lease.session is not None:
            await self._close_session(lease.session)
            lease.session = None

    async def _close_session(self, session: Session) -> None:
        if session.closed:
            return
        try:
            await self.manager.close(session)
        except ServiceError as e:  # already ended by the manager's own clocks
            log.debug("nninteractive: closing session %s: %s", session.session_id, e)


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = list(spacing)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
            or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInput(f"image_properties.spacing: expected 3 positive numbers, got {values!r}",
                           field="image_properties.spacing")
    return (float(values[0]), float(values[1]), float(values[2]))


def _box_mask(box: Box3, shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(lo, hi) for lo, hi in box)] = True
    return mask


def box_across_slices(box: Box3, session: Session) -> list[int]:
    """A protocol box (half-open) as our inclusive box; a 2D box (extent 1 on an axis) is grown along that
    axis by half its largest in-plane physical extent on each side, since a box drawn on one slice outlines a
    structure that also spans the neighbouring slices and our models decode boxes in 3D."""
    spacing = session.record.spacing
    lo = [b[0] for b in box]
    hi = [b[1] - 1 for b in box]
    flat = [a for a in range(3) if box[a][1] - box[a][0] == 1]
    if len(flat) == 1:
        axis = flat[0]
        in_plane_mm = max((box[a][1] - box[a][0]) * spacing[a] for a in range(3) if a != axis)
        grow = max(1, int(math.ceil(0.5 * in_plane_mm / spacing[axis])))
        lo[axis] = max(0, lo[axis] - grow)
        hi[axis] = min(session.shape[axis] - 1, hi[axis] + grow)
    return [*lo, *hi]
