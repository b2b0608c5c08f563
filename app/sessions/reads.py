"""Reading a session without changing it: masks, the label map, object summaries, its stored record.

Device reads run under the session lock (the state is never read half-updated) and on the executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from app.models.label_map import OverlapRule
from app.schemas.frames import mask_bbox
from app.sessions.changes import Bbox
from app.sessions.executor import DeviceExecutor
from app.sessions.registry import SessionRegistry
from app.sessions.session import Session
from app.sessions.store import MetadataStore, SessionRecord

if TYPE_CHECKING:
    from app.models import Predictor


class SessionReads:
    """Read-only views of the sessions of one registry."""

    def __init__(self, predictor: Predictor, store: MetadataStore, executor: DeviceExecutor,
                 registry: SessionRegistry) -> None:
        self.predictor = predictor
        self.store = store
        self.executor = executor
        self.registry = registry

    async def get_mask(self, session: Session, object_id: int) -> tuple[np.ndarray, int]:
        """The object's (D, H, W) uint8 mask and the version it corresponds to."""

        async def body() -> tuple[np.ndarray, int]:
            self.registry.require_object(session, object_id)
            mask = await self.executor.run(self.predictor.get_mask, session.state, object_id)
            return mask, session.versions.get(object_id, 0)

        return await self.registry.locked(session, body)

    async def segmentation(self, session: Session, overlap: OverlapRule = "confidence",
                           object_ids: Sequence[int] | None = None) -> tuple[np.ndarray, dict[int, int]]:
        """All objects (or those of ``object_ids`` that exist) as one (D, H, W) label map (value = object id)
        and the versions it shows.

        Overlaps (``app.models.label_map``): ``"confidence"``, the object with the highest logit wins, ties to
        the most recently changed; ``"recent"``, the most recently changed object wins.
        dtype uint8 when every id fits, else uint16.
        """

        async def body() -> tuple[np.ndarray, dict[int, int]]:
            shown = session.state.objects if object_ids is None else set(object_ids) & set(session.state.objects)
            order = sorted(shown, key=lambda oid: session.change_order.get(oid, 0))
            labels = await self.executor.run(self.predictor.get_label_map, session.state, order, overlap)
            return labels, {oid: session.versions.get(oid, 0) for oid in order}

        return await self.registry.locked(session, body)

    async def object_summaries(self, session: Session) -> list[tuple[int, int, int, Bbox | None]]:
        """(object id, version, foreground voxels, inclusive bbox) of every object."""

        async def body() -> list[tuple[int, int, int, Bbox | None]]:
            def summarise() -> list[tuple[int, int, int, Bbox | None]]:
                out = []
                for oid in sorted(session.state.objects):
                    mask = self.predictor.get_mask(session.state, oid)
                    out.append((oid, session.versions.get(oid, 0), int(np.count_nonzero(mask)), mask_bbox(mask)))
                return out

            return await self.executor.run(summarise)

        return await self.registry.locked(session, body)

    async def prompt_counts(self, session: Session) -> dict[int, int]:
        """Object id -> number of prompts its history holds (objects removed since included)."""
        counts: dict[int, int] = {}
        for p in await self.store.prompt_history(session.session_id):
            if p.op != "refine":  # a deferred decoder step belongs to the clicks before it, it is no prompt
                counts[p.object_id] = counts.get(p.object_id, 0) + 1
        return counts

    async def stored_record(self, session: Session) -> SessionRecord:
        """The session's record as the store holds it now (its last use recorded), else the one in memory."""
        return await self.store.get_session(session.session_id) or session.record
