"""Repository locks: ``locks/<id>`` JSON records, shared or exclusive (docs/FORMAT.md).

Backups, pins, restores, dumps, verifies and replication take a shared lock
(many may run at once: writers add only new, content-addressed objects, readers
read); forget and prune take an exclusive lock.

When is a lock *stale* (ignored and removed by whoever meets it)? Each rule
judges only what this host can know, so a wrong clock elsewhere cannot block
the repository forever:

* taken on this host (same ``host``): stale when its process is gone (no
  ``pid``, a ``pid`` now running another program, or a record from before the
  last boot), or when it was not refreshed for STALE seconds (one clock);
* taken on another host: stale when its ``time`` is more than STALE seconds in
  the past (unless this host saw it change within STALE: a live holder whose
  clock is behind), or when its content has not changed for STALE seconds *as
  observed here* (this host's monotonic clock, kept across runs in an observation file
  where the caller provides one, see `set_observation_file`). A holder rewrites
  its record (``time`` and the refresh counter ``seq``) every REFRESH seconds,
  so a live holder keeps changing it whatever its clock says; a lock dated in
  the future is therefore stale once it has stayed unchanged for STALE;
* an unreadable record (not JSON, or missing its fields): reported by
  ``backup-tui lock list`` and stale once unchanged for STALE as observed here.

``backup-tui lock break`` removes a lock by hand (engine/ops/locks.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import EngineError, LockedError, NotFound
from engine.storage.base import Backend

STALE = 30 * 60
REFRESH = 5 * 60
FUTURE_SLACK = 60.0  # seconds a lock's time may be ahead of ours and still count as "now"

log = logging.getLogger("backup_tui.engine.locks")


# ------------------------------------------------------------ this host


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def hostname() -> str:
    return socket.gethostname()


# ------------------------------------------------------ local observation


class Observations:
    """When this host first saw each lock record with its current content.

    Keyed by repository location and lock name; the value is the content's digest
    and the moment (this host's monotonic clock, with the boot it belongs to) it
    was first seen so. Kept in memory and, when a file is set, in that file so
    that runs of a minute each add up to the stale timeout.
    """

    def __init__(self) -> None:
        self._mem: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.path: Path | None = None
        self.clock = time.monotonic  # this host's clock that no one can set (tests move it)

    def unchanged_for(self, location: str, name: str, content: bytes) -> tuple[float, bool]:
        """Seconds this content of the lock has been seen unchanged (0 when new), and
        whether this host saw the lock change (another content before this one)."""
        key = f"{location}\n{name}"
        digest = hashlib.sha256(content).hexdigest()
        now, boot = self.clock(), boot_id()
        with self._lock:
            table = self._load()
            seen = table.get(key)
            if (isinstance(seen, dict) and seen.get("digest") == digest
                    and seen.get("boot") == boot and isinstance(seen.get("since"), int | float)
                    and seen["since"] <= now):
                return now - float(seen["since"]), bool(seen.get("changed"))
            changed = isinstance(seen, dict) and seen.get("boot") == boot
            table[key] = {"digest": digest, "since": now, "boot": boot, "changed": changed}
            self._save(table)
            return 0.0, changed

    def _load(self) -> dict[str, dict]:
        if self.path is None:
            return self._mem
        try:
            doc = json.loads(self.path.read_text())
            if isinstance(doc, dict):
                self._mem = doc
        except (OSError, ValueError):
            pass
        return self._mem

    def _save(self, table: dict[str, dict]) -> None:
        self._mem = table
        if self.path is None:
            return
        if len(table) > 1000:  # bounded: drop the oldest observations
            for k in sorted(table, key=lambda k: table[k].get("since", 0))[: len(table) - 1000]:
                del table[k]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(table, f)
            os.replace(tmp, self.path)
        except OSError:  # an observation not kept only makes staleness slower to show
            with contextlib.suppress(OSError):
                tmp.unlink()


OBSERVATIONS = Observations()


def set_observation_file(path: str | os.PathLike[str] | None) -> None:
    """Keep lock observations in this file (the state directory's); None: in memory."""
    OBSERVATIONS.path = Path(path) if path is not None else None


# ----------------------------------------------------------- judging locks


@dataclass
class LockInfo:
    """One lock record as this host judges it."""

    id: str
    name: str
    readable: bool
    record: dict = field(default_factory=dict)
    stale: bool = False
    why: str = ""  # why stale, or why it is live
    alive: bool | None = None  # its process, when it is on this host
    age: float | None = None  # seconds since its time (negative: dated in the future)
    unchanged: float = 0.0  # seconds seen unchanged here
    dead_owner: bool = False  # stale because its process is provably gone

    @property
    def exclusive(self) -> bool:
        return bool(self.record.get("exclusive"))

    def describe(self) -> str:
        if not self.readable:
            return f"an unreadable lock {self.name}"
        r = self.record
        kind = "an exclusive" if self.exclusive else "a shared"
        return (f"{kind} lock for {r.get('purpose', '?')} (pid {r.get('pid')} on "
                f"{r.get('host')} since {r.get('when')}, {self.name})")

    def as_json(self) -> dict:
        r = self.record
        return {
            "id": self.id, "readable": self.readable, "exclusive": self.exclusive,
            "purpose": r.get("purpose"), "host": r.get("host"), "pid": r.get("pid"),
            "when": r.get("when"), "alive": self.alive,
            "age": None if self.age is None else round(self.age, 1),
            "unchanged": round(self.unchanged, 1), "stale": self.stale, "why": self.why,
        }


def _valid(rec: object) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("host"), str)
            and isinstance(rec.get("pid"), int) and not isinstance(rec.get("pid"), bool)
            and isinstance(rec.get("time"), int | float) and not isinstance(rec.get("time"), bool)
            and isinstance(rec.get("exclusive", False), bool))


