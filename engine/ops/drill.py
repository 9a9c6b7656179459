"""Restore drills: prove that the newest backup of a source restores, and time it.

A drill restores the newest complete backup of one source into scratch space,
starts a throwaway PostgreSQL server on a free loopback port, validates what came
up, measures the time from the start of the drill to a validated, usable
database (the RTO), tears everything down (in every case, also when the server
died mid-drill) and records the result in the catalog (``drills`` table), the
job and the audit log.

Which kinds can be drilled, and how, is the kind's business (engine/sources/): a
source class with a ``drill(self, run: DrillRun)`` method can be drilled; the
method brings the backup up with the helpers of ``DrillRun`` and calls
``run.validate(...)``. ``[[database]]`` (``logical``: initdb + pg_restore of the
dump, saved globals first) and ``[[cluster]]`` (``physical``: point-in-time
recovery through engine/ops/pitr.py to now minus ``drill_delay_minutes``) have one.

Validation, against the running server:

* connect;
* the tables the snapshot's pg_restore table of contents lists are all there
  (logical drills; a cluster drill counts the tables of every database);
* the row count of each table in the source's ``drill_tables`` (reported; a
  table that is not there fails the drill);
* ``amcheck`` (``bt_index_check(index, heapallindexed => true)`` on every btree
  index) where the extension is installed on the drill host; skipped, and said,
  where it is not.

Scratch space is ``<state>/drills/<id>/``; when the state directory cannot be
reached by the OS user that runs PostgreSQL (``postgres``, when we are root) a
new folder in the system's temporary directory is used instead, and the result
says so. ``<state>/drills/<id>.json`` records the running drill (pid, scratch
folder): a drill whose process died (SIGKILL) leaves its server and folder
behind, and the next drill stops and removes them.

The server is started with ``fsync = on`` (unlike the test sandbox) so the RTO is
the one a real restore on this host would take.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from engine.catalog import process_alive, process_start
from engine.errors import Cancelled, EngineError
from engine.events import CancelToken, Event, EventCallback
from engine.sources.pgconn import PgTarget

if TYPE_CHECKING:
    from engine.facade import Engine
    from engine.sandbox.pg import PgCluster
    from engine.sources.base import Source

DEFAULT_MAX_AGE_HOURS = 192  # health: a drill older than this (per source: drill_max_age_hours)
RTO_TREND = 5  # status shows the RTOs of this many last successful drills


class DrillFailed(EngineError):
    """A drill step or check failed; the drill records it and tears down."""


@dataclass
class DrillResult:
    """One drill, as the catalog records it and ``drill --json`` prints it."""

    id: str  # the drill's job id
    kind: str
    source: str
    snapshot: str | None = None
    started: float = 0.0  # unix time
    finished: float | None = None
    ok: bool = False
    rto_seconds: float | None = None  # start of the drill -> validated, usable database
    error: str = ""
    checks: list[dict] = field(default_factory=list)  # {name, ok, detail}
    rows: dict[str, int] = field(default_factory=dict)  # drill_tables -> row count
    details: dict[str, Any] = field(default_factory=dict)  # timings, scratch, server, target

    def as_json(self) -> dict:
        out = asdict(self)
        out["started"] = _iso(self.started)
        out["finished"] = _iso(self.finished)
        return out

    def record(self) -> dict:
        return asdict(self)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def drillable(source: Source) -> bool:
    """Whether the source's kind can be drilled (it has a ``drill`` method)."""
    return callable(getattr(source, "drill", None))


def max_age_hours(source: Source) -> int:
    """The source's drill_max_age_hours, else the default (192 h)."""
    return int(getattr(source.config, "drill_max_age_hours", 0) or 0) or DEFAULT_MAX_AGE_HOURS


