"""The wal-fetch spool: WAL segments fetched ahead of PostgreSQL's recovery.

Recovery runs its restore_command once per segment and waits for each, serially with
the replay; a Python process start alone costs more than renaming a file. So ``restore
pitr`` writes a restore_command in two parts (`fast_path`, then wal-fetch):

- a POSIX sh prefix: when ``%f`` is a plain segment name (24 hex digits: never a
  ``.history``, ``.partial`` or ``.backup`` file) and ``DIR/<boot id>/%f`` exists, it is
  renamed to ``%p`` (one ``mv``), its name appended to ``DIR/served``, exit 0. No Python
  starts; that is the path of almost every segment;
- otherwise ``exec`` of the Python ``wal-fetch %f %p --spool DIR --prefetch N``, which
  takes the segment from the spool when it got there meanwhile, or writes ``DIR/asked``
  (the name: the running prefetcher follows recovery to it), waits for it while the
  running prefetcher is fetching it or fetches it next (at most WAIT_SECONDS), and else
  fetches it itself exactly as without the spool (engine.wal.fetch: the exit codes that
  end or stop recovery are unchanged, and a name the archive does not have is never
  answered from the spool, which holds only what the prefetcher got from the archive);
  after that fetch it starts a prefetcher unless one runs.

The prefetcher (single: it holds ``DIR/lock``; detached, its own session) runs as the
server's OS user and keeps ``ahead`` segments in the spool: it fetches the next one as
recovery consumes them (files disappear), through the same copies in the same order
(engine.wal.Copies). What it fetches: restore pitr's plan (the names recovery will ask
for, timeline switches included, given on its stdin), else the segments of one timeline
after the one asked for, never past the point where a newer timeline (an archived
``.history``) branches off it. A name asked for that it does not plan (``DIR/asked``)
makes it start again from there. It deletes what recovery has passed (a spooled segment
older than one recovery took or asked for) and ends: at the first segment the archive
does not have (``missing`` in state.json; none starts again until recovery gets past
it), at the end of its plan or timeline, when DIR is removed, when recovery ended
(``recovery.signal``, seen once, is gone), with nothing consumed for IDLE_SECONDS (from
when recovery.signal exists), on an error of the archive (wal-fetch fetches, and says
it), or before recovery began when the process that started it is gone.
``restore pitr --start`` starts one before it writes the base backup (below), so the
first segments are there when the server asks; wal-fetch starts one after a segment it
had to fetch itself (a killed prefetcher, a timeline switch, the archive grown).

Files in DIR: ``<boot id>/<segment>``: complete segments, renamed there only after the
archive's authenticated header and the body's SHA-256 and size were checked
(engine.wal.read_object) and the bytes written whole to ``.tmp-*`` in DIR (never served;
the next prefetcher deletes them); ``lock`` (flock of the running prefetcher),
``state.json`` (what it does and how it ended, its counts), ``prefetch.log`` (its
errors), ``asked`` (the last name wal-fetch had to look for), ``served`` (a line per
segment served from the spool, by the shell or by wal-fetch).

No hashing when serving: the digest was checked when the bytes came from the archive,
and a re-hash at serve time reads the same page cache, so it protects only against a
process that writes into DIR, which is 0700, the server's OS user's, inside pg_wal: that
process could as well write the segment into pg_wal or change the data files. What the
re-hash also caught, a spooled file whose bytes never reached the disk before a crash
(they are not fsynced), the boot id does: after a reboot the shell looks in the new
boot's folder, and the prefetcher deletes the old ones. PostgreSQL checks each record's
CRC besides, and a restored file of the wrong size stops recovery.

Where: ``restore pitr`` makes DIR ``<pgdata>/pg_wal/backup-tui-spool`` (SPOOL_DIR), 0700,
owned by the server's OS user, who runs wal-fetch: that user can write it whoever runs
the restore, each restored data directory has its own, the rename into ``pg_wal/`` is on
one file system even when pg_wal is a link to another volume, and pg_basebackup copies
nothing of pg_wal but archive_status, so a spool left behind never enters a base backup.
PostgreSQL ignores a folder of that name in pg_wal. While the base backup is written
(the data directory must be empty then) the folder is ``.<pgdata name>.backup-tui-spool-*``
beside the data directory and is renamed into pg_wal after it; the prefetcher works
inside the folder (its current directory), so the rename does not disturb it. `remove`
(the restore's recovery_end_command, and ``restore pitr`` after promotion or a failure)
stops a running prefetcher and deletes DIR.
"""

