"""A scripted diff-stream server on 127.0.0.1 (real ``websockets``), holding the true masks."""

from __future__ import annotations

import json
import threading
from http import HTTPStatus

import numpy as np
from websockets.sync.server import Server, ServerConnection, serve

from client.wire.frames import FRAME_FORMAT_VERSION, encode_diff, encode_snapshot


class FakeStreamServer:
    """Truth per object; ``step`` makes a change and pushes its diff (or drops it, to fake a lost frame)."""

    def __init__(self, shape: tuple[int, int, int], token: str = "tok") -> None:
        self.shape = shape
        self.token = token
        self.truth: dict[int, np.ndarray] = {}
        self.versions: dict[int, int] = {}
        self.received: list[dict] = []
        self.connections: list[ServerConnection] = []
        self.reject_with: tuple[int, str] | None = None  # close code sent instead of hello
        self._lock = threading.Lock()
        self._server: Server = serve(self._handler, "127.0.0.1", 0, process_request=self._auth,
                                     compression=None, max_size=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _auth(self, connection: ServerConnection, request: object) -> object:
        if getattr(request, "headers", {}).get("Authorization") != f"Bearer {self.token}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "token: wrong token\n")
        return None

    def _handler(self, connection: ServerConnection) -> None:
        if self.reject_with is not None:
            connection.close(*self.reject_with)
            return
        with self._lock:
            hello = {"type": "hello", "session_id": "s1", "shape": list(self.shape),
                     "frame_version": FRAME_FORMAT_VERSION, "objects": {str(k): v for k, v in self.versions.items()}}
            self.connections.append(connection)  # before hello: a test may close it right after
            connection.send(json.dumps(hello))
        for message in connection:
            msg = json.loads(message)
            self.received.append(msg)
            if msg["type"] == "resync":
                with self._lock:
                    oids = [msg["object_id"]] if msg["object_id"] is not None else sorted(self.truth)
                    for oid in oids:
                        connection.send(encode_snapshot(self.truth[oid], object_id=oid, version=self.versions[oid]))
            elif msg["type"] == "ping":
                connection.send(json.dumps({"type": "pong"}))

    def step(self, oid: int, new_mask: np.ndarray, *, deliver: bool = True, step: str = "gru") -> int:
        with self._lock:
            old = self.truth.get(oid, np.zeros(self.shape, np.uint8))
            base = self.versions.get(oid, 0)
            idx = np.flatnonzero(old.ravel() != new_mask.ravel())
            frame = encode_diff(idx, new_mask.ravel()[idx], object_id=oid, version=base + 1, base_version=base,
                                shape=self.shape, step=step)
            self.truth[oid] = new_mask.astype(np.uint8).copy()
            self.versions[oid] = base + 1
            if deliver:
                self.broadcast(frame)
            return base + 1

    def broadcast(self, message: bytes | str) -> None:
        for connection in self.connections:
            connection.send(message)

    def close_all(self, code: int, reason: str) -> None:
        for connection in self.connections:
            connection.close(code, reason)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