# ------------------------------------------------------------------ the run
class DrillRun:
    """One running drill: what a kind's ``drill`` method works with."""

    def __init__(self, engine: Engine, source: Source, job_id: str, emit: EventCallback,
                 cancel: CancelToken | None):
        self.engine = engine
        self.source = source
        self.job_id = job_id
        self.emit = emit
        self.cancel = cancel or CancelToken()
        self.result = DrillResult(job_id, source.kind, source.name, started=time.time())
        self._t0 = time.monotonic()
        self._phase_t = self._t0
        self.dir: Path | None = None  # scratch folder (made by scratch())
        self._marker: Path | None = None
        self._servers: list[PgCluster] = []
        self.extra_paths: list[Path] = []  # further folders to remove at teardown

    # -------------------------------------------------------------- reporting
    def event(self, phase: str, message: str) -> None:
        self.emit(Event(self.job_id, phase, message=message))

    def timing(self, name: str) -> None:
        """Seconds spent since the last timing, recorded as details.timings[name]."""
        now = time.monotonic()
        self.result.details.setdefault("timings", {})[name] = round(now - self._phase_t, 3)
        self._phase_t = now

    def check(self, name: str, ok: bool, detail: str) -> None:
        """Record one check; a failed one fails the drill."""
        self.result.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            raise DrillFailed(f"{name}: {detail}")

    def usable(self) -> None:
        """The database is restored and validated: the RTO ends here."""
        self.result.rto_seconds = round(time.monotonic() - self._t0, 3)

    # ---------------------------------------------------------------- inputs
    def newest_snapshot(self) -> dict:
        infos = [i for i in self.engine.snapshots(source=self.source.name,
                                                  kind=self.source.kind) if i.complete]
        if not infos:
            raise DrillFailed(f"no complete backup of {self.source.info().title} to drill")
        snap = self.engine.repo().load_snapshot(infos[-1].id)
        self.result.snapshot = snap["id"]
        self.result.details["snapshot_time"] = snap.get("time")
        return snap

    # ---------------------------------------------------------------- scratch
    def scratch(self) -> Path:
        """The drill's own new folder, reachable by the OS user that runs PostgreSQL."""
        if self.dir is not None:
            return self.dir
        drills = self.engine.config.state_dir / "drills"
        try:
            os.mkdir(drills, 0o755)
            os.chmod(drills, 0o755)  # made here: others pass through it (the postgres user)
        except FileExistsError:
            pass
        except OSError as e:
            raise DrillFailed(f"cannot create {drills}: {e.strerror or e}") from None
        sweep(self.engine.config.state_dir)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.job_id)
        self._marker = drills / f"{safe}.json"
        wanted = drills / safe
        if _reachable(drills):
            os.mkdir(wanted, 0o755)
            os.chmod(wanted, 0o755)
            self.dir = wanted
        else:
            self.dir = Path(tempfile.mkdtemp(prefix=f"backup-tui-drill-{safe}-"))
            os.chmod(self.dir, 0o755)  # made here, for the postgres user
            self.result.details["scratch_note"] = (
                f"{drills} cannot be reached by the OS user {_os_owner()!r} that runs "
                f"PostgreSQL: scratch space in {self.dir} instead")
        self.result.details["scratch"] = str(self.dir)
        self._write_marker()
        return self.dir

    def _write_marker(self, **extra: Any) -> None:
        assert self._marker is not None
        data = {"job": self.job_id, "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                "host": socket.gethostname(), "scratch": str(self.dir),
                "servers": [str(s.base_dir) for s in self._servers], **extra}
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._marker)

    # ---------------------------------------------------------------- servers
    def new_server(self, major: int) -> PgCluster:
        """initdb and start a new, empty server of ``major`` (or the nearest newer one
        installed) in the scratch folder, on a free loopback port."""
        from engine.sandbox.pg import PgCluster

        bin_dir = server_bin_dir(major)
        cluster = PgCluster(self.scratch() / "pg", bin_dir=bin_dir)
        self.adopt_server(cluster)
        self.event("initdb", f"initdb of a scratch PostgreSQL {cluster.version} server")
        cluster.init()
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write("# --- restore drill: a real restore's durability, for a real RTO\n"
                       "fsync = on\n")
        self.cancel.check()
        cluster.start()
        self.result.details["server"] = {"version": cluster.version, "port": cluster.port}
        self.timing("server")
        return cluster

    def adopt_server(self, cluster: PgCluster) -> PgCluster:
        """A server in the scratch folder to stop and remove at teardown."""
        self._servers.append(cluster)
        if self._marker is not None:
            self._write_marker()
        return cluster

    # ---------------------------------------------------------------- validate
    def validate(self, target: PgTarget, databases: list[str],
                 expected_tables: dict[str, list[str]] | None = None,
                 drill_tables: tuple[str, ...] = (), server: PgCluster | None = None) -> None:
        """Connect to each database; the expected tables (db -> "schema name" strings, as
        pg_restore -l shows them) are present, else count the tables; row counts of
        ``drill_tables`` ("table", "schema.table" or, for several databases,
        "db.schema.table"); amcheck where installed."""
        where = target.where.rsplit("/", 1)[0]
        self.event("validate", f"validating {', '.join(databases)} on {where}"
                   + (f" (scratch data directory {server.data_dir})" if server else ""))
        try:
            self._validate(target, databases, expected_tables, drill_tables)
        except (psycopg2.Error, EngineError) as e:
            if isinstance(e, DrillFailed | Cancelled):
                raise
            gone = server is not None and not server.running()
            text = _first_line(e)
            if gone:
                raise DrillFailed(f"the scratch server stopped during validation (postmaster "
                                  f"gone): {text}") from None
            raise DrillFailed(f"validation failed: {text}") from None
        self.timing("validate")

    def _validate(self, target: PgTarget, databases: list[str],
                  expected: dict[str, list[str]] | None, drill_tables: tuple[str, ...]) -> None:
        placed = {t: _table_db(t, databases) for t in drill_tables}
        strays = [t for t, db in placed.items() if db not in databases]
        if strays:
            raise DrillFailed(f"rows: drill_tables {', '.join(strays)} name a database that is "
                              f"not in the restored server ({', '.join(databases)})")
        amcheck_ok, amcheck_count, amcheck_skipped = True, 0, ""
        bad_indexes: list[str] = []
        tables_total = 0
        for n, db in enumerate(databases):
            self.cancel.check()
            conn = target.connect(db)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    if n == 0:
                        self.check("connect", True, f"connected to {target.with_db(db).where}")
                    present = _tables(cur)
                    tables_total += len(present)
                    if expected is not None:
                        want = expected.get(db, [])
                        missing = sorted(set(want) - set(present))
                        self.check("tables", not missing,
                                   f"{db}: {len(want) - len(missing)} of the {len(want)} tables "
                                   "of the archive's table of contents are present"
                                   + (f"; missing: {', '.join(missing[:10])}" if missing else ""))
                    for t in (t for t, d in placed.items() if d == db):
                        self.result.rows[t] = _count(cur, t)
                    if amcheck_skipped:
                        continue
                    cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'")
                    if cur.fetchone() is None:
                        amcheck_skipped = ("the amcheck extension is not installed on this "
                                           "host: indexes not checked")
                        continue
                    cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                    cur.execute(
                        "SELECT c.oid::regclass::text FROM pg_index i "
                        "JOIN pg_class c ON c.oid = i.indexrelid "
                        "JOIN pg_am a ON a.oid = c.relam "
                        "WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready "
                        "AND c.relpersistence <> 't' ORDER BY 1")
                    for (index,) in cur.fetchall():
                        self.cancel.check()
                        try:
                            cur.execute("SELECT bt_index_check(%s::regclass, true)", (index,))
                            amcheck_count += 1
                        except (psycopg2.errors.IndexCorrupted,
                                psycopg2.errors.DataCorrupted) as e:
                            amcheck_ok = False
                            bad_indexes.append(f"{db}: {index}: {_first_line(e)}")
            finally:
                conn.close()
        if expected is None:
            self.check("tables", True, f"{tables_total} table(s) in {len(databases)} "
                       "database(s)")
        if drill_tables:
            self.check("rows", True, ", ".join(f"{t}: {n}" for t, n in self.result.rows.items()))
        if amcheck_skipped:
            self.result.checks.append({"name": "amcheck", "ok": True, "skipped": True,
                                       "detail": amcheck_skipped})
        else:
            self.check("amcheck", amcheck_ok,
                       f"bt_index_check (heapallindexed) passed on {amcheck_count} btree "
                       "index(es)" if amcheck_ok else "; ".join(bad_indexes[:5]))

    # ---------------------------------------------------------------- teardown
    def teardown(self) -> None:
        """Stop every server of the drill and remove the scratch folder; errors are the
        drill's (recorded), never raised."""
        problems = []
        for cluster in self._servers:
            try:
                cluster.destroy()
            except Exception as e:  # noqa: BLE001 - the folder goes anyway, below
                problems.append(f"stopping the scratch server: {e}")
            if cluster.running():
                problems.append(f"the scratch server (pid {cluster.postmaster_pid()}) is still "
                                "running")
        for path in [*self.extra_paths, *([self.dir] if self.dir is not None else [])]:
            if not _remove(path):
                problems.append(f"scratch folder {path} could not be removed")
        if self._marker is not None and not problems:
            self._marker.unlink(missing_ok=True)
        self.result.checks.append({"name": "teardown", "ok": not problems,
                                   "detail": "; ".join(problems) or
                                   "scratch server stopped, scratch space removed"})
        if problems and self.result.ok:
            self.result.ok = False
            self.result.error = "teardown: " + "; ".join(problems)