from __future__ import annotations

import contextlib
import fcntl
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
IDLE_SECONDS = 60.0  # a prefetcher ends when recovery took nothing for this long
POLL = 0.05  # how often a prefetcher with a full spool looks whether recovery took one
LOCK = "lock"
STATE = "state.json"
LOG = "prefetch.log"
SERVED = "served"
ASKED = "asked"
TMP = ".tmp-"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
NO_BOOT_ID = "no-boot-id"
ERROR_PAUSE = 10.0  # no new prefetcher this long after one failed
_HEX = "0123456789ABCDEF"  # (no re: the serving path imports as little as it can)


def is_segment(name: str) -> bool:
    """A WAL segment name (only segments are spooled: .history, .partial and .backup
    files are always fetched)."""
    return len(name) == 24 and not name.strip(_HEX)


def _segno(name: str, seg_size: int) -> int:
    return int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)


def _name(tli: int, segno: int, seg_size: int) -> str:
    per = 0x100000000 // seg_size
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def boot_id() -> str:
    """This boot's id, the name of the folder of servable segments (the shell path reads
    the same file)."""
    try:
        with open(BOOT_ID) as f:
            b = f.read(100).strip()
    except OSError:
        return NO_BOOT_ID
    return b if b and len(b) <= 64 and not b.strip("0123456789abcdef-") else NO_BOOT_ID


def fast_path(spool: str, mv: str | None = None) -> str:
    """The sh prefix of restore_command (``%f``, ``%p`` for PostgreSQL to fill in, ``%``
    of the path doubled): serve ``%f`` from the spool with one rename and exit 0, else go
    on to what follows (``exec`` of wal-fetch). Only a plain segment name is looked for."""
    import shlex
    import shutil

    d = shlex.quote(spool).replace("%", "%%")
    mv = shlex.quote(mv or shutil.which("mv") or "mv").replace("%", "%%")
    return ("f=%f; case $f in *[!0-9A-F]*) ;; " + "?" * 24 + ") "
            f"read -r b 2>/dev/null <{BOOT_ID} && "
            f'{mv} -f -- {d}/"$b/$f" %p 2>/dev/null && '
            f'{{ echo "$f" 2>/dev/null >>{d}/{SERVED}; exit 0; }};; esac; ')


