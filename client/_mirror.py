"""Sans-IO state of a stream consumer: local masks per object, rebuilt from diff frames.

The mirror is fed every message the server sends and returns the JSON messages to send back (resync
requests). Rules, per object with local version ``v``:

- snapshot frame: replace the mask, ``v = frame.version`` (ends a pending resync);
- diff with ``base_version == v``: apply, ``v = frame.version``; a new object starts at ``v = 0``, zeros;
- diff with ``version <= v``: already applied (duplicate), ignored;
- any other diff: a version gap (a frame was missed) -> ask for a resync once and drop that object's diffs
  until the snapshot arrives (the server sends in order, so nothing after the snapshot is lost);
- hello (every connection, reconnects included): an object whose server version differs from ``v`` in either
  direction is resynced, and an object the server no longer lists is dropped. A server behind the mirror
  (restored from an older history) would otherwise have its next real frame taken for a duplicate.
"""

from __future__ import annotations

import numpy as np

from client.wire.frames import DiffFrame, apply_diff, decode_diff
from client.wire.messages import (
    ErrorMessage,
    ObjectRemoved,
    ResyncRequest,
    StreamHello,
    dump,
    parse_server_message,
)


class MaskMirror:
    """Local (D, H, W) uint8 masks and versions of every object of one session. Not thread-safe."""

    def __init__(self, *, max_payload_bytes: int | None = None) -> None:
        self.session_id: str | None = None
        self.shape: tuple[int, int, int] | None = None
        self.masks: dict[int, np.ndarray] = {}
        self.versions: dict[int, int] = {}
        self.pending_resync: set[int] = set()
        self.errors: list[str] = []
        self.frames_applied = 0
        self.bytes_received = 0
        self._decode_kwargs = {} if max_payload_bytes is None else {"max_payload_bytes": max_payload_bytes}

    @property
    def hello_received(self) -> bool:
        return self.shape is not None

    @staticmethod
    def resync_message(object_id: int | None, from_version: int | None = None) -> str:
        return dump(ResyncRequest(object_id=object_id, from_version=from_version))

    def on_text(self, text: str) -> list[str]:
        """Handle a JSON message; returns messages to send."""
        try:
            msg = parse_server_message(text)
        except ValueError as exc:
            self.errors.append(str(exc))
            return []
        if isinstance(msg, StreamHello):
            self.session_id = msg.session_id
            self.shape = (int(msg.shape[0]), int(msg.shape[1]), int(msg.shape[2]))
            for oid in [o for o in self.versions if o not in msg.objects]:  # gone on the server
                self.masks.pop(oid, None)
                self.versions.pop(oid, None)
                self.pending_resync.discard(oid)
            differ = [oid for oid, v in msg.objects.items() if v != self.versions.get(oid, 0)]
            if differ:
                self.pending_resync.update(differ)
                return [self.resync_message(None)]
        elif isinstance(msg, ObjectRemoved):
            self.masks.pop(msg.object_id, None)
            self.versions.pop(msg.object_id, None)
            self.pending_resync.discard(msg.object_id)
        elif isinstance(msg, ErrorMessage):
            self.errors.append(msg.error.message)
        return []

    def on_binary(self, data: bytes) -> list[str]:
        """Handle a diff frame; returns messages to send (a resync request on a gap or a bad frame)."""
        self.bytes_received += len(data)
        try:
            frame = decode_diff(data, **self._decode_kwargs)
        except ValueError as exc:
            self.errors.append(str(exc))
            self.pending_resync.update(self.masks)
            return [self.resync_message(None)]
        if self.shape is not None and frame.shape != self.shape:
            self.errors.append(f"frame: shape {frame.shape} differs from the session's {self.shape}")
            return []
        oid = frame.object_id
        if frame.is_snapshot:
            self._apply(oid, np.zeros(frame.shape, dtype=np.uint8), frame)
            self.pending_resync.discard(oid)
            return []
        if oid in self.pending_resync:
            return []
        local = self.versions.get(oid, 0)
        mask = self.masks.get(oid)
        if mask is None and frame.base_version == 0:
            mask = np.zeros(frame.shape, dtype=np.uint8)
        if mask is not None and frame.base_version == local:
            self._apply(oid, mask, frame)
            return []
        if mask is not None and frame.version <= local:
            return []
        self.pending_resync.add(oid)
        return [self.resync_message(oid, local)]

    def _apply(self, oid: int, mask: np.ndarray, frame: DiffFrame) -> None:
        apply_diff(mask, frame)
        self.masks[oid] = mask
        self.versions[oid] = frame.version
        self.frames_applied += 1