def _remove(path: Path) -> bool:
    for attempt in range(20):  # a dying backend may still write a file or two
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return True
        time.sleep(0.1 * (attempt + 1))
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------ running
def run_drill(engine: Engine, source: Source, job_id: str, emit: EventCallback,
              cancel: CancelToken | None = None) -> DrillResult:
    """Drill one source (its kind's ``drill`` method), tear down, record the result.
    Returns the result, ok or not; raises only for a kind that cannot be drilled (and,
    after tearing down and recording, for an interrupt or a bug)."""
    if not drillable(source):
        raise EngineError(f"{source.info().title}: restore drills are not available for "
                          f"this kind of source")
    run = DrillRun(engine, source, job_id, emit, cancel)
    result = run.result
    try:
        source.drill(run)  # type: ignore[attr-defined]
        result.ok = True
    except Cancelled:
        result.error = "cancelled"
    except EngineError as e:
        result.error = str(e)
    except (psycopg2.Error, OSError, subprocess.SubprocessError) as e:
        result.error = f"{type(e).__name__}: {_first_line(e)}"
    except BaseException as e:  # an interrupt or a bug: still torn down and recorded
        result.error = f"{type(e).__name__}: {_first_line(e)}"
        _finish(run)
        raise
    _finish(run)
    emit(Event(job_id, "done", message=("drill ok" if result.ok else
                                        f"drill FAILED: {result.error}"), final=True))
    return result