class Spool:
    """One spool folder (see the module text)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.ready = os.path.join(self.path, boot_id())

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def gone(self) -> bool:
        """The folder was removed (the prefetcher's is its current directory, ".", which
        a rename leaves valid)."""
        try:
            return os.stat(self.path).st_nlink == 0 if self.path == "." \
                else not os.path.isdir(self.path)
        except OSError:
            return True

    def entries(self) -> set[str]:
        """The names of the complete, servable segments."""
        try:
            return {n for n in os.listdir(self.ready) if is_segment(n)}
        except OSError:
            return set()

    def take(self, name: str, dest: str) -> bool:
        """Move the spooled ``name`` to ``dest``: True when it was there."""
        try:
            os.replace(os.path.join(self.ready, name), dest)
        except OSError:  # not there (or another file system: fetch it)
            return False
        self.note_served(name)
        return True

    def note_served(self, name: str) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(self.path, SERVED),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, f"{name}\n".encode())
            finally:
                os.close(fd)

    def ask(self, name: str) -> None:
        """Tell the running prefetcher that recovery asked for ``name`` (not spooled)."""
        tmp = os.path.join(self.path, f"{TMP}asked-{os.urandom(4).hex()}")
        try:
            with open(tmp, "w") as f:
                f.write(name)
            os.replace(tmp, os.path.join(self.path, ASKED))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def asked(self) -> tuple[str, float] | None:
        """(the name last asked for, its time stamp)."""
        try:
            fd = os.open(os.path.join(self.path, ASKED), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                stamp = os.fstat(f.fileno()).st_mtime_ns
                name = f.read(64).decode("ascii", "replace")
        except OSError:
            return None
        return (name, stamp) if is_segment(name) else None

    def ahead_of(self, name: str, entries: set[str] | None = None) -> int:
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
    """wal-fetch's spool step (the shell path did not find ``name``), before it fetches
    ``name`` itself: True when ``name`` was served from the spool into ``dest``. False
    (fetch it, then call `fetched`) when the spool is absent, ``name`` is no segment, or
    the spool does not have it; while the running prefetcher fetches it or fetches it
    next, it is waited for (at most WAIT_SECONDS)."""
    spool = Spool(spool_dir)
    if ahead <= 0 or not is_segment(name) or not spool.exists():
        return False
    if spool.take(name, dest):
        _start(spool, name, dest, ahead, prefetch, served=True)
        return True
    spool.ask(name)
    began = time.monotonic()
    while True:
        if spool.take(name, dest):
            return True
        lock_fd = spool.try_lock()
        if lock_fd is not None:  # no prefetcher runs (any more)
            os.close(lock_fd)
            return spool.take(name, dest)  # delivered as it ended
        st = spool.state()
        if name not in (st.get("fetching"), st.get("next")) \
                or time.monotonic() - began > WAIT_SECONDS:
            return False  # the running prefetcher will not bring it (soon): fetch it
        time.sleep(0.005)


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


class _Plan:
    """The segments a prefetcher fetches, in order: a list of names (restore pitr's
    plan), or timeline ``tli``'s segments from number ``first`` to ``last`` (None: no
    end)."""

    def __init__(self, names: list[str] | None = None, tli: int = 0, first: int = 0,
                 last: int | None = None, seg_size: int = 0):
        self.names = names
        self.index_of = {n: i for i, n in enumerate(names)} if names is not None else {}
        self.tli, self.first, self.last, self.seg_size = tli, first, last, seg_size

    def at(self, i: int) -> str | None:
        if self.names is not None:
            return self.names[i] if 0 <= i < len(self.names) else None
        segno = self.first + i
        return None if self.last is not None and segno > self.last \
            else _name(self.tli, segno, self.seg_size)

    def index(self, name: str) -> int | None:
        if self.names is not None:
            return self.index_of.get(name)
        if int(name[:8], 16) != self.tli:
            return None
        i = _segno(name, self.seg_size) - self.first
        return i if i >= 0 and (self.last is None or i + self.first <= self.last) else None

    def end(self) -> str | None:
        if self.names is not None:
            return self.names[-1] if self.names else None
        return None if self.last is None else _name(self.tli, self.last, self.seg_size)


def _timeline_plan(copies, after: str, seg_size: int) -> _Plan:
    """The segments after ``after`` on its timeline, to where a newer one branches off."""
    tli = int(after[:8], 16)
    first = _segno(after, seg_size) + 1
    bound = _branch_bound(copies, tli, seg_size)
    return _Plan(tli=tli, first=first, last=bound, seg_size=seg_size)


def prefetch(spool: Spool, after: str, ahead: int, copies, seg_size: int | None = None,
             names: list[str] | None = None, watch: str | None = None,
             parent: int | None = None, idle: float = IDLE_SECONDS) -> dict:
    """Keep ``ahead`` segments in the spool, fetching the next as recovery takes them (see
    the module text), until one of the ends there. ``names``: the segments to fetch, in
    order (else those after ``after`` on its timeline); ``watch``: the data directory's
    recovery.signal; ``parent``: the process that started it (before recovery began, the
    prefetcher ends with it). ``copies``: an engine.wal.Copies. Runs holding the spool's
    lock. Returns the final state (also written to state.json)."""
    from engine import wal  # the prefetcher alone pays for it

    doc: dict = {"after": after, "ahead": ahead, "pid": os.getpid(), "time": time.time(),
                 "fetched": 0, "consumed": 0}
    if seg_size is None:  # the first run: the size of the segment asked for
        try:
            seg_size = int(copies.get(after)[0]["size"])
        except wal.WalNotFound:
            doc.update(missing=after, ended="missing")
            spool.write_state(doc)
            return doc
    doc["seg_size"] = seg_size
    try:
        plan = _Plan(names=list(names)) if names is not None \
            else _timeline_plan(copies, after, seg_size)
    except Exception as e:  # noqa: BLE001 - not sure of the timelines: fetch nothing ahead
        doc.update(error=f"{type(e).__name__}: {e}", ended="error")
        spool.write_state(doc)
        return doc
    pos = 0
    os.makedirs(spool.ready, mode=0o700, exist_ok=True)
    _tidy(spool)
    mine: set[str] = set()  # what it put in the spool and recovery did not take yet
    seen_asked = spool.asked()
    now = time.monotonic()
    idle_from = now
    watching = watch is not None
    began = watch is None  # recovery began (idle time counts from then)
    waiting = None

    def drop(plan: _Plan, i: int) -> None:  # all but the plan's entries from position i on
        for n in spool.entries():
            if not _at_or_after(plan, n, i):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(spool.ready, n))
                mine.discard(n)

    def end(why: str, **more) -> dict:
        doc.update(more, ended=why, fetching=None, next=None, time=time.time())
        doc.pop("waiting", None)
        spool.write_state(doc)
        return doc

    drop(plan, 0)  # what recovery passed, other timelines
    doc.update(last=plan.end(), next=plan.at(pos))
    spool.write_state(doc)
    while True:
        now = time.monotonic()
        if spool.gone():
            return end("the spool was removed")
        if watching:
            if os.path.exists(watch):
                if not began:
                    began, idle_from = True, now
            elif began:
                return end("recovery ended")
            elif parent is not None and not _alive(parent):
                return end("the restore that started it is gone")
        asked = spool.asked()
        if asked is not None and asked != seen_asked:  # recovery asked for one not spooled
            seen_asked, name = asked, asked[0]
            idle_from = now
            j = plan.index(name)
            if j is None and plan.names is not None and plan.names and \
                    _segno(name, seg_size) <= _segno(plan.names[-1], seg_size):
                pass  # off restore pitr's plan, within it: wal-fetch fetches that one
            elif j is None:  # not in the plan: start again after it
                try:
                    plan = _timeline_plan(copies, name, seg_size)
                except Exception as e:  # noqa: BLE001
                    return end("error", error=f"{type(e).__name__}: {e}")
                pos = 0
                doc.update(after=name, last=plan.end())
                drop(plan, 0)
            else:
                if j > pos:  # recovery is past the prefetcher: wal-fetch fetches it
                    pos = j + 1
                drop(plan, j)
        entries = spool.entries()
        taken = mine - entries
        if taken:  # recovery took these; what it passed on the way goes
            doc["consumed"] += len(taken)
            mine -= taken
            idle_from = now
            k = max((plan.index(n) for n in taken if plan.index(n) is not None), default=None)
            if k is not None:
                drop(plan, k + 1)
                entries = spool.entries()
        if began and now - idle_from > idle:
            return end("idle")
        name = plan.at(pos)
        if name is None:
            return end("end of plan")
        if name in entries:
            mine.add(name)
            pos += 1
            continue
        if len(entries) >= ahead:
            if waiting != name:
                waiting = name
                doc.update(waiting=True, fetching=None, next=name, time=time.time())
                spool.write_state(doc)
            time.sleep(POLL)
            continue
        waiting = None
        doc.update(fetching=name, next=plan.at(pos + 1), time=time.time())
        doc.pop("waiting", None)
        spool.write_state(doc)
        try:
            header, body, _label = copies.get(name)
        except wal.WalNotFound:
            return end("missing", missing=name)
        except Exception as e:  # noqa: BLE001 - wal-fetch fetches it and says what failed
            err = f"{name}: {type(e).__name__}: {' '.join(str(e).split())}"
            _log(spool, err)
            return end("error", error=err)
        # read_object checked the body against the authenticated header's size and digest
        tmp = os.path.join(spool.path, f"{TMP}{name}-{os.urandom(4).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(spool.ready, name))  # complete: servable
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if spool.gone():
                return end("the spool was removed")
            return end("error", error=f"{name}: cannot write it into the spool: {e}")
        finally:
            body = view = None  # 16 MiB not held while the spool is full
        mine.add(name)
        doc["fetched"] += 1
        pos += 1


def _at_or_after(plan: _Plan, name: str, i: int) -> bool:
    """Whether ``name`` is in the plan at position ``i`` or later."""
    j = plan.index(name)
    return j is not None and j >= i


def _tidy(spool: Spool) -> None:
    """What a killed prefetcher left (``.tmp-*``) and the folders of other boots."""
    import shutil

    with contextlib.suppress(OSError):
        for n in os.listdir(spool.path):
            p = os.path.join(spool.path, n)
            if n.startswith(TMP) and not n.startswith((f"{TMP}state-", f"{TMP}asked-")):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            elif p != spool.ready and os.path.isdir(p) and not os.path.islink(p) \
                    and len(n) <= 64 and not n.strip("0123456789abcdef-"):
                shutil.rmtree(p, ignore_errors=True)  # a segment written before a reboot


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's: alive
    return True


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
                   after: str, ahead: int, seg_size: int | None,
                   names: list[str] | None = None, pgdata: str | None = None,
                   parent: int | None = None) -> None:
    """The detached prefetcher's body (started by `serve` from backup_tui/cli_wal.py, in
    the server's data directory, or by `main`). It works inside the spool folder."""
    from engine import wal

    watch = os.path.join(pgdata, "recovery.signal") if pgdata else None
    if watch is None and os.path.exists("recovery.signal"):  # PostgreSQL's cwd: pgdata
        watch = os.path.abspath("recovery.signal")
    try:
        copies = wal.Copies(wal.WalSettings.load(config), cluster, replica)
    except Exception as e:  # noqa: BLE001 - wal-fetch says it (it loads the same config)
        spool.write_state({"after": after, "error": str(e), "time": time.time(),
                           "ended": "error"})
        raise
    os.chdir(spool.path)
    prefetch(Spool("."), after, ahead, copies, seg_size, names=names, watch=watch,
             parent=parent)


