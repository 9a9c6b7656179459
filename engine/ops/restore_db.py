"""restore db: a logical snapshot into a database, safely.

``plan_restore_db`` says what will happen (a new database, or a replacement
with the old one kept under a dated name) before anything is touched.
``execute_restore_db`` always restores into a temporary database first, with
``pg_restore --exit-on-error`` reading our stream on stdin; only when that
succeeded does it take the target's name. A failed restore drops the
temporary database and leaves the original untouched and serving.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg2 import sql

from engine.errors import EngineError, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.repo.repository import Repository
from engine.sources.pgconn import PgTarget, find_tool

MAX_IDENT = 63


@dataclass
class DbRestorePlan:
    snapshot: dict
    server: PgTarget  # connection to the server (maintenance database)
    target_db: str
    exists: bool
    replace: bool
    temp_db: str
    old_db: str | None
    drop_old: bool = False
    no_owner: bool = False
    with_globals: bool = False
    steps: list[str] = field(default_factory=list)

    @property
    def target_label(self) -> str:
        """What the job and the audit log call this restore."""
        return f"{self.snapshot['kind']}:{self.snapshot['source']} -> {self.target_db}"

    def summary(self) -> dict:
        return {
            "snapshot": self.snapshot["id"],
            "taken": self.snapshot["time"],
            "source": self.snapshot["source"],
            "server": self.server.where.rsplit("/", 1)[0],
            "target_db": self.target_db,
            "replace": self.replace,
            "old_db": self.old_db,
            "steps": self.steps,
        }


@dataclass
class DbRestoreResult:
    snapshot: str
    target_db: str
    old_db: str | None
    bytes: int
    warnings: list[str]


def _ident(base: str, suffix: str) -> str:
    return base[: MAX_IDENT - len(suffix)] + suffix


def _maintenance(server: PgTarget):
    for db in ("postgres", "template1"):
        try:
            return server.connect(db)
        except EngineError as e:
            last = e
    raise last


def database_exists(server: PgTarget, name: str) -> bool:
    conn = _maintenance(server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def plan_restore_db(
    snap: dict,
    server: PgTarget,
    target_db: str,
    replace: bool = False,
    drop_old: bool = False,
    no_owner: bool = False,
    with_globals: bool = False,
) -> DbRestorePlan:
    if not target_db or len(target_db) > MAX_IDENT or "\x00" in target_db:
        raise UsageError(f"invalid target database name {target_db!r}")
    exists = database_exists(server, target_db)
    if exists and not replace:
        raise UsageError(
            f"database {target_db!r} already exists on {server.where.rsplit('/', 1)[0]}; "
            "choose another --target-db, or --replace --yes to replace it (the old one is kept "
            "under a dated name)"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    temp_db = _ident(target_db, f"__restoring_{stamp}")
    old_db = _ident(target_db, f"__old_{stamp}") if exists else None
    plan = DbRestorePlan(snap, server, target_db, exists, replace, temp_db, old_db,
                         drop_old, no_owner, with_globals)
    if with_globals:
        plan.steps.append("apply roles and tablespaces saved with the dump")
    plan.steps.append(f"create database {temp_db} and restore snapshot {snap['id'][:8]} into it")
    if exists:
        plan.steps.append(f"disconnect clients of {target_db}, rename it to {old_db}")
        plan.steps.append(f"rename {temp_db} to {target_db}")
        if drop_old:
            plan.steps.append(f"drop {old_db}")
    else:
        plan.steps.append(f"rename {temp_db} to {target_db}")
    return plan


def _exec(server: PgTarget, *statements) -> None:
    conn = _maintenance(server)
    try:
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st[0], st[1] if len(st) > 1 else None)
    finally:
        conn.close()


def _drop(server: PgTarget, name: str) -> None:
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    _exec(server, (drop,))


def _explain_restore_error(text: str, no_owner: bool) -> str:
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m and not no_owner:
        return (f"the dump's objects belong to role {m.group(1)!r}, which this server lacks: "
                "create the role, restore with --with-globals, or restore with --no-owner")
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return (lines[0] if lines else text.strip()[-500:]) or "unknown error"


def stream_into(repo: Repository, snap: dict, proc: subprocess.Popen, on_bytes) -> int:
    """Feed the snapshot's stream to a process's stdin; returns bytes written."""
    written = 0
    assert proc.stdin is not None
    try:
        for bid in snap.get("stream", []):
            data = repo.load_blob(bid, "data")
            proc.stdin.write(data)
            written += len(data)
            on_bytes(written)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the reader died; its exit status and stderr say why
    return written


def materialize(repo: Repository, snap: dict, folder: str, only: set[str] | None = None,
                on_bytes=lambda n: None) -> int:
    """Write a directory-format dump's files into folder (pg_restore -Fd needs them on disk)."""
    from engine.repo.walk import walk

    os.makedirs(folder, mode=0o700, exist_ok=True)
    written = 0
    for path, node in walk(repo, snap["tree"]):
        name = os.fsdecode(path)
        if node["type"] != "file" or "/" in name or (only is not None and name not in only):
            continue
        with open(os.path.join(folder, name), "wb") as f:
            for bid in node.get("content", []):
                data = repo.load_blob(bid, "data")
                f.write(data)
                written += len(data)
                on_bytes(written)
    return written