def judge(location: str, name: str, content: bytes, now: float | None = None,
          stale_after: float = STALE) -> LockInfo:
    """Judge one lock record (see the module docstring for the rules)."""
    now = time.time() if now is None else now
    info = LockInfo(id=name.rpartition("/")[2], name=name, readable=False)
    info.unchanged, changed = OBSERVATIONS.unchanged_for(location, name, content)
    try:
        rec = json.loads(content)
    except (ValueError, RecursionError):
        rec = None
    if not _valid(rec):
        info.stale = info.unchanged >= stale_after
        info.why = (f"unreadable lock record, unchanged for {int(info.unchanged)} s here"
                    + ("" if info.stale else f" (stale after {int(stale_after)} s)"))
        return info
    assert isinstance(rec, dict)
    info.readable, info.record = True, rec
    info.age = now - float(rec["time"])
    if rec["host"] == hostname():
        pid = rec["pid"]
        if rec.get("boot") and boot_id() and rec["boot"] != boot_id():
            info.alive, info.stale, info.dead_owner = False, True, True
            info.why = "taken on this host before its last boot"
        elif not pid_alive(pid):
            info.alive, info.stale, info.dead_owner = False, True, True
            info.why = f"process {pid} is gone"
        elif rec.get("start") is not None and pid_start(pid) not in (None, rec["start"]):
            info.alive, info.stale, info.dead_owner = False, True, True
            info.why = f"process {pid} is gone (the pid now belongs to another program)"
        elif info.age > stale_after:
            info.alive, info.stale = True, True
            info.why = f"process {pid} is running but did not refresh it for {int(info.age)} s"
        else:
            info.alive, info.why = True, f"process {pid} is running"
        return info
    if info.age > stale_after and not (changed and info.unchanged < stale_after):
        info.stale = True
        info.why = f"not refreshed for {int(info.age)} s (by its time)"
    elif info.age > stale_after:
        info.why = (f"dated {int(info.age)} s ago, but seen refreshed here "
                    f"{int(info.unchanged)} s ago (its clock is behind?)")
    elif info.unchanged >= stale_after:
        info.stale = True
        dated = " dated in the future," if info.age < -FUTURE_SLACK else ""
        info.why = f"{dated} unchanged for {int(info.unchanged)} s as seen here".lstrip(", ")
    elif info.age < -FUTURE_SLACK:
        info.why = (f"dated {int(-info.age)} s in the future (clock skew?); stale once "
                    f"unchanged here for {int(stale_after)} s, seen for {int(info.unchanged)} s")
    else:
        info.why = "on another host; refreshed recently"
    return info