def start(spool_dir: str, ahead: int, config: str, cluster: str | None,
          replica: str | None, names: list[str], seg_size: int, pgdata: str | None,
          parent: int | None) -> bool:
    """Start a detached prefetcher of ``names`` in order (restore pitr's plan) unless one
    runs; False when one runs. Returns when it runs."""
    spool = Spool(spool_dir)
    fd = spool.try_lock()
    if fd is None:
        return False
    try:
        after = names[0] if names else ""
        spool.write_state({"after": "", "next": after, "ahead": ahead, "time": time.time()})
        _detach(spool, fd, lambda: run_prefetcher(config, cluster, replica, spool, after,
                                                  ahead, seg_size, names, pgdata, parent))
    finally:
        os.close(fd)
    return True


# ------------------------------------------------------------------ the end


def served(spool_dir: str | os.PathLike[str]) -> int:
    """How many segments came from the spool (its ``served`` file)."""
    try:
        with open(os.path.join(spool_dir, SERVED), "rb") as f:
            return sum(1 for line in f if line.strip())
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


USAGE = ("usage: python -m engine.walspool remove DIR\n"
         "       python -m engine.walspool prefetch DIR --config PATH --ahead N --seg-size N "
         "[--cluster NAME] [--replica NAME] [--pgdata DIR] [--parent PID] "
         "(segment names on stdin)\n")