def _finish(run: DrillRun) -> None:
    try:
        run.event("teardown", "stopping the scratch server, removing scratch space")
        run.teardown()
    finally:
        if not run.result.ok:
            run.result.rto_seconds = None
        run.result.finished = time.time()
        run.engine.catalog.record_drill(run.result.record())


def sweep(state_dir: Path) -> list[str]:
    """Stop and remove what drills of dead processes left (their marker names it)."""
    from engine.sandbox.pg import PgCluster

    done = []
    for marker in sorted(glob.glob(os.path.join(state_dir, "drills", "*.json"))):
        try:
            data = json.loads(Path(marker).read_text())
        except (OSError, ValueError):
            continue
        if data.get("host") != socket.gethostname() or process_alive(
                int(data.get("pid", 0) or 0), data.get("pid_start")):
            continue
        for base in data.get("servers", []):
            try:
                PgCluster(base).destroy()
            except Exception:  # noqa: BLE001 - best effort: the folder goes below
                pass
        scratch = data.get("scratch")
        if scratch and (not os.path.lexists(scratch) or _remove(Path(scratch))):
            os.unlink(marker)
            done.append(scratch)
    return done


def _os_owner() -> str:
    from engine.sandbox.pg import OS_OWNER

    return OS_OWNER if os.geteuid() == 0 else _whoami()


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _reachable(path: Path) -> bool:
    """Can the OS user that runs PostgreSQL create a folder's contents below ``path``?"""
    if os.geteuid() != 0:
        return True
    from engine.sandbox.pg import OS_OWNER

    probe = ["runuser", "-u", OS_OWNER, "--", "test", "-x", str(path)]
    try:
        return subprocess.run(probe, capture_output=True, cwd="/", timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def server_bin_dir(major: int) -> Path:
    """PostgreSQL server binaries of ``major``, else the oldest newer one installed."""
    found = {}
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        v = d.split("/")[4]
        if v.isdigit() and all(os.path.isfile(os.path.join(d, x))
                               for x in ("initdb", "pg_ctl", "postgres")):
            found[int(v)] = Path(d)
    usable = sorted(v for v in found if v >= major)
    if not usable:
        have = ", ".join(str(v) for v in sorted(found)) or "none"
        raise DrillFailed(f"no PostgreSQL server of version {major} or newer is installed for "
                          f"the drill (installed: {have}; Debian: apt-get install "
                          f"postgresql-{major})")
    return found[usable[0]]


# ------------------------------------------------------------ validation helpers
def _tables(cur) -> list[str]:
    """Ordinary and partitioned tables ("schema name", as pg_restore -l words them),
    without the system's and extensions' own."""
    cur.execute(
        "SELECT n.nspname || ' ' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
        "'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
        "AND n.nspname NOT LIKE 'pg_temp%%' AND NOT EXISTS (SELECT 1 FROM pg_depend d "
        "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')")
    return [r for (r,) in cur.fetchall()]


def _split(table: str) -> tuple[str | None, list[str]]:
    parts = table.split(".")
    if len(parts) == 3:
        return parts[0], parts[1:]
    return None, parts


def _table_db(table: str, databases: list[str]) -> str:
    db, _ = _split(table)
    return db if db is not None else databases[0]


def _count(cur, table: str) -> int:
    _, parts = _split(table)
    name = sql.SQL(".").join(sql.Identifier(p) for p in parts)
    try:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName):
        raise DrillFailed(f"rows: drill table {table} does not exist in the restored "
                          "database") from None
    return int(cur.fetchone()[0])


