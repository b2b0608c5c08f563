"""A TCP relay between a server process and a real redis-server that can hold the server's history append.

Every byte passes through unchanged, except that while ``hold()`` is in force the first command that runs the
store's commit script (``EVALSHA`` of ``_COMMIT_LUA``, `app/sessions/store.py`) is kept back: ``held`` is set,
and the test decides what happens to it: ``release()`` sends it on, ``drop()`` cuts that connection (the server
sees Redis fail under it) and so does a server that dies meanwhile; after ``drop()`` every later commit is cut the same way (a client
library retrying on a new connection still meets a failing store). The model step of that prompt has run by
then, its history append has not: the exact gap a frame must never be streamed in.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field

from app.sessions.store import _COMMIT_LUA

COMMIT_SHA = hashlib.sha1(_COMMIT_LUA.encode()).hexdigest().encode()


@dataclass
class _Hold:
    decided: threading.Event = field(default_factory=threading.Event)
    forward: bool = False


class CommitGate:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.held = threading.Event()
        self._hold: _Hold | None = None  # the next commit is kept back under this decision
        self._refusing = False  # after drop(): every later commit is cut
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Keep back the next commit-script command until ``release()`` or ``drop()``."""
        with self._lock:
            self.held.clear()
            self._hold = _Hold()

    def release(self) -> None:
        """Send a held commit on; later commits pass."""
        self._decide(forward=True)

    def drop(self) -> None:
        """Cut a held commit's connection; later commits are cut too, until ``release()``."""
        self._decide(forward=False)

    def close(self) -> None:
        self._decide(forward=False)
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _decide(self, *, forward: bool) -> None:
        with self._lock:
            self._refusing = not forward
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.forward = forward
            hold.decided.set()

    def _take_hold(self) -> _Hold | None:
        with self._lock:
            return self._hold

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # Redis is down (the test stopped it): the server sees a refused connection
                _close(downstream)
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_server and b"EVALSHA" in data.upper() and COMMIT_SHA in data:
                    hold = self._take_hold()
                    if hold is not None:
                        self.held.set()
                        hold.decided.wait()
                        if not hold.forward:
                            break
                    elif self._refusing:
                        break
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
