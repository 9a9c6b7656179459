"""The wal-fetch spool: WAL segments fetched ahead of PostgreSQL's recovery.

Recovery runs ``wal-fetch NAME DEST`` once per segment and waits for each; a process
start and opening the repository cost more than the fetch itself. With ``--spool DIR``
(``restore pitr`` writes it into the restore_command) wal-fetch does what pgBackRest's
asynchronous archive-get does:

- a segment already in the spool is checked (its SHA-256 against the digest the
  prefetcher took from the archive's authenticated header) and renamed to DEST; this
  path imports only this module (the standard library), not engine.wal, zstandard,
  cryptography or boto3;
- otherwise wal-fetch fetches the segment itself as before (engine.wal.fetch: the exit
  codes that end or stop recovery are unchanged, and a segment the archive does not have
  is never answered from the spool) and, unless one runs, starts a detached prefetcher
  (a forked child, single: it holds ``DIR/lock``) that fetches the next ``ahead``
  segments of the same timeline into the spool, through the same copies in the same
  order (engine.wal.Copies), and exits; one is started again when fewer than half of
  ``ahead`` remain;
- a segment the running prefetcher is about to deliver is waited for (at most
  WAIT_SECONDS, and only while it runs) instead of being fetched twice.

Files in DIR: ``<segment name>.<sha256>`` (complete, verified: written as ``.tmp-*``
and renamed only after the archive's header authenticated it and its bytes hashed to
the header's digest; served only when they still hash to it, else deleted and fetched
again), ``lock`` (flock of the running prefetcher), ``state.json`` (what it does and how
it ended), ``prefetch.log`` (its errors). A killed prefetcher leaves only ``.tmp-*``
files, which are never served and which the next one deletes. The spool holds at most
``ahead`` segments; the prefetcher deletes those of other timelines and those recovery
has passed, and never fetches past the point where a newer timeline (an archived
``.history`` file) branches off the current one. `remove` (the restore's
recovery_end_command, and ``restore pitr`` after promotion) stops a running prefetcher
and deletes DIR.

Where: ``restore pitr`` makes DIR ``<pgdata>/pg_wal/backup-tui-spool`` (SPOOL_DIR), 0700,
owned by the server's OS user, who runs wal-fetch: that user can write it whoever runs
the restore, each restored data directory has its own, the rename into ``pg_wal/`` is on
one file system even when pg_wal is a link to another volume, and pg_basebackup copies
nothing of pg_wal but archive_status, so a spool left behind never enters a base backup.
PostgreSQL ignores a folder of that name in pg_wal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    # prefetch(spool, after, ahead, seg_size or None): the prefetcher's body, run detached
    Prefetch = Callable[["Spool", str, int, "int | None"], None]

SPOOL_DIR = "backup-tui-spool"  # restore pitr's spool: <pgdata>/pg_wal/backup-tui-spool
DEFAULT_AHEAD = 16  # segments fetched ahead ([[cluster]] wal_prefetch)
MAX_AHEAD = 256
WAIT_SECONDS = 30.0  # the longest wal-fetch waits for the running prefetcher's segment
LOCK = "lock"
STATE = "state.json"
LOG = "prefetch.log"
TMP = ".tmp-"
ERROR_PAUSE = 10.0  # no new prefetcher this long after one failed
_HEX = "0123456789ABCDEF"  # (no re: the serving path imports as little as it can)
_READ = 1024 * 1024


def is_segment(name: str) -> bool:
    """A WAL segment name (only segments are spooled: .history, .partial and .backup
    files are always fetched)."""
    return len(name) == 24 and not name.strip(_HEX)


def _segno(name: str, seg_size: int) -> int:
    return int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)


def _name(tli: int, segno: int, seg_size: int) -> str:
    per = 0x100000000 // seg_size
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


class Spool:
    """One spool folder (see the module text)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def entries(self) -> dict[str, str]:
        """segment name -> its file name, for every complete entry."""
        out: dict[str, str] = {}
        try:
            names = os.listdir(self.path)
        except OSError:
            return out
        for n in names:  # <24 hex digits>.<64 hex digits, lower case>
            if len(n) == 89 and n[24] == "." and is_segment(n[:24]) \
                    and not n[25:].strip("0123456789abcdef"):
                out[n[:24]] = n
        return out

    def take(self, name: str, dest: str, entries: dict[str, str] | None = None) -> bool:
        """Move the spooled ``name`` to ``dest`` when it is there and still hashes to its
        recorded digest: True. A damaged entry is deleted (False: fetch it)."""
        file = (entries if entries is not None else self.entries()).get(name)
        if file is None:
            return False
        path = os.path.join(self.path, file)
        digest = hashlib.sha256()
        try:
            with open(path, "rb", buffering=0) as f:
                buf = bytearray(_READ)
                view = memoryview(buf)
                while n := f.readinto(buf):
                    digest.update(view[:n])
        except OSError:
            return False
        if digest.hexdigest() != file.rsplit(".", 1)[1]:
            with contextlib.suppress(OSError):
                os.unlink(path)
            _log(self, f"{name}: spooled copy does not match its digest; deleted, fetched "
                       "again")
            return False
        try:
            os.replace(path, dest)
        except OSError:  # another file system, say (restore pitr's spool is in pg_wal)
            return False  # fetch it
        return True

    def ahead_of(self, name: str, entries: dict[str, str] | None = None) -> int:
        """How many entries of ``name``'s timeline come after it."""
        tli = name[:8]
        return sum(1 for n in (entries if entries is not None else self.entries())
                   if n[:8] == tli and n > name)

    def try_lock(self) -> int | None:
        """An fd holding the prefetcher lock, or None when a prefetcher holds it (or the
        spool is gone)."""
        try:
            fd = os.open(os.path.join(self.path, LOCK),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def state(self) -> dict:
        try:
            fd = os.open(os.path.join(self.path, STATE), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                doc = json.loads(f.read(64 * 1024))
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_state(self, doc: dict) -> None:
        """Only the lock's holder writes it (temporary file, rename)."""
        tmp = os.path.join(self.path, f"{TMP}state-{os.urandom(4).hex()}")
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, os.path.join(self.path, STATE))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _log(spool: Spool, line: str) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(spool.path, LOG), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {line}\n")


# ------------------------------------------------------------------ the foreground


def serve(spool_dir: str, name: str, dest: str, ahead: int, prefetch: Prefetch) -> bool:
    """wal-fetch's spool step, before it fetches ``name`` itself: True when ``name`` was
    served from the spool into ``dest`` (then a prefetcher starts when the spool runs
    low). False (fetch it, then call `fetched`) when the spool is absent, ``name`` is no
    segment, or the spool does not have it; while a running prefetcher is about to
    deliver it, it is waited for (at most WAIT_SECONDS)."""
    spool = Spool(spool_dir)
    if ahead <= 0 or not is_segment(name) or not spool.exists():
        return False
    began = time.monotonic()
    served = False
    while True:
        entries = spool.entries()
        if name in entries and spool.take(name, dest, entries):
            served = True
            break
        lock_fd = spool.try_lock()
        if lock_fd is not None:  # no prefetcher runs (any more)
            os.close(lock_fd)
            if name in spool.entries():  # delivered as it ended
                served = spool.take(name, dest)
            break
        st = spool.state()
        after = str(st.get("after", ""))
        if not (after[:8] == name[:8] and after < name <= str(st.get("last", "F" * 24))) \
                or time.monotonic() - began > WAIT_SECONDS:
            break  # the running prefetcher will not bring it (soon): fetch it
        time.sleep(0.005)
    if served:
        _log(spool, f"served {name}")
        _start(spool, name, dest, ahead, prefetch, served=True)
    return served


def fetched(spool_dir: str, name: str, dest: str, ahead: int, prefetch: Prefetch) -> None:
    """After wal-fetch fetched ``name`` itself into ``dest``: start a prefetcher for the
    segments after it, unless one runs (or the spool is absent, or ``name`` is no
    segment). Started only after a fetch that worked: a file the archive does not have
    (the end of recovery, PostgreSQL's probes) starts nothing."""
    spool = Spool(spool_dir)
    if ahead > 0 and is_segment(name) and spool.exists():
        _start(spool, name, dest, ahead, prefetch, served=False)


def _start(spool: Spool, name: str, dest: str, ahead: int, prefetch: Prefetch,
           served: bool) -> None:
    lock_fd = spool.try_lock()
    if lock_fd is None:
        return  # one runs
    try:
        st = spool.state()
        if served and spool.ahead_of(name) * 2 > ahead:
            return  # enough ahead
        missing = str(st.get("missing", ""))
        if missing[:8] == name[:8] and missing > name:
            return  # the archive ends there: nothing more to fetch ahead
        if st.get("error") and time.time() - float(st.get("time", 0)) < ERROR_PAUSE:
            return
        try:
            seg_size: int | None = os.stat(dest).st_size
        except OSError:
            seg_size = None
        if not (isinstance(seg_size, int) and 1 << 20 <= seg_size <= 1 << 30
                and seg_size & (seg_size - 1) == 0):
            seg_size = None
        spool.write_state({"after": name, "ahead": ahead, "time": time.time()})
        _detach(spool, lock_fd, lambda: prefetch(spool, name, ahead, seg_size))
    finally:
        os.close(lock_fd)


def _detach(spool: Spool, lock_fd: int, run: Callable[[], None]) -> None:
    """Run ``run`` in a grandchild of its own session, holding the lock (the fd is
    inherited), its output appended to the spool's log; this process goes on at once."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:  # the child: one more fork, so the prefetcher is nobody's child to reap
        os.setsid()
        if os.fork():
            os._exit(0)
        os.set_inheritable(lock_fd, False)
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(os.path.join(spool.path, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        keep = {0, 1, 2, lock_fd}
        for fd in range(3, 1024):  # nothing of PostgreSQL's stays open in it
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        run()
    except BaseException as e:  # noqa: BLE001 - a prefetcher never fails wal-fetch
        with contextlib.suppress(Exception):
            _log(spool, f"prefetcher failed: {type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)


# ------------------------------------------------------------------ the prefetcher


def prefetch(spool: Spool, after: str, ahead: int, copies, seg_size: int | None = None) -> dict:
    """Fetch the segments after ``after`` on its timeline into the spool, at most
    ``ahead`` in the spool at once, stopping at the first the archive does not have and
    where a newer timeline branches off. ``copies``: an engine.wal.Copies. Runs holding
    the spool's lock. Returns the final state (also written to state.json)."""
    from engine import wal  # the prefetcher alone pays for it

    tli = int(after[:8], 16)
    doc: dict = {"after": after, "ahead": ahead, "pid": os.getpid(), "time": time.time()}
    if seg_size is None:  # the first run: the size of the segment asked for
        try:
            seg_size = int(copies.get(after)[0]["size"])
        except wal.WalNotFound:
            doc.update(missing=after, last=after)
            spool.write_state(doc)
            return doc
    doc["seg_size"] = seg_size
    first = _segno(after, seg_size) + 1
    last = first + ahead - 1
    bound = _branch_bound(copies, tli, seg_size)
    if bound is not None:
        last = min(last, bound)
    doc["last"] = _name(tli, last, seg_size) if last >= first else after
    spool.write_state(doc)
    # what recovery passed, other timelines, and what a killed prefetcher left
    entries = spool.entries()
    for seg, file in entries.items():
        if seg[:8] != after[:8] or seg <= after:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(spool.path, file))
    with contextlib.suppress(OSError):
        for n in os.listdir(spool.path):
            if n.startswith(TMP) and not n.startswith(f"{TMP}state-"):
                os.unlink(os.path.join(spool.path, n))
    fetched = []
    for segno in range(first, last + 1):
        name = _name(tli, segno, seg_size)
        entries = spool.entries()
        if name in entries:
            continue
        if len(entries) >= ahead:
            break
        try:
            header, body, _label = copies.get(name)
        except wal.WalNotFound:
            doc["missing"] = name
            break
        except Exception as e:  # noqa: BLE001 - wal-fetch fetches it and says what failed
            doc["error"] = f"{name}: {type(e).__name__}: {' '.join(str(e).split())}"
            _log(spool, doc["error"])
            break
        tmp = os.path.join(spool.path, f"{TMP}{name}-{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        # read_object checked the body against the authenticated header's size and digest
        os.replace(tmp, os.path.join(spool.path, f"{name}.{header['sha256']}"))
        fetched.append(name)
    doc.update(fetched=len(fetched), time=time.time())
    spool.write_state(doc)
    return doc


def _branch_bound(copies, tli: int, seg_size: int) -> int | None:
    """The last segment number of timeline ``tli`` worth fetching: where the first newer
    timeline whose archived .history descends from ``tli`` branches off it (None when
    none does). Newer timelines are probed as PostgreSQL does (tli + 1, + 2, ... until a
    .history file is not archived). A .history file that cannot be read: no prefetch."""
    from engine import wal

    bound = None
    for t in range(tli + 1, tli + 257):
        try:
            _header, body, _label = copies.get(f"{t:08X}.history")
        except wal.WalNotFound:
            break
        except Exception:  # noqa: BLE001 - not sure of the timelines: fetch nothing ahead
            return -1
        for line in body.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) == tli:
                try:
                    lsn = wal.parse_lsn(parts[1])
                except Exception:  # noqa: BLE001
                    return -1
                seg = lsn // seg_size
                bound = seg if bound is None else min(bound, seg)
    return bound