def toc_tables(repo, snap: dict, major: int) -> list[str]:
    """The tables of a pg_dump archive's table of contents ("schema name")."""
    from engine.ops.restore_db import archive_text

    try:
        text = archive_text(repo, snap, major, ["-l"], "-l, table of contents")
    except EngineError as e:
        raise DrillFailed(str(e)) from None
    tables = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        _, _, rest = line.partition("; ")
        fields = rest.split(" ", 2)  # oid oid TYPE SCHEMA NAME OWNER
        if len(fields) < 3 or not fields[2].startswith("TABLE ") \
                or fields[2].startswith("TABLE DATA "):
            continue
        words = fields[2][len("TABLE "):].rsplit(" ", 1)  # "schema name", owner
        tables.append(words[0] if len(words) == 2 else fields[2][len("TABLE "):])
    return tables


# ------------------------------------------------------------ the procedures
def logical(run: DrillRun, source: Source) -> None:
    """A pg_dump snapshot: a new server of its major, the saved globals, pg_restore through
    the restore code path (engine/ops/restore_db.py), then validation."""
    from engine.ops.restore_db import execute_restore_db, plan_restore_db

    engine = run.engine
    snap = run.newest_snapshot()
    facts = snap.get("postgres", {})
    major = int(facts.get("server_major", 0) or 0)
    dbname = facts.get("dbname") or source.name
    run.result.details["database"] = dbname
    with engine._reading(f"drill {snap['id'][:12]}", snap["id"]):
        repo = engine.repo()
        expected = toc_tables(repo, snap, major)
        cluster = run.new_server(major)
        target = PgTarget(f"drill:{source.name}", {
            "host": cluster.host, "port": str(cluster.port), "user": cluster.superuser,
            "dbname": "postgres"}, "drill")
        run.event("restore", f"restoring snapshot {snap['id'][:8]} into the scratch server")
        plan = plan_restore_db(snap, target, dbname, with_globals=True)
        tmp = run.scratch() / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        restored = execute_restore_db(repo, plan, run.job_id, run.emit, run.cancel,
                                      scratch=str(tmp), state_dir=str(run.scratch()))
    run.timing("restore")
    run.check("restore", True, f"pg_restore of snapshot {snap['id'][:8]} "
              f"({restored.bytes} bytes) into {dbname}")
    for w in restored.warnings:
        run.result.details.setdefault("warnings", []).append(w)
    run.validate(target, [dbname], {dbname: expected},
                 tuple(getattr(source.config, "drill_tables", ())), server=cluster)
    run.usable()


