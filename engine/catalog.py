"""The catalog: SQLite (WAL mode) in the state directory, in two stores.

``catalog.sqlite`` holds jobs with their latest progress (so another process,
the console or ``status``, can watch a running job), verified times, replica
and schedule state. It is a cache of what the repository says plus local
history: losing it loses no backup (docs/ARCHITECTURE.md, section 5).

``admin.sqlite`` holds the append-only audit log and the "run now" requests.
Only root and the admin group may write either file (docs/SECURITY.md, "Local
users"): both are created mode 0664 with the admin group as their group when
it exists (else 0644), in a state directory created 0755 (02775 with the admin
group). Other users open them read-only: their read-only commands (list,
show, status, verify) work and skip their own bookkeeping.

Every write goes through one error path: a full disk (ENOSPC, SQLITE_FULL)
says "no space left on device in <state dir>"; a store that cannot be written
raises ``StateDirError``. ``lenient()`` gives a view whose bookkeeping writes
skip such errors (with one warning), for read-only commands. Text is stored
with undecodable bytes (file names that are not UTF-8) escaped as ``\\xNN``.
Secrets are never written here.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine import security
from engine.errors import EngineError
from engine.events import Event

log = logging.getLogger("backup_tui.catalog")

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    phase TEXT DEFAULT '',
    bytes_done INTEGER DEFAULT 0,
    bytes_total INTEGER DEFAULT 0,
    items_done INTEGER DEFAULT 0,
    items_total INTEGER DEFAULT 0,
    message TEXT DEFAULT '',
    error TEXT DEFAULT '',
    result TEXT DEFAULT '',
    pid INTEGER,
    updated REAL,
    host TEXT,
    pid_start TEXT
);
CREATE INDEX IF NOT EXISTS jobs_started ON jobs(started);
CREATE TABLE IF NOT EXISTS api_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    source TEXT,
    state TEXT NOT NULL,
    requested REAL NOT NULL,
    started REAL,
    ended REAL,
    progress TEXT DEFAULT '{}',
    error TEXT,
    result TEXT,
    requested_by TEXT DEFAULT '',
    jobs TEXT DEFAULT '[]',
    pid INTEGER
);
CREATE INDEX IF NOT EXISTS api_jobs_requested ON api_jobs(requested);
CREATE TABLE IF NOT EXISTS verified (
    snapshot TEXT PRIMARY KEY,
    time REAL NOT NULL,
    read_data INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replica_snapshots (
    replica TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (replica, snapshot)
);
CREATE TABLE IF NOT EXISTS replica_state (
    replica TEXT PRIMARY KEY,
    last_success REAL,
    last_error TEXT DEFAULT '',
    last_error_time REAL,
    objects_behind INTEGER DEFAULT 0,
    bytes_behind INTEGER DEFAULT 0,
    checked REAL
);
CREATE TABLE IF NOT EXISTS schedule_state (
    kind TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    last_run REAL,
    last_result TEXT DEFAULT '',
    last_error TEXT DEFAULT '',
    last_missed REAL
);
CREATE TABLE IF NOT EXISTS seen_snapshots (
    repo TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    kind TEXT,
    source TEXT,
    time TEXT,
    seen REAL NOT NULL,
    removed REAL,
    PRIMARY KEY (repo, snapshot)
);
"""

ADMIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    uid INTEGER NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    snapshots TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT DEFAULT ''
);
CREATE TABLE IF NOT EXISTS run_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    requested REAL NOT NULL,
    user TEXT NOT NULL,
    taken REAL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

SCHEMAS = {"catalog": CATALOG_SCHEMA, "admin": ADMIN_SCHEMA}
PROBE = {"catalog": "jobs", "admin": "audit"}  # a table each store has
PROGRESS_INTERVAL = 0.25
FULL_BELOW = 256 * 1024  # an I/O error with less free space than this is a full disk

# The methods that write; lenient() skips their StateDirError.
WRITES = frozenset({
    "start_job", "progress", "end_job", "mark_verified", "replica_done", "replica_failed",
    "replica_lag", "set_paused", "schedule_ran", "request_run", "take_requests",
    "mark_interrupted", "audit", "mark_seen", "record_drill", "wal_shipped",
    "wal_ship_failed", "cache_snapshot_rows",
})


