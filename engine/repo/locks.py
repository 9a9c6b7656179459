"""Repository locks: ``locks/<id>`` JSON records, shared or exclusive.

Backups, restores and verifies take a shared lock (many may run at once: each
writes only new, content-addressed objects). Prune takes an exclusive lock. A
lock is stale when it has not been refreshed for STALE seconds, or when it was
taken on this host by a process that no longer exists (a killed backup), and
stale locks are ignored and removed.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime

from engine.errors import LockedError, NotFound
from engine.storage.base import Backend

STALE = 30 * 60
REFRESH = 5 * 60


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RepoLock:
    def __init__(self, backend: Backend, exclusive: bool, purpose: str):
        self.backend = backend
        self.exclusive = exclusive
        self.purpose = purpose
        self.name = f"locks/{secrets.token_hex(16)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "exclusive": self.exclusive,
                "purpose": self.purpose,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.time(),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        ).encode()

    def _conflicts(self) -> list[dict]:
        out = []
        host = socket.gethostname()
        for info in self.backend.list("locks/"):
            if info.name == self.name:
                continue
            try:
                rec = json.loads(self.backend.get(info.name))
            except (NotFound, ValueError):
                continue
            stale = time.time() - float(rec.get("time", 0)) > STALE or (
                rec.get("host") == host and not pid_alive(int(rec.get("pid", 0)))
            )
            if stale:
                self.backend.delete(info.name)
                continue
            if self.exclusive or rec.get("exclusive"):
                out.append(rec)
        return out

    def acquire(self, wait: float = 0.0) -> RepoLock:
        deadline = time.monotonic() + wait
        while True:
            self.backend.put(self.name, self._record())
            conflicts = self._conflicts()
            if not conflicts:
                break
            self.backend.delete(self.name)
            if time.monotonic() >= deadline:
                c = conflicts[0]
                kind = "an exclusive" if c.get("exclusive") else "a"
                raise LockedError(
                    f"{self.backend.location}: repository is locked by {kind} lock for "
                    f"{c.get('purpose', '?')} (pid {c.get('pid')} on {c.get('host')} "
                    f"since {c.get('when')}); try again when it ends"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self.backend.put(self.name, self._record())
            except Exception:  # noqa: BLE001 - a failed refresh is retried next round
                pass

    def release(self) -> None:
        self._stop.set()
        self.backend.delete(self.name)

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