def physical(run: DrillRun, source: Source) -> None:
    """A cluster: point-in-time recovery (engine/ops/pitr.py) of its base backup and WAL
    into the scratch folder, to now minus ``drill_delay_minutes``, started and promoted;
    then every database of the recovered server is validated."""
    from datetime import timedelta

    from engine.ops import pitr
    from engine.sandbox.common import free_port
    from engine.sandbox.pg import PgCluster

    engine = run.engine
    cfg = source.config
    when = datetime.now(UTC) - timedelta(minutes=int(getattr(cfg, "drill_delay_minutes", 5)))
    run.result.details["target_time"] = when.isoformat(timespec="seconds")
    run.event("plan", f"planning recovery of {source.info().title} to "
              f"{when.isoformat(timespec='seconds')}")
    plan = pitr.plan(engine, source.name, pitr.Target("time", when), None)
    run.result.snapshot = plan.snapshot["id"]
    run.result.details["snapshot_time"] = plan.snapshot.get("time")
    plan.check()  # a target past the newest archived WAL fails the drill, named
    major = int(plan.postgres.get("server_major") or 0) \
        or int(plan.postgres.get("server_version", 0) or 0) // 10000
    base = run.scratch() / "pg"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)  # made here: the postgres user creates the data directory in it
    port = free_port()
    cluster = run.adopt_server(PgCluster(base, port=port, bin_dir=server_bin_dir(major)))
    run.event("restore", f"point-in-time recovery into {cluster.data_dir}")
    out: dict = {}
    try:
        with engine._reading(f"drill {source.name}", plan.snapshot["id"]):
            out = pitr.restore(engine, plan, str(cluster.data_dir), port, True, False,
                               run.job_id, run.emit, run.cancel)
    finally:
        log = out.get("log")
        if log:  # pitr's server log folder and socket folder are the drill's to remove
            run.extra_paths.append(Path(log).parent)
        sock = (out.get("server") or {}).get("socket_dir")
        if sock:
            run.extra_paths.append(Path(sock))
    run.result.details["recovery"] = {k: out.get(k) for k in (
        "files", "bytes", "seconds_to_promotion", "replay_lsn", "replay_time", "stopped",
        "timeline", "last_transaction") if out.get(k) is not None}
    run.timing("restore")
    run.check("restore", True, f"base backup {plan.snapshot['id'][:8]} recovered to "
              f"{when.isoformat(timespec='seconds')} and promoted on port {port}")
    target = _cluster_target(source, port)
    conn = target.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT "
                        "datistemplate ORDER BY datname")
            dbs = [r for (r,) in cur.fetchall()]
    finally:
        conn.close()
    first = target.dbname if target.dbname in dbs else "postgres"
    dbs = [first] + [d for d in dbs if d != first]
    run.validate(target, dbs, None, tuple(getattr(cfg, "drill_tables", ())), server=cluster)
    run.usable()


def _cluster_target(source: Source, port: int) -> PgTarget:
    """The cluster's dsn, pointed at the recovered copy on loopback."""
    from engine.sources import pgconn

    t = pgconn.resolve(source.config)
    params = {k: v for k, v in t.params.items() if k not in ("host", "hostaddr", "port")}
    params.update(host="127.0.0.1", port=str(port))
    return PgTarget(f"drill:{source.name}", params, "drill")


def newest_drills(engine: Engine) -> dict[tuple[str, str], list[dict]]:
    """(kind, source) -> its drills, newest first (the last 50)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for d in engine.catalog.drills(limit=500):
        out.setdefault((d["kind"], d["source"]), []).append(d)
    return out


def summary(drills: list[dict], source: Source) -> dict:
    """status's drill fields of one source (``drills`` newest first)."""
    last = drills[0] if drills else None
    trend = [d["rto_seconds"] for d in drills if d["ok"] and d["rto_seconds"] is not None]
    return {
        "last": None if last is None else {
            "id": last["id"], "snapshot": last["snapshot"], "started": _iso(last["started"]),
            "finished": _iso(last["finished"]), "ok": bool(last["ok"]),
            "rto_seconds": last["rto_seconds"], "error": last["error"] or None,
            "rows": last.get("rows") or {}, "checks": last.get("checks") or []},
        "rto_trend": list(reversed(trend[:RTO_TREND])),  # oldest first
        "max_age_hours": max_age_hours(source),
    }


def health_reasons(drills: list[dict], source: Source, now: float) -> list[str]:
    """Why a source's drills make it unhealthy: the last one failed, or it is older than
    the source's drill_max_age_hours (default 192 h). A source never drilled does not
    fail health (status shows no last drill): once the drill schedule (or anyone) has
    drilled it, a drill is recorded for it, ok or failed, and it is checked from then on."""
    if not drills:
        return []
    title = f"{source.kind} {source.name}"
    limit = max_age_hours(source)
    last = drills[0]
    if not last["ok"]:
        when = _iso(last["finished"] or last["started"])
        return [f"{title}: last restore drill failed at {when}: {last['error']}"]
    age = (now - (last["finished"] or last["started"])) / 3600
    if age > limit:
        return [f"{title}: last restore drill is {age:.1f} h old (limit {limit} h)"]
    return []


__all__ = ["DrillResult", "DrillRun", "DrillFailed", "run_drill", "drillable", "logical",
           "physical", "sweep", "summary", "health_reasons", "newest_drills",
           "DEFAULT_MAX_AGE_HOURS"]