def main(argv: list[str]) -> int:
    """``python -m engine.walspool remove DIR``: the restore's recovery_end_command;
    ``... prefetch DIR ...``: restore pitr starts the prefetcher of its plan (as the
    server's OS user) before the server starts."""
    if len(argv) == 2 and argv[0] == "remove":
        count = served(argv[1])
        if remove(argv[1]):
            sys.stderr.write(f"backup-tui: WAL spool {argv[1]} removed; {count} segment(s) "
                             "of this recovery came from it\n")
            return 0
        sys.stderr.write(f"backup-tui: could not remove the WAL spool {argv[1]}\n")
        return 1
    if len(argv) >= 2 and argv[0] == "prefetch" and len(argv) % 2 == 0:
        opts = dict(zip(argv[2::2], argv[3::2], strict=True))
        known = {"--config", "--ahead", "--seg-size", "--cluster", "--replica", "--pgdata",
                 "--parent"}
        try:
            if set(opts) - known:
                raise ValueError
            ahead, seg_size = int(opts["--ahead"]), int(opts["--seg-size"])
            parent = int(opts["--parent"]) if "--parent" in opts else None
            config = opts["--config"]
        except (KeyError, ValueError):
            sys.stderr.write(USAGE)
            return 2
        names = [n for n in sys.stdin.read().split() if is_segment(n)]
        if not names or not 0 < ahead <= MAX_AHEAD:
            return 0
        start(argv[1], ahead, config, opts.get("--cluster"), opts.get("--replica"), names,
              seg_size, opts.get("--pgdata"), parent)
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