def list_locks(backend: Backend, stale_after: float = STALE,
               skip: str = "") -> list[LockInfo]:
    """Every lock record of the repository but ``skip``, judged (records that vanish
    are skipped)."""
    out = []
    for obj in backend.list("locks/"):
        if obj.name == skip:
            continue
        try:
            content = backend.get(obj.name)
        except NotFound:
            continue
        out.append(judge(backend.location, obj.name, content, stale_after=stale_after))
    return out


# --------------------------------------------------------------- the lock


class RepoLock:
    def __init__(self, backend: Backend, exclusive: bool, purpose: str):
        self.backend = backend
        self.exclusive = exclusive
        self.purpose = purpose
        self.id = secrets.token_hex(16)
        self.name = f"locks/{self.id}"
        self.seq = 0
        self.lost = False  # our record vanished while held (someone judged it stale)
        # stale locks removed while taking this one whose owner might still be running
        # (another host, an unreadable record): prune keeps its grace period then
        self.removed_maybe_live: list[LockInfo] = []
        self._start = pid_start(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        self.seq += 1
        rec = {
            "exclusive": self.exclusive,
            "purpose": self.purpose,
            "host": hostname(),
            "pid": os.getpid(),
            "time": time.time(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "seq": self.seq,
        }
        if self._start is not None:
            rec["start"] = self._start
        if boot_id():
            rec["boot"] = boot_id()
        return json.dumps(rec).encode()

    def _conflicts(self) -> list[LockInfo]:
        out = []
        for info in list_locks(self.backend, skip=self.name):
            if info.stale:
                log.info("%s: removing stale %s: %s", self.backend.location, info.describe(),
                         info.why)
                self.backend.delete(info.name)  # its observation stays: if its holder
                # is alive after all and writes it again, it is seen changing (judge)
                if not info.dead_owner:
                    self.removed_maybe_live.append(info)
                continue
            if self.exclusive or info.exclusive or not info.readable:
                out.append(info)
        return out

    def acquire(self, wait: float = 0.0) -> RepoLock:
        deadline = time.monotonic() + wait
        told = False
        while True:
            self.backend.put(self.name, self._record())
            try:
                conflicts = self._conflicts()
            except BaseException:  # listing failed: withdraw ours, say why
                with contextlib.suppress(Exception):
                    self.backend.delete(self.name)
                raise
            if not conflicts:
                break
            self.backend.delete(self.name)
            c = conflicts[0]
            how = (f"if its owner is gone, remove it with 'backup-tui lock break {c.id}' "
                   "('backup-tui lock list' shows every lock)")
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.backend.location}: repository busy, retry later: it is locked by "
                    f"{c.describe()}; {c.why}; {how}"
                )
            if not told:
                told = True
                log.warning("%s: waiting up to %d s for %s (%s); %s", self.backend.location,
                            int(wait), c.describe(), c.why, how)
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                if not self.backend.exists(self.name) and not self.lost:
                    self.lost = True
                    log.warning("%s: our lock %s was removed by someone else (judged stale); "
                                "writing it again", self.backend.location, self.name)
                self.backend.put(self.name, self._record())
            except Exception:  # noqa: BLE001 - a failed refresh is retried next round
                pass

    def release(self) -> None:
        """Remove our record. Never raises: an operation that ended must not fail over
        its lock (an unreachable replica); a record left behind goes stale (its process
        is gone; elsewhere, unchanged for STALE) and `lock break` removes it."""
        self._stop.set()
        try:
            self.backend.delete(self.name)
        except EngineError as e:
            log.warning("%s: cannot remove our lock %s (%s); it goes stale once this "
                        "process ends, or remove it with 'backup-tui lock break %s'",
                        self.backend.location, self.name, e, self.id)

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def reading(backend: Backend, purpose: str, wait: float = 60.0) -> Iterator[RepoLock | None]:
    """A shared lock for a reader (restore, dump, verify, the source side of replicate):
    a prune waits for it. When the lock object cannot be written at all (read-only
    credentials, a full disk) the read goes on without it, with a warning; a
    conflicting lock is never ignored (LockedError after ``wait``)."""
    lock = RepoLock(backend, exclusive=False, purpose=purpose)
    try:
        lock.acquire(wait=wait)
    except LockedError:
        raise
    except EngineError as e:
        with contextlib.suppress(EngineError):
            backend.delete(lock.name)
        log.warning("%s: cannot take a shared lock (%s); reading without it: a cleanup "
                    "running at the same time could remove data this %s reads",
                    backend.location, e, purpose.split()[0])
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()