class StateDirError(EngineError):
    """The state directory cannot be written: full, read-only, or not ours to write."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet  # expected (a non-admin's read-only run): skipped without a word


def safe_text(text: Any) -> str:
    """Text as SQLite (UTF-8) can store it: bytes that were not UTF-8 (surrogate escapes
    in file names) become ``\\xNN``, any other lone surrogate ``\\udNNN``."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def process_start(pid: int) -> str:
    """When the process started (clock ticks since boot), '' when unknown: a pid that was
    reused by a newer process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or process_start(pid) in ("", start)


def _sqlite_code(e: BaseException) -> int:
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


class Catalog:
    def __init__(self, state_dir: str | os.PathLike[str], admin_group: str = "backup-admins"):
        self.dir = Path(state_dir)
        self.path = self.dir / "catalog.sqlite"
        self.admin_path = self.dir / "admin.sqlite"
        self.host = socket.gethostname()
        self._group = _group_id(admin_group)
        self._local = threading.local()
        self._last_write: dict[str, float] = {}
        self._warned = False
        self.read_only = ""  # why this process cannot write the stores ('' when it can)
        self._make_dir()
        self._open()
        self.interrupted_on_open = 0  # jobs of dead processes this open marked interrupted
        with contextlib.suppress(StateDirError):
            self.interrupted_on_open = self.mark_interrupted()
            if self.interrupted_on_open:
                log.info("%d job(s) left running by a process that ended were marked "
                         "interrupted", self.interrupted_on_open)

    # ------------------------------------------------------------- opening
    def _make_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            if not self.dir.is_dir():
                raise EngineError(
                    f"state directory {self.dir}: exists and is not a directory") from None
            return
        except PermissionError:
            if os.path.lexists(self.dir):
                return
            self.read_only = (f"state directory {self.dir} does not exist and "
                              f"{_user()} may not create it")
            return
        except OSError as e:
            if e.errno == errno.ENOSPC:  # reads go on, from empty stores; writes say why
                self.read_only = self._full_message()
                return
            raise EngineError(f"state directory {self.dir}: cannot create it: "
                              f"{e.strerror}") from None
        # Ours: readable by everyone (read-only commands), written by root and admins.
        self._set_mode(self.dir, 0o2775 if self._group is not None else 0o755)

    def _open(self) -> None:
        if not self.read_only and not self._can_write():
            self.read_only = (
                f"the file system of {self.dir} is mounted read-only" if _read_only_fs(self.dir)
                else f"{_user()} may not write {self.dir} or its stores (root and the admin "
                "group write them; docs/SECURITY.md, 'Local users')")
        self._warn_if_open_to_all()
        for store in SCHEMAS:
            try:
                self._prepare(store)
            except OSError as e:  # creating the store file
                if e.errno == errno.ENOSPC:
                    self.read_only = self._full_message()
                    continue
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    self.read_only = f"{_user()} may not write {self._path(store)}"
                    continue
                raise EngineError(f"{self._path(store)}: cannot create it: "
                                  f"{e.strerror}") from None
            except sqlite3.Error as e:
                kind = self._classify(e)
                if kind == "full":
                    self.read_only = self._full_message()
                    continue
                if kind == "readonly":
                    self.read_only = f"{_user()} may not write {self._path(store)}"
                    continue
                raise EngineError(
                    f"catalog {self._path(store)}: cannot open it: {e} (it is a cache of "
                    "local history: move it aside to start a new one)"
                    if store == "catalog" else
                    f"audit store {self._path(store)}: cannot open it: {e} (move it aside "
                    "to start a new audit log; keep the old file as the record)"
                ) from None

    def _warn_if_open_to_all(self) -> None:
        """A state directory or store any local user may write lets them forge the audit
        log and run requests: said, not refused (the admin chose the modes)."""
        for path in (self.dir, self.admin_path, self.path):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_mode & stat.S_IWOTH:
                log.warning("%s is writable by every local user (mode %o): anyone can forge "
                            "the audit log and run requests; chmod o-w it (docs/SECURITY.md, "
                            "'Local users')", path, stat.S_IMODE(st.st_mode))
                return

    def _can_write(self) -> bool:
        if not os.access(self.dir, os.W_OK | os.X_OK):
            return False
        names = ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm",
                 "admin.sqlite", "admin.sqlite-wal", "admin.sqlite-shm")
        return all(os.access(self.dir / n, os.W_OK) for n in names
                   if os.path.lexists(self.dir / n))

    def _prepare(self, store: str) -> None:
        path = self._path(store)
        if self.read_only:
            return
        if not path.exists():
            self._create(path)
        with self._conn(store) as db:
            db.executescript(SCHEMAS[store])
            if store == "catalog":
                cols = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
                for col in ("host", "pid_start"):
                    if col not in cols:
                        db.execute(f"ALTER TABLE jobs ADD COLUMN {col} TEXT")
        if store == "admin":
            try:
                self._migrate_admin()
            except sqlite3.OperationalError:  # another process is moving them: its turn
                pass

    def _migrate_admin(self) -> None:
        """An older catalog kept the audit log and run requests itself: move them to the
        admin store (again at the next open if it was interrupted: rows keep their ids)."""
        with self._conn("catalog") as cat:
            tables = {r[0] for r in cat.execute("SELECT name FROM sqlite_master "
                                                "WHERE type='table'")}
            if "audit" not in tables and "run_requests" not in tables:
                return
            audit = ([tuple(r) for r in cat.execute(
                "SELECT seq, time, user, uid, action, target, snapshots, outcome, detail "
                "FROM audit ORDER BY seq")] if "audit" in tables else [])
            runs = ([tuple(r) for r in cat.execute(
                "SELECT id, kind, requested, user, taken FROM run_requests")]
                if "run_requests" in tables else [])
        with self._conn("admin") as adm:
            adm.execute("BEGIN IMMEDIATE")
            try:
                adm.executemany("INSERT OR IGNORE INTO audit (seq, time, user, uid, action, "
                                "target, snapshots, outcome, detail) VALUES "
                                "(?,?,?,?,?,?,?,?,?)", audit)
                adm.executemany("INSERT OR IGNORE INTO run_requests (id, kind, requested, "
                                "user, taken) VALUES (?,?,?,?,?)", runs)
                adm.execute("COMMIT")
            except BaseException:
                if adm.in_transaction:
                    adm.execute("ROLLBACK")
                raise
        with self._conn("catalog") as cat:
            cat.executescript("DROP TRIGGER IF EXISTS audit_no_update; "
                              "DROP TRIGGER IF EXISTS audit_no_delete; "
                              "DROP TABLE IF EXISTS audit; DROP TABLE IF EXISTS run_requests;")

    def _create(self, path: Path) -> None:
        """A new store file with its mode and group from the start, before SQLite makes its
        -wal and -shm files (they take the database file's mode and owner)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # another process made it just now
            return
        try:
            if self._group is not None:
                with contextlib.suppress(OSError):
                    os.fchown(fd, -1, self._group)
            os.fchmod(fd, 0o664 if self._group is not None else 0o644)
        finally:
            os.close(fd)

    def _set_mode(self, path: Path, mode: int) -> None:
        """Mode and group of a file or folder this process just created (never another's)."""
        try:
            if self._group is not None:
                os.chown(path, -1, self._group)
            os.chmod(path, mode)
        except OSError as e:
            log.warning("cannot set mode %o on %s: %s", mode, path, e.strerror)

    def _path(self, store: str) -> Path:
        return self.path if store == "catalog" else self.admin_path

    @contextlib.contextmanager
    def _conn(self, store: str = "catalog") -> Iterator[sqlite3.Connection]:
        if self.read_only:
            db = self._read_only_conn(store)
            try:
                yield db
            finally:
                db.close()
            return
        conns = getattr(self._local, "dbs", None)
        if conns is None:
            conns = self._local.dbs = {}
        db = conns.get(store)
        if db is None:
            db = sqlite3.connect(self._path(store), timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            conns[store] = db
        yield db

    def _read_only_conn(self, store: str) -> sqlite3.Connection:
        """A store opened read-only; an empty one when it does not exist. A WAL database
        whose -shm file is gone (no writer has it open) cannot be opened read-only by
        SQLite: then it is read as immutable (it is not being written at that moment)."""
        path = self._path(store)
        if path.exists():
            for query in ("mode=ro", "mode=ro&immutable=1"):
                db = sqlite3.connect(f"file:{path}?{query}", uri=True, timeout=30,
                                     isolation_level=None)
                db.row_factory = sqlite3.Row
                try:  # readable, and made by us (a file begun on a full disk may be empty)
                    db.execute(f"SELECT 1 FROM {PROBE[store]} LIMIT 1").fetchall()
                    return db
                except sqlite3.Error:
                    db.close()
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        db.executescript(SCHEMAS[store])
        return db

    # ------------------------------------------------------------- writing
    def _write(self, store: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run one write; every failure becomes a named, clean error."""
        if self.read_only:
            if self.read_only.startswith("no space"):
                raise StateDirError(self.read_only)
            raise StateDirError(f"cannot write {self._path(store)}: {self.read_only}",
                                quiet=True)
        try:
            with self._conn(store) as db:
                return fn(db)
        except sqlite3.Error as e:
            kind = self._classify(e)
            if kind == "full":
                raise StateDirError(self._full_message()) from None
            if kind == "readonly":
                raise StateDirError(f"cannot write {self._path(store)}: {e}") from None
            if kind == "corrupt":
                raise EngineError(
                    f"catalog {self._path(store)}: damaged: {e} (move it aside to start a new "
                    "one; 'backup-tui catalog rebuild' refills it from the repository)"
                ) from None
            raise EngineError(f"catalog {self._path(store)}: {e}") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StateDirError(self._full_message()) from None
            raise

    def _classify(self, e: BaseException) -> str:
        code = _sqlite_code(e)
        text = str(e).lower()
        if code == 13 or "database or disk is full" in text:  # SQLITE_FULL
            return "full"
        if code in (8, 3) or "readonly" in text or "read-only" in text:  # READONLY, PERM
            return "readonly"
        if code in (10, 14):  # SQLITE_IOERR, SQLITE_CANTOPEN: full disk or no permission
            if self._free() < FULL_BELOW:
                return "full"
            if not self._can_write():
                return "readonly"
        if code in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
            return "corrupt"
        return "other"

    def _free(self) -> int:
        try:
            return shutil.disk_usage(self.dir).free
        except OSError:
            return 1 << 62

    def _full_message(self) -> str:
        return (f"no space left on device in {self.dir} (the state directory): the catalog "
                "cannot record this; nothing is corrupt, free some space there")

    def lenient(self) -> Catalog:
        """This catalog for a read-only command: writes that cannot be done are skipped
        (one warning when the disk is full, none for a user who may not write)."""
        return _Lenient(self)  # type: ignore[return-value]

    def warn_skipped(self, e: StateDirError) -> None:
        if not e.quiet and not self._warned:
            self._warned = True
            log.warning("%s; carrying on without recording", e)

    # ------------------------------------------------------------------- jobs
    def start_job(self, job_id: str, kind: str, target: str) -> None:
        now = time.time()
        pid = os.getpid()
        self._write("catalog", lambda db: db.execute(
            "INSERT INTO jobs (id, kind, target, state, started, pid, updated, host, pid_start)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
            (job_id, kind, safe_text(target), now, pid, now, self.host, process_start(pid)),
        ))

    def progress(self, event: Event) -> None:
        now = time.monotonic()
        if not event.final and now - self._last_write.get(event.job_id, 0) < PROGRESS_INTERVAL:
            return
        self._last_write[event.job_id] = now
        self._write("catalog", lambda db: db.execute(
            "UPDATE jobs SET phase=?, bytes_done=?, bytes_total=?, items_done=?, "
            "items_total=?, message=?, updated=? WHERE id=?",
            (safe_text(event.phase), event.bytes_done, event.bytes_total, event.items_done,
             event.items_total, safe_text(event.message)[:500], time.time(), event.job_id),
        ))

    def end_job(self, job_id: str, state: str, error: str = "", result: dict | None = None) -> None:
        self._last_write.pop(job_id, None)
        self._write("catalog", lambda db: db.execute(
            "UPDATE jobs SET state=?, ended=?, error=?, result=?, updated=? WHERE id=?",
            (state, time.time(), safe_text(error)[:2000], json.dumps(result or {}), time.time(),
             job_id),
        ))

    def jobs(self, limit: int = 50) -> list[dict]:
        with self._conn() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY started DESC LIMIT ?", (limit,))
            return [self._seen_as(dict(r)) for r in rows]

    def job(self, job_id: str) -> dict | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return self._seen_as(dict(row)) if row else None

    # --------------------------------------------------------------- API jobs
    # What the daemon's HTTP API started (engine/api/jobs.py): one row per request, with
    # the catalog jobs it ran, so a client polling across a daemon restart finds it.
    _API_COLUMNS = ("id", "kind", "source", "state", "requested", "started", "ended",
                    "progress", "error", "result", "requested_by", "jobs", "pid")
    _API_JSON = ("progress", "result", "jobs")

    def save_api_job(self, job: dict) -> None:
        values = [json.dumps(job.get(c)) if c in self._API_JSON else job.get(c)
                  for c in self._API_COLUMNS]
        marks = ", ".join("?" for _ in self._API_COLUMNS)
        self._write("catalog", lambda db: db.execute(
            f"INSERT OR REPLACE INTO api_jobs ({', '.join(self._API_COLUMNS)}) "
            f"VALUES ({marks})", values))

    def _api_row(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        for c in self._API_JSON:
            d[c] = json.loads(d[c]) if d[c] else None
        return d

    def api_job(self, job_id: str) -> dict | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM api_jobs WHERE id=?", (job_id,)).fetchone()
            return self._api_row(row) if row else None

    def api_jobs(self, state: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[list[dict], int]:
        """The newest first, and how many there are in all (of ``state`` when given)."""
        where, args = ("WHERE state=?", [state]) if state else ("", [])
        with self._conn() as db:
            total = db.execute(f"SELECT COUNT(*) FROM api_jobs {where}", args).fetchone()[0]
            rows = db.execute(f"SELECT * FROM api_jobs {where} ORDER BY requested DESC "
                              "LIMIT ? OFFSET ?", [*args, limit, offset])
            return [self._api_row(r) for r in rows], total

    def end_orphan_api_jobs(self, error: str) -> int:
        """API jobs left queued or running by a daemon that stopped become failed."""
        def mark(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE api_jobs SET state='failed', error=?, ended=? "
                              "WHERE state IN ('queued', 'running')",
                              (error, time.time())).rowcount
        return self._write("catalog", mark) or 0

    def _seen_as(self, job: dict) -> dict:
        """A reader who may not write the catalog still sees a dead process's job as
        interrupted (an admin's next open records it)."""
        if self.read_only and job.get("state") == "running" and self._dead(job):
            job.update(state="interrupted", error="the process running it ended")
        return job

    def _dead(self, job: dict) -> bool:
        """The job's process, on this host, is gone (or its pid now names another)."""
        return ((job.get("host") or self.host) == self.host
                and (not job.get("pid")
                     or not process_alive(int(job["pid"]), job.get("pid_start"))))

    def mark_interrupted(self) -> int:
        """Jobs left 'running' by a process of this host that is gone (killed, or its pid
        reused by another process) become 'interrupted'. Run by whoever opens the catalog;
        jobs of other hosts are theirs to judge."""
        with self._conn() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM jobs WHERE state='running'")]
        gone = [r["id"] for r in rows if self._dead(r)]
        if not gone:
            return 0

        def mark(db: sqlite3.Connection) -> None:
            for jid in gone:
                db.execute("UPDATE jobs SET state='interrupted', ended=?, error=? "
                           "WHERE id=? AND state='running'",
                           (time.time(), "the process running it ended", jid))

        self._write("catalog", mark)
        return len(gone)

    # --------------------------------------------------------------- verified
    def mark_verified(self, snapshot_ids: list[str], read_data: bool) -> None:
        now = time.time()
        self._write("catalog", lambda db: db.executemany(
            "INSERT INTO verified (snapshot, time, read_data) VALUES (?, ?, ?) "
            "ON CONFLICT(snapshot) DO UPDATE SET time=excluded.time, "
            "read_data=excluded.read_data",
            [(sid, now, int(read_data)) for sid in snapshot_ids],
        ))

    def verified(self) -> dict[str, float]:
        """Snapshot id -> time of the last verify that found it sound."""
        with self._conn() as db:
            cur = db.cursor()
            cur.row_factory = None  # plain tuples: one per snapshot, read at each listing
            return dict(cur.execute("SELECT snapshot, time FROM verified"))

    # --------------------------------------------------------------- replicas
    def replica_done(self, replica: str, snapshots: list[str]) -> None:
        """A replication run succeeded: these snapshots are complete in the replica."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM replica_snapshots WHERE replica=?", (replica,))
                db.executemany(
                    "INSERT INTO replica_snapshots (replica, snapshot, time) VALUES (?, ?, ?)",
                    [(replica, s, now) for s in snapshots],
                )
                db.execute(
                    "INSERT INTO replica_state (replica, last_success, objects_behind, "
                    "bytes_behind, checked) VALUES (?, ?, 0, 0, ?) ON CONFLICT(replica) DO "
                    "UPDATE SET last_success=excluded.last_success, objects_behind=0, "
                    "bytes_behind=0, checked=excluded.checked",
                    (replica, now, now),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        self._write("catalog", write)

    def replica_failed(self, replica: str, error: str) -> None:
        now = time.time()
        self._write("catalog", lambda db: db.execute(
            "INSERT INTO replica_state (replica, last_error, last_error_time, checked) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(replica) DO UPDATE SET "
            "last_error=excluded.last_error, last_error_time=excluded.last_error_time, "
            "checked=excluded.checked",
            (replica, safe_text(error)[:2000], now, now),
        ))

    def replica_lag(self, replica: str, objects: int, nbytes: int) -> None:
        self._write("catalog", lambda db: db.execute(
            "INSERT INTO replica_state (replica, objects_behind, bytes_behind, checked) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(replica) DO UPDATE SET "
            "objects_behind=excluded.objects_behind, bytes_behind=excluded.bytes_behind, "
            "checked=excluded.checked",
            (replica, objects, nbytes, time.time()),
        ))

    def replica_presence(self) -> dict[str, set[str]]:
        """Replica name -> ids of snapshots complete there (as of the last run)."""
        out: dict[str, set[str]] = {}
        with self._conn() as db:
            for r in db.execute("SELECT replica, snapshot FROM replica_snapshots"):
                out.setdefault(r["replica"], set()).add(r["snapshot"])
        return out

    def replica_states(self) -> dict[str, dict]:
        with self._conn() as db:
            return {r["replica"]: dict(r) for r in db.execute("SELECT * FROM replica_state")}

    # --------------------------------------------------------------- schedule
    def schedule_states(self) -> dict[str, dict]:
        with self._conn() as db:
            return {r["kind"]: dict(r) for r in db.execute("SELECT * FROM schedule_state")}

    def set_paused(self, kind: str, paused: bool) -> None:
        self._write("catalog", lambda db: db.execute(
            "INSERT INTO schedule_state (kind, paused) VALUES (?, ?) "
            "ON CONFLICT(kind) DO UPDATE SET paused=excluded.paused",
            (kind, int(paused)),
        ))

    def schedule_ran(self, kind: str, result: str, error: str = "",
                     missed: float | None = None) -> None:
        self._write("catalog", lambda db: db.execute(
            "INSERT INTO schedule_state (kind, last_run, last_result, last_error, last_missed)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET "
            "last_run=excluded.last_run, last_result=excluded.last_result, "
            "last_error=excluded.last_error, last_missed=excluded.last_missed",
            (kind, time.time(), result, safe_text(error)[:2000], missed),
        ))

    def request_run(self, kind: str, user: str) -> int:
        """Queue a "run now" in the admin store (only admins can write it)."""
        return int(self._write("admin", lambda db: db.execute(
            "INSERT INTO run_requests (kind, requested, user) VALUES (?, ?, ?)",
            (kind, time.time(), safe_text(user))).lastrowid))

    def take_requests(self) -> list[dict]:
        """Claim pending run-now requests (atomically: one taker gets each)."""
        def take(db: sqlite3.Connection) -> list[dict]:
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = [dict(r) for r in db.execute(
                    "SELECT * FROM run_requests WHERE taken IS NULL ORDER BY id")]
                if rows:
                    db.execute("UPDATE run_requests SET taken=? WHERE taken IS NULL",
                               (time.time(),))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return rows

        return self._write("admin", take)

    def pending_requests(self) -> dict[str, float]:
        """Schedule kind -> time of its oldest run-now request no scheduler took yet."""
        with self._conn("admin") as db:
            return {r["kind"]: r["requested"] for r in db.execute(
                "SELECT kind, MIN(requested) AS requested FROM run_requests "
                "WHERE taken IS NULL GROUP BY kind")}

    # ------------------------------------------------------------------ audit
    def audit(
        self, action: str, target: str, outcome: str, snapshots: list[str] = (), detail: str = ""
    ) -> None:
        uid = os.getuid()
        user = security.actor() or _user()  # the API's key and client when acting for one
        self._write("admin", lambda db: db.execute(
            "INSERT INTO audit (time, user, uid, action, target, snapshots, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), safe_text(user), uid, safe_text(action), safe_text(target),
             json.dumps(list(snapshots)), safe_text(outcome), safe_text(detail)[:2000]),
        ))

    def audit_log(self, limit: int = 200) -> list[dict]:
        with self._conn("admin") as db:
            rows = db.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
            out = []
            for r in rows:
                d = dict(r)
                d["snapshots"] = json.loads(d["snapshots"])
                out.append(d)
            return out

    # ------------------------------------------------------- seen snapshots
    # Which snapshots each repository held when this catalog last looked (verify), so
    # one that vanishes without a forget or cleanup of this tool is reported. Keyed by
    # a repository *and* its location: a replica may lag behind the local copy.
    _SEEN = ("CREATE TABLE IF NOT EXISTS seen_snapshots (repo TEXT NOT NULL, snapshot TEXT "
             "NOT NULL, kind TEXT, source TEXT, time TEXT, seen REAL NOT NULL, removed REAL, "
             "PRIMARY KEY (repo, snapshot))")

    def seen_snapshots(self, repo_id: str) -> dict[str, dict]:
        """Snapshot id -> {kind, source, time} of those seen in repo_id and never removed
        by this tool (forget, cleanup)."""
        try:
            with self._conn() as db:
                rows = db.execute("SELECT snapshot, kind, source, time FROM seen_snapshots "
                                  "WHERE repo=? AND removed IS NULL", (repo_id,)).fetchall()
        except sqlite3.OperationalError:  # no such table yet: nothing was seen
            return {}
        return {r["snapshot"]: {"kind": r["kind"], "source": r["source"], "time": r["time"]}
                for r in rows}

    def mark_seen(self, repo_id: str, snapshots: list[dict], removed: list[str] = ()) -> None:
        """Record snapshot records (``id``, ``kind``, ``source``, ``time``) as seen in
        repo_id, and the ids in ``removed`` as deleted by this tool (that sticks: a later
        sighting does not make a removed one expected again)."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute(self._SEEN)
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT INTO seen_snapshots (repo, snapshot, kind, source, time, seen) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(repo, snapshot) DO NOTHING",
                    [(repo_id, s["id"], safe_text(str(s.get("kind", ""))),
                      safe_text(str(s.get("source", ""))), safe_text(str(s.get("time", ""))),
                      now) for s in snapshots])
                db.executemany(
                    "INSERT INTO seen_snapshots (repo, snapshot, seen, removed) VALUES "
                    "(?, ?, ?, ?) ON CONFLICT(repo, snapshot) DO UPDATE SET "
                    "removed=excluded.removed", [(repo_id, sid, now, now) for sid in removed])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        self._write("catalog", write)

    # ----------------------------------------------------- inventory rows
    # The inventory's fields of each snapshot record this catalog has read and
    # authenticated (ops/resolve.py), keyed by repository (``repo_key``: its id and its
    # config's authenticator, so another repository under the same id has other keys)
    # and by the record's name, with its stored size. A record is named by the sha256
    # of its stored bytes: resolve reads a cached one's bytes and checks they still hash
    # to its name, and opens (decrypts, decompresses, parses) only records it has not
    # seen. A cache: the table is made by the first write, a rebuild starts it afresh.
    _ROWS = ("CREATE TABLE IF NOT EXISTS inventory_rows (repo TEXT NOT NULL, snapshot TEXT "
             "NOT NULL, stored INTEGER NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL, "
             "source TEXT NOT NULL, host TEXT NOT NULL, size INTEGER NOT NULL, added INTEGER "
             "NOT NULL, complete INTEGER NOT NULL, parent TEXT, files INTEGER NOT NULL, "
             "duration REAL, PRIMARY KEY (repo, snapshot))")
    ROW_FIELDS = ("stored", "time", "kind", "source", "host", "size", "added", "complete",
                  "parent", "files", "duration")

    def snapshot_rows(self, repo_key: str) -> dict[str, tuple]:
        """Snapshot id -> the cached fields (``ROW_FIELDS`` order) of repository
        ``repo_key``."""
        try:
            with self._conn() as db:
                cur = db.cursor()
                cur.row_factory = None  # plain tuples: 10,000 rows are read at each listing
                cur.execute(f"SELECT snapshot, {', '.join(self.ROW_FIELDS)} FROM inventory_rows "
                            "WHERE repo=?", (repo_key,))
                return {r[0]: r[1:] for r in cur}
        except sqlite3.OperationalError:  # no such table yet: nothing cached
            return {}

    def cache_snapshot_rows(self, repo_key: str, rows: dict[str, tuple],
                            gone: list[str] = ()) -> None:
        """Cache ``rows`` (id -> fields in ``ROW_FIELDS`` order) of repository ``repo_key``
        and drop the ids in ``gone`` (no longer listed)."""
        def write(db: sqlite3.Connection) -> None:
            db.execute(self._ROWS)
            db.execute("BEGIN")
            try:
                db.executemany(
                    f"INSERT OR REPLACE INTO inventory_rows (repo, snapshot, "
                    f"{', '.join(self.ROW_FIELDS)}) VALUES "
                    f"({', '.join(['?'] * (2 + len(self.ROW_FIELDS)))})",
                    [(repo_key, sid, *(safe_text(v) if isinstance(v, str) else v
                                       for v in fields)) for sid, fields in rows.items()])
                db.executemany("DELETE FROM inventory_rows WHERE repo=? AND snapshot=?",
                               [(repo_key, sid) for sid in gone])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        self._write("catalog", write)

    # ---------------------------------------------------------- restore drills
    # One row per drill (engine/ops/drill.py): local history, like jobs (a catalog
    # rebuild starts it afresh). The table is made by the first drill.
    _DRILLS = ("CREATE TABLE IF NOT EXISTS drills (id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
               "source TEXT NOT NULL, snapshot TEXT, started REAL NOT NULL, finished REAL, "
               "ok INTEGER NOT NULL, rto_seconds REAL, error TEXT DEFAULT '', "
               "checks TEXT DEFAULT '[]', rows TEXT DEFAULT '{}', details TEXT DEFAULT '{}')")
    _DRILLS_INDEX = "CREATE INDEX IF NOT EXISTS drills_started ON drills(started)"

    def record_drill(self, drill: dict) -> None:
        """Record one drill: ``id``, ``kind``, ``source``, ``snapshot``, ``started``,
        ``finished`` (unix times), ``ok``, ``rto_seconds``, ``error``, ``checks`` (list),
        ``rows`` and ``details`` (dicts)."""
        def write(db: sqlite3.Connection) -> None:
            db.execute(self._DRILLS)
            db.execute(self._DRILLS_INDEX)
            db.execute(
                "INSERT OR REPLACE INTO drills (id, kind, source, snapshot, started, finished, "
                "ok, rto_seconds, error, checks, rows, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (drill["id"], safe_text(drill["kind"]), safe_text(drill["source"]),
                 drill.get("snapshot"), float(drill["started"]), drill.get("finished"),
                 int(bool(drill["ok"])), drill.get("rto_seconds"),
                 safe_text(drill.get("error", ""))[:2000],
                 json.dumps(drill.get("checks", []), default=str),
                 json.dumps(drill.get("rows", {}), default=str),
                 json.dumps(drill.get("details", {}), default=str)))

        self._write("catalog", write)

    def drills(self, kind: str | None = None, source: str | None = None,
               limit: int = 50) -> list[dict]:
        """Recorded drills, newest first (optionally of one kind and source)."""
        query, args = "SELECT * FROM drills", []
        if kind is not None:
            query += " WHERE kind = ?"
            args.append(kind)
        if source is not None:
            query += (" AND" if args else " WHERE") + " source = ?"
            args.append(source)
        query += " ORDER BY started DESC LIMIT ?"
        try:
            with self._conn() as db:
                rows = [dict(r) for r in db.execute(query, (*args, limit))]
        except sqlite3.OperationalError:  # no drill yet: no table
            return []
        for r in rows:
            r["ok"] = bool(r["ok"])
            for key, empty in (("checks", []), ("rows", {}), ("details", {})):
                try:
                    r[key] = json.loads(r[key] or "null") or empty
                except ValueError:
                    r[key] = empty
        return rows


    # ------------------------------------------------------------ WAL state
    # Per replica and cluster: the newest WAL file known to be there (the local newest at
    # the end of a successful ship or replicate), its archive time, and the last error.
    # The table is made by the first write (engine/ops/walship.py).
    _WAL = ("CREATE TABLE IF NOT EXISTS wal_state (replica TEXT NOT NULL, cluster TEXT NOT "
            "NULL, wal TEXT, archived REAL, shipped REAL, error TEXT DEFAULT '', error_time "
            "REAL, PRIMARY KEY (replica, cluster))")

    def wal_shipped(self, replica: str, cluster: str, wal: str, archived: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(self._WAL)
            db.execute(
                "INSERT INTO wal_state (replica, cluster, wal, archived, shipped, error) "
                "VALUES (?, ?, ?, ?, ?, '') ON CONFLICT(replica, cluster) DO UPDATE SET "
                "wal=excluded.wal, archived=excluded.archived, shipped=excluded.shipped, "
                "error=''", (safe_text(replica), safe_text(cluster), safe_text(wal),
                             float(archived), time.time()))

        self._write("catalog", write)

    def wal_ship_failed(self, replica: str, cluster: str, error: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(self._WAL)
            db.execute(
                "INSERT INTO wal_state (replica, cluster, error, error_time) VALUES "
                "(?, ?, ?, ?) ON CONFLICT(replica, cluster) DO UPDATE SET "
                "error=excluded.error, error_time=excluded.error_time",
                (safe_text(replica), safe_text(cluster), safe_text(error)[:2000], time.time()))

        self._write("catalog", write)

    def wal_states(self) -> dict[str, dict[str, dict]]:
        """cluster -> replica -> {wal, archived, shipped, error, error_time}."""
        try:
            with self._conn() as db:
                rows = [dict(r) for r in db.execute("SELECT * FROM wal_state")]
        except sqlite3.OperationalError:  # nothing shipped yet: no table
            return {}
        out: dict[str, dict[str, dict]] = {}
        for r in rows:
            out.setdefault(r["cluster"], {})[r["replica"]] = r
        return out


class _Lenient:
    """A Catalog whose writes skip StateDirError (see Catalog.lenient)."""

    def __init__(self, catalog: Catalog):
        self._catalog = catalog

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._catalog, name)
        if name not in WRITES:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except StateDirError as e:
                self._catalog.warn_skipped(e)
                return None

        return call

    def lenient(self) -> _Lenient:
        return self


def _user() -> str:
    """The real user (from the uid: $USER and $LOGNAME are the caller's to set)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


__all__ = ["Catalog", "StateDirError", "safe_text"]
