"""A TCP proxy on loopback that misbehaves on request: how the S3 fault tests make a
replica that drops connections, denies access or goes away and comes back,
without touching the S3 server or the engine.

``FaultProxy(target_port)`` forwards ``127.0.0.1:<port>`` to the target. Faults:

* ``drop_every = N``: every Nth connection is closed as soon as it is accepted
  (the client sees a reset/empty reply and must retry);
* ``deny = True``: every request is answered ``403 AccessDenied`` (S3-style XML);
* ``down()`` / ``up()``: stop listening (connection refused), then listen again
  on the same port, as a server that stops answering and comes back.
"""

from __future__ import annotations

import socket
import threading

from engine.sandbox.common import LOOPBACK, free_port

DENY = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 120\r\n\r\n"
    b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
    b"</Error>".ljust(120)
)


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, with the faults above."""

    def __init__(self, target_port: int, drop_every: int = 0, deny: bool = False):
        self.target_port = target_port
        self.port = free_port()
        self.drop_every = drop_every
        self.deny = deny
        self.accepted = 0
        self.dropped = 0
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.up()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def up(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept_loop, args=(s,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._stop.set()
        self.down()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.drop_every and self.accepted % self.drop_every == 0:
                self.dropped += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00"
                                b"\x00\x00")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.deny:
            try:
                conn.recv(65536)
                conn.sendall(DENY)
            finally:
                conn.close()
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(262144)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        t.start()
        pump(conn, upstream)
        t.join(timeout=30)
        conn.close()
        upstream.close()