def restore_globals(repo: Repository, plan: DbRestorePlan, tool_major: int) -> list[str]:
    gids = plan.snapshot.get("globals", [])
    if not gids:
        return ["no globals were saved with this snapshot"]
    psql, _ = find_tool("psql", tool_major)
    script = b"".join(repo.load_blob(g, "data") for g in gids)
    env = plan.server.with_db("postgres").env()
    proc = subprocess.run([psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "-d",
                           "postgres"], input=script, capture_output=True, env=env, timeout=600)
    errs = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines()
            if "ERROR" in ln and "already exists" not in ln]
    return [f"globals: {e}" for e in errs[:10]]


def execute_restore_db(
    repo: Repository,
    plan: DbRestorePlan,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    scratch: str = "/tmp",
) -> DbRestoreResult:
    cancel = cancel or CancelToken()
    server = plan.server
    major = int(plan.snapshot.get("postgres", {}).get("server_major", 0))
    facts_conn = _maintenance(server)
    try:
        server_major = facts_conn.server_version // 10000
    finally:
        facts_conn.close()
    tool, _ = find_tool("pg_restore", max(major, server_major))
    total = int(plan.snapshot.get("stats", {}).get("size", 0))
    warnings: list[str] = []
    if plan.with_globals:
        warnings += restore_globals(repo, plan, max(major, server_major))
    if database_exists(server, plan.target_db) and not plan.replace:
        raise UsageError(f"database {plan.target_db!r} already exists (created meanwhile?)")
    _exec(server, (sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
        sql.Identifier(plan.temp_db)),))
    try:
        args = [tool, "--exit-on-error", "--no-password", "-d", plan.temp_db]
        if plan.no_owner:
            args += ["--no-owner", "--no-acl"]
        folder = None
        directory = "tree" in plan.snapshot

        def on_bytes(n: int) -> None:
            on_event(Event(job_id, "restore", bytes_done=n, bytes_total=total,
                           message=f"pg_restore into {plan.temp_db}"))
            cancel.check()

        if directory:  # parallel restore reads a directory; staged only for this restore
            folder = os.path.join(scratch, f"restore-{plan.temp_db}")
            written = materialize(repo, plan.snapshot, folder, on_bytes=on_bytes)
            jobs = int(plan.snapshot.get("postgres", {}).get("jobs", 1))
            args += ["--format=directory", f"--jobs={max(1, jobs)}", folder]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL if directory else
                                    subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err, env=server.with_db(plan.temp_db).env())
            try:
                if not directory:
                    written = stream_into(repo, plan.snapshot, proc, on_bytes)
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)
            if rc != 0:
                err.seek(0)
                text = err.read().decode("utf-8", "replace")
                raise EngineError(
                    f"restore of snapshot {plan.snapshot['id'][:8]} failed: "
                    f"{_explain_restore_error(text, plan.no_owner)}; "
                    f"database {plan.target_db!r} was not changed"
                )
        on_event(Event(job_id, "swap", bytes_done=written, bytes_total=total,
                       message=f"renaming {plan.temp_db} to {plan.target_db}"))
        _swap(plan)
    except BaseException:
        try:
            _drop(server, plan.temp_db)
        except EngineError:
            warnings.append(f"could not drop temporary database {plan.temp_db}")
        raise
    if plan.old_db and plan.drop_old:
        _drop(server, plan.old_db)
    on_event(Event(job_id, "done", bytes_done=written, bytes_total=total,
                   message=f"restored into {plan.target_db}", final=True))
    return DbRestoreResult(plan.snapshot["id"], plan.target_db,
                           None if plan.drop_old else plan.old_db, written, warnings)


def _swap(plan: DbRestorePlan) -> None:
    """Put the restored database in place; the old one (if any) keeps a dated name."""
    ident = sql.Identifier
    conn = _maintenance(plan.server)
    try:
        with conn.cursor() as cur:
            if not (plan.exists and plan.old_db):
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    ident(plan.temp_db), ident(plan.target_db)))
                return
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                        (plan.target_db,))
            owner = cur.fetchone()[0]
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                ident(plan.temp_db), ident(owner)))
            allow = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
            cur.execute(allow.format(ident(plan.target_db), sql.SQL("false")))
            try:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (plan.target_db,))
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    ident(plan.target_db), ident(plan.old_db)))
            except Exception:
                cur.execute(allow.format(ident(plan.target_db), sql.SQL("true")))
                raise
            try:
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    ident(plan.temp_db), ident(plan.target_db)))
            except Exception:
                # never leave the application without its database: put the old one back
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    ident(plan.old_db), ident(plan.target_db)))
                cur.execute(allow.format(ident(plan.target_db), sql.SQL("true")))
                raise
            cur.execute(allow.format(ident(plan.old_db), sql.SQL("true")))
    except Exception as e:  # psycopg2 errors: say what happened, in operator terms
        raise EngineError(f"could not put the restored database in place: {e}".strip()) from None
    finally:
        conn.close()
