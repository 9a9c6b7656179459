"""The catalog: SQLite (WAL mode) in the state directory.

It holds jobs with their latest progress (so another process, the console or
``status``, can watch a running job), and the append-only audit log. It is a
cache of what the repository says plus local history: losing it loses no
backup (docs/ARCHITECTURE.md, section 5). Secrets are never written here.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import EngineError
from engine.events import Event
from engine.repo.locks import pid_alive

SCHEMA = """
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
    updated REAL
);
CREATE INDEX IF NOT EXISTS jobs_started ON jobs(started);
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

PROGRESS_INTERVAL = 0.25


class Catalog:
    def __init__(self, state_dir: str | os.PathLike[str]):
        self.dir = Path(state_dir)
        self.path = self.dir / "catalog.sqlite"
        self._local = threading.local()
        self._last_write: dict[str, float] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            why = "exists and is not a directory" if isinstance(e, FileExistsError) else (
                f"cannot create it: {e.strerror}")
            raise EngineError(f"state directory {self.dir}: {why}") from None
        try:
            with self._conn() as db:
                db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise EngineError(
                f"catalog {self.path}: cannot open it: {e} (it is a cache of local history: "
                "move it aside to start a new one)"
            ) from None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.row_factory = sqlite3.Row
            self._local.db = db
        yield db

    # ------------------------------------------------------------------- jobs
    def start_job(self, job_id: str, kind: str, target: str) -> None:
        now = time.time()
        with self._conn() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, target, state, started, pid, updated) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (job_id, kind, target, now, os.getpid(), now),
            )

    def progress(self, event: Event) -> None:
        now = time.monotonic()
        if not event.final and now - self._last_write.get(event.job_id, 0) < PROGRESS_INTERVAL:
            return
        self._last_write[event.job_id] = now
        with self._conn() as db:
            db.execute(
                "UPDATE jobs SET phase=?, bytes_done=?, bytes_total=?, items_done=?, "
                "items_total=?, message=?, updated=? WHERE id=?",
                (
                    event.phase,
                    event.bytes_done,
                    event.bytes_total,
                    event.items_done,
                    event.items_total,
                    event.message[:500],
                    time.time(),
                    event.job_id,
                ),
            )

    def end_job(self, job_id: str, state: str, error: str = "", result: dict | None = None) -> None:
        self._last_write.pop(job_id, None)
        with self._conn() as db:
            db.execute(
                "UPDATE jobs SET state=?, ended=?, error=?, result=?, updated=? WHERE id=?",
                (state, time.time(), error[:2000], json.dumps(result or {}), time.time(), job_id),
            )

    def jobs(self, limit: int = 50) -> list[dict]:
        with self._conn() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY started DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows]

    def job(self, job_id: str) -> dict | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return dict(row) if row else None

    # --------------------------------------------------------------- verified
    def mark_verified(self, snapshot_ids: list[str], read_data: bool) -> None:
        now = time.time()
        with self._conn() as db:
            db.executemany(
                "INSERT INTO verified (snapshot, time, read_data) VALUES (?, ?, ?) "
                "ON CONFLICT(snapshot) DO UPDATE SET time=excluded.time, "
                "read_data=excluded.read_data",
                [(sid, now, int(read_data)) for sid in snapshot_ids],
            )

    def verified(self) -> dict[str, float]:
        """Snapshot id -> time of the last verify that found it sound."""
        with self._conn() as db:
            return {r["snapshot"]: r["time"] for r in db.execute("SELECT * FROM verified")}

    # --------------------------------------------------------------- replicas
    def replica_done(self, replica: str, snapshots: list[str]) -> None:
        """A replication run succeeded: these snapshots are complete in the replica."""
        now = time.time()
        with self._conn() as db:
            db.execute("BEGIN")
            db.execute("DELETE FROM replica_snapshots WHERE replica=?", (replica,))
            db.executemany(
                "INSERT INTO replica_snapshots (replica, snapshot, time) VALUES (?, ?, ?)",
                [(replica, s, now) for s in snapshots],
            )
            db.execute(
                "INSERT INTO replica_state (replica, last_success, objects_behind, bytes_behind,"
                " checked) VALUES (?, ?, 0, 0, ?) ON CONFLICT(replica) DO UPDATE SET "
                "last_success=excluded.last_success, objects_behind=0, bytes_behind=0, "
                "checked=excluded.checked",
                (replica, now, now),
            )
            db.execute("COMMIT")

    def replica_failed(self, replica: str, error: str) -> None:
        now = time.time()
        with self._conn() as db:
            db.execute(
                "INSERT INTO replica_state (replica, last_error, last_error_time, checked) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(replica) DO UPDATE SET "
                "last_error=excluded.last_error, last_error_time=excluded.last_error_time, "
                "checked=excluded.checked",
                (replica, error[:2000], now, now),
            )

    def replica_lag(self, replica: str, objects: int, nbytes: int) -> None:
        with self._conn() as db:
            db.execute(
                "INSERT INTO replica_state (replica, objects_behind, bytes_behind, checked) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(replica) DO UPDATE SET "
                "objects_behind=excluded.objects_behind, bytes_behind=excluded.bytes_behind, "
                "checked=excluded.checked",
                (replica, objects, nbytes, time.time()),
            )

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
        with self._conn() as db:
            db.execute(
                "INSERT INTO schedule_state (kind, paused) VALUES (?, ?) "
                "ON CONFLICT(kind) DO UPDATE SET paused=excluded.paused",
                (kind, int(paused)),
            )

    def schedule_ran(self, kind: str, result: str, error: str = "",
                     missed: float | None = None) -> None:
        with self._conn() as db:
            db.execute(
                "INSERT INTO schedule_state (kind, last_run, last_result, last_error, last_missed)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET "
                "last_run=excluded.last_run, last_result=excluded.last_result, "
                "last_error=excluded.last_error, last_missed=excluded.last_missed",
                (kind, time.time(), result, error[:2000], missed),
            )

    def request_run(self, kind: str, user: str) -> int:
        with self._conn() as db:
            cur = db.execute("INSERT INTO run_requests (kind, requested, user) VALUES (?, ?, ?)",
                             (kind, time.time(), user))
            return int(cur.lastrowid)

    def take_requests(self) -> list[dict]:
        """Claim pending run-now requests (atomically: one taker gets each)."""
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = [dict(r) for r in db.execute(
                "SELECT * FROM run_requests WHERE taken IS NULL ORDER BY id")]
            if rows:
                db.execute("UPDATE run_requests SET taken=? WHERE taken IS NULL", (time.time(),))
            db.execute("COMMIT")
            return rows

    def mark_interrupted(self) -> int:
        """Jobs left 'running' by a process that is gone (killed) become 'interrupted'."""
        with self._conn() as db:
            rows = db.execute("SELECT id, pid FROM jobs WHERE state='running'").fetchall()
            gone = [r["id"] for r in rows if not r["pid"] or not pid_alive(int(r["pid"]))]
            for jid in gone:
                db.execute("UPDATE jobs SET state='interrupted', ended=?, error=? WHERE id=?",
                           (time.time(), "the process running it ended", jid))
            return len(gone)

    # ------------------------------------------------------------------ audit
    def audit(
        self, action: str, target: str, outcome: str, snapshots: list[str] = (), detail: str = ""
    ) -> None:
        uid = os.getuid()
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(uid)
        with self._conn() as db:
            db.execute(
                "INSERT INTO audit (time, user, uid, action, target, snapshots, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), user, uid, action, target, json.dumps(list(snapshots)), outcome,
                 detail[:2000]),
            )

    def audit_log(self, limit: int = 200) -> list[dict]:
        with self._conn() as db:
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
        with self._conn() as db:
            db.execute(self._SEEN)
            rows = db.execute("SELECT snapshot, kind, source, time FROM seen_snapshots "
                              "WHERE repo=? AND removed IS NULL", (repo_id,))
            return {r["snapshot"]: {"kind": r["kind"], "source": r["source"],
                                    "time": r["time"]} for r in rows}

    def mark_seen(self, repo_id: str, snapshots: list[dict], removed: list[str] = ()) -> None:
        """Record snapshot records (``id``, ``kind``, ``source``, ``time``) as seen in
        repo_id, and the ids in ``removed`` as deleted by this tool (that sticks: a later
        sighting does not make a removed one expected again)."""
        now = time.time()
        with self._conn() as db:
            db.execute(self._SEEN)
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO seen_snapshots (repo, snapshot, kind, source, time, seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(repo, snapshot) DO NOTHING",
                [(repo_id, s["id"], str(s.get("kind", "")), str(s.get("source", "")),
                  str(s.get("time", "")), now) for s in snapshots])
            db.executemany(
                "INSERT INTO seen_snapshots (repo, snapshot, seen, removed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(repo, snapshot) DO UPDATE SET removed=excluded.removed",
                [(repo_id, sid, now, now) for sid in removed])
            db.execute("COMMIT")
