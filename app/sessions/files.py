"""A session's files on disk as the request path sees them: written before the reply, errors as domain errors.

Wraps ``Persistence`` (``app.sessions.persistence``; None = no ``storage_dir``, every call a no-op) so that the
lifecycle and the prompt pipeline neither touch paths nor block the event loop (file I/O runs in a thread).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from app.errors import InvalidInput, StoreUnavailable
from app.sessions.persistence import Persistence, VolumeMeta
from app.sessions.store import SessionRecord

log = logging.getLogger(__name__)


class SessionFiles:
    """Volume and mask writes, and deletion, for the sessions of one manager."""

    def __init__(self, persistence: Persistence | None, seed: int) -> None:
        self.persistence = persistence
        self._seed = seed

    @property
    def keep_on_shutdown(self) -> bool:
        return self.persistence is not None and self.persistence.keep_on_shutdown

    def require(self) -> Persistence:
        if self.persistence is None:
            raise RuntimeError("restore: this manager has no storage (Settings.storage_dir)")
        return self.persistence

    async def save_volume(self, record: SessionRecord, volume: np.ndarray, exclusive_objects: bool, *,
                          exclusive: bool = False) -> None:
        if self.persistence is None:
            return
        meta = VolumeMeta(spacing=record.spacing, origin=record.origin, direction=record.direction,
                          seed=self._seed, model=self.persistence.model, exclusive_objects=exclusive_objects)
        try:
            await asyncio.to_thread(self.persistence.storage.save_volume, record.session_id, volume, meta,
                                    exclusive=exclusive)
        except FileExistsError as e:  # a chosen id whose folder exists: never touch another session's files
            raise InvalidInput(f"session_id: session id {record.session_id!r} is taken",
                               field="session_id") from e
        except OSError as e:
            log.error("session %s: cannot write its volume to storage: %s", record.session_id, e)
            await self.delete(record.session_id)
            raise StoreUnavailable(f"store: cannot write the volume to storage: {e}") from e

    async def save_mask(self, session_id: str, mask: np.ndarray) -> None:
        if self.persistence is None:
            return
        try:
            await asyncio.to_thread(self.persistence.storage.save_mask, session_id, mask)
        except OSError as e:
            log.error("session %s: cannot write a mask to storage: %s", session_id, e)
            raise StoreUnavailable(f"store: cannot write the mask to storage: {e}") from e

    async def delete(self, session_id: str) -> None:
        if self.persistence is not None:
            await asyncio.to_thread(self.persistence.storage.delete, session_id)
