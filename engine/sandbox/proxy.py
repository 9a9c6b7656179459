"""A TCP proxy on loopback that misbehaves on request: how the S3 fault tests make a
replica that drops connections, denies access, answers slowly or with errors, cuts
bodies short, or goes away and comes back, without touching the S3 server or the
engine.

``FaultProxy(target_port)`` forwards ``127.0.0.1:<port>`` to the target. Faults:

* ``drop_every = N``: every Nth connection is closed as soon as it is accepted
  (the client sees a reset/empty reply and must retry);
* ``deny = True``: every request is answered ``403 AccessDenied`` (S3-style XML);
* ``down()`` / ``up()``: stop listening (connection refused), then listen again
  on the same port, as a server that stops answering and comes back;
* ``chaos(rng, rates)``: from now on each new connection draws at most one fault
  from ``rates`` (fault name -> probability), with the seeded ``rng``:

  - ``latency``: the reply starts ``latency_s`` (default 0.2 s) late;
  - ``error``: the request is answered ``503 SlowDown`` (or ``500 InternalError``),
    and so are the next ``burst - 1`` connections (a burst of 5xx);
  - ``reset``: the connection is reset (RST) after a random number of reply bytes;
  - ``truncate``: the reply is cut short (a clean FIN) after a random number of bytes;
  - ``slow``: the reply trickles at ``slow_bps`` bytes per second;

  ``calm()`` ends them; ``injected`` counts what was injected, by fault.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
from collections import Counter

from engine.sandbox.common import LOOPBACK, free_port

DENY = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 120\r\n\r\n"
    b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
    b"</Error>".ljust(120)
)

FAULTS = ("latency", "error", "reset", "truncate", "slow")


def _error_reply(status: int) -> bytes:
    code, text = {503: (b"SlowDown", b"Service Unavailable"),
                  500: (b"InternalError", b"Internal Server Error")}[status]
    body = (b'<?xml version="1.0"?><Error><Code>' + code + b"</Code><Message>injected by "
            b"FaultProxy</Message></Error>")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % (status, text, len(body))) + body


def _rst_close(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00"
                        b"\x00\x00")
    except OSError:
        pass
    conn.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, with the faults above."""

    def __init__(self, target_port: int, drop_every: int = 0, deny: bool = False):
        self.target_port = target_port
        self.port = free_port()
        self.drop_every = drop_every
        self.deny = deny
        self.accepted = 0
        self.dropped = 0
        self.rates: dict[str, float] = {}
        self.rng = random.Random(0)
        self.latency_s = 0.2
        self.slow_bps = 256 * 1024
        self.burst = 3
        self.max_cut = 64 * 1024
        self.injected: Counter[str] = Counter()
        self._burst_left = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.up()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def chaos(self, rng: random.Random, rates: dict[str, float]) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)} (known: {FAULTS})")
        with self._lock:
            self.rng, self.rates = rng, dict(rates)

    def calm(self) -> None:
        with self._lock:
            self.rates, self._burst_left = {}, 0

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

    def _draw(self) -> tuple[str | None, int]:
        """The fault for a new connection (or None), and its byte count or status."""
        with self._lock:
            if self._burst_left > 0:
                self._burst_left -= 1
                self.injected["error"] += 1
                return "error", 503
            for name in FAULTS:
                rate = self.rates.get(name, 0.0)
                if rate and self.rng.random() < rate:
                    self.injected[name] += 1
                    if name == "error":
                        self._burst_left = max(0, self.burst - 1)
                        return name, self.rng.choice((503, 503, 500))
                    return name, self.rng.randint(0, self.max_cut)
            return None, 0

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.drop_every and self.accepted % self.drop_every == 0:
                self.dropped += 1
                _rst_close(conn)
                continue
            fault = self._draw() if (self.rates or self._burst_left) else (None, 0)
            threading.Thread(target=self._serve, args=(conn, *fault), daemon=True).start()

    def _serve(self, conn: socket.socket, fault: str | None = None, arg: int = 0) -> None:
        if self.deny or fault == "error":
            try:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                conn.sendall(DENY if self.deny else _error_reply(arg))
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                conn.close()
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        cut = {"reset": arg, "truncate": arg}.get(fault or "", -1)
        # One thread moves both directions, so that closing (a reset) is immediate.
        sent = 0
        try:
            while True:
                ready, _, _ = select.select([conn, upstream], [], [], 300)
                if not ready:
                    break  # idle for 5 minutes
                if conn in ready:
                    data = conn.recv(262144)
                    if not data:
                        break
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(16384 if fault else 262144)
                    if not data:
                        break
                    if fault == "latency" and sent == 0:
                        time.sleep(self.latency_s)
                    elif fault == "slow":
                        time.sleep(len(data) / self.slow_bps)
                    if cut >= 0 and sent + len(data) >= cut:
                        conn.sendall(data[: cut - sent])
                        if fault == "reset":
                            _rst_close(conn)
                        break  # truncate: a clean end of stream, short
                    conn.sendall(data)
                    sent += len(data)
        except OSError:
            pass
        finally:
            conn.close()
            upstream.close()