def run_prefetcher(config: str, cluster: str | None, replica: str | None, spool: Spool,
                   after: str, ahead: int, seg_size: int | None) -> None:
    """The detached prefetcher's body (started by `serve` from backup_tui/cli_wal.py)."""
    from engine import wal

    try:
        copies = wal.Copies(wal.WalSettings.load(config), cluster, replica)
    except Exception as e:  # noqa: BLE001 - wal-fetch says it (it loads the same config)
        spool.write_state({"after": after, "error": str(e), "time": time.time()})
        raise
    prefetch(spool, after, ahead, copies, seg_size)


# ------------------------------------------------------------------ the end


def served(spool_dir: str | os.PathLike[str]) -> int:
    """How many segments wal-fetch served from the spool (its log says)."""
    try:
        with open(os.path.join(spool_dir, LOG), "rb") as f:
            return sum(1 for line in f if b"] served " in line)
    except OSError:
        return 0


def _signal_ok(spool: Spool, pid: object) -> bool:
    """Whether ``pid`` (read from the spool, which the server's OS user writes) may be
    signalled: a process of the spool's owner, not this one (run as root, `remove` must
    not be made to kill anybody else's process)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return False
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.lstat(spool.path).st_uid
    except OSError:
        return False


def remove(spool_dir: str | os.PathLike[str], wait: float = 10.0) -> bool:
    """Stop a running prefetcher (SIGTERM to the pid its state names, while it holds the
    lock, when it is the spool owner's process) and delete the spool folder. True when
    it is gone (or was never there)."""
    import shutil

    spool = Spool(spool_dir)
    if not spool.exists():
        return True
    fd = spool.try_lock()
    if fd is None:
        pid = spool.state().get("pid")
        deadline = time.monotonic() + wait
        signalled = False
        while fd is None and time.monotonic() < deadline and spool.exists():
            if not signalled and _signal_ok(spool, pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                signalled = True
            time.sleep(0.02)
            fd = spool.try_lock()
            if fd is None and not signalled:
                pid = spool.state().get("pid")
    try:
        shutil.rmtree(spool.path, ignore_errors=True)
    finally:
        if fd is not None:
            os.close(fd)
    return not os.path.exists(spool.path)


def main(argv: list[str]) -> int:
    """``python -m engine.walspool remove DIR``: the restore's recovery_end_command."""
    if len(argv) != 2 or argv[0] != "remove":
        sys.stderr.write("usage: python -m engine.walspool remove DIR\n")
        return 2
    count = served(argv[1])
    if remove(argv[1]):
        sys.stderr.write(f"backup-tui: WAL spool {argv[1]} removed; {count} segment(s) of "
                         "this recovery came from it\n")
        return 0
    sys.stderr.write(f"backup-tui: could not remove the WAL spool {argv[1]}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
