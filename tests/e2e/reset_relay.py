"""A TCP relay in front of a server that loses the first reply: it forwards the first connection's request,
waits for the server's complete reply, then resets the client's connection instead of passing the reply on.

The server applied the request, the client saw a connection reset: the case an idempotency key exists for.
Every later connection is relayed unchanged in both directions.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


def _read_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (what httpx sends and uvicorn answers here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed before the headers ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed before the body ended")
        body += chunk
    return head + b"\r\n\r\n" + body


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ResetRelay:
    """``with ResetRelay(port) as relay: relay.url`` -> an http URL; ``relay.connections`` counts accepts and
    ``relay.dropped_replies`` holds the replies the client never got."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.dropped_replies: list[bytes] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ResetRelay:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by __exit__
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=120)
            if self.connections == 1:
                threading.Thread(target=self._drop_reply, args=(client, upstream), daemon=True).start()
            else:
                threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def _drop_reply(self, client: socket.socket, upstream: socket.socket) -> None:
        upstream.sendall(_read_message(client))
        self.dropped_replies.append(_read_message(upstream))  # the server answered: the prompt is applied
        upstream.close()
        # SO_LINGER 0: close() sends a RST, the client reads "connection reset by peer".
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
