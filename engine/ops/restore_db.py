"""restore db: a logical snapshot into a database, safely.

``plan_restore_db`` says what will happen (a new database, or a replacement
with the old one kept under a dated name) before anything is touched.
``execute_restore_db`` always restores into a temporary database first, with
``pg_restore --exit-on-error`` reading our stream on stdin; only when that
succeeded does it take the target's name. A failed restore drops the
temporary database and leaves the original untouched and serving.

The temporary database is created with the snapshot's encoding, locale provider,
collation, ctype and ICU locale (so collation-dependent indexes are right), and
gets the snapshot's owner, comment, ACL, ``ALTER DATABASE .. SET`` and ``ALTER
ROLE .. IN DATABASE .. SET`` before it takes the target's name (the ``database``
facts of a snapshot, docs/FORMAT.md 6.2). Roles are the server's: existing roles
are never changed unless the saved globals are applied on purpose
(``with_globals``); ``create_missing_roles`` only creates the roles the archive
and those properties name and the server lacks. Which roles those are is read
from the archive's table of contents before anything is written.

Crash safety (a kill at any moment, SIGKILL included). Before the temporary
database is created, a journal entry (``<state>/restore-db/<job>.json``, written
atomically) records which temporary database this run is about to create, on
which ``[[database]]``, by which process; its oid is added as soon as it exists.
The swap is one transaction: ``ALTER DATABASE .. RENAME`` may run inside a
transaction block, and the renames (and the owner handed over) commit together
or not at all, so the original never loses its name and is never closed to
connections (``datallowconn`` is not touched; the rename's exclusive lock on the
database holds back new sessions until the commit). A run that dies leaves at
most its temporary database and its journal entry: the next ``restore db`` on
the same server, or ``backup-tui doctor --fix``, drops that database -- only
when the journal names it and (once known) its oid still matches, never by its
name alone -- and removes the entry. The entry goes when its run ends.

Fault points for tests: ``BACKUP_TUI_FAULT_POINT=NAME`` makes the process
SIGKILL itself when it reaches the point of that name (``_fault_point``; the
names are in ``FAULT_POINTS``). Unset, the points cost one dict look-up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from engine.errors import EngineError, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.ops.restore_db_parallel import RestoreFailed, restore_directory, restore_sections
from engine.repo import locks as host
from engine.repo.repository import Repository
from engine.sources.pgconn import PgTarget, existing_roles, find_tool
from engine.sources.postgres import (
    Globals,
    RoleUse,
    archive_role_uses,
    dump_globals,
    mask_passwords,
    statement_text,
)

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
    no_acl: bool = False
    create_missing_roles: bool = False
    steps: list[str] = field(default_factory=list)
    # the snapshot's database properties; None for a snapshot taken before they were saved
    properties: dict | None = None
    uses: list[RoleUse] = field(default_factory=list)  # every role the restore names
    missing_roles: list[str] = field(default_factory=list)  # of those, what the server lacks
    globals_changes: list[str] = field(default_factory=list)  # with_globals: what changes
    notes: list[str] = field(default_factory=list)

    def needs(self, role: str) -> list[RoleUse]:
        return [u for u in self.uses if u.role == role]

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
            "properties": describe_properties(self.properties) if self.properties else [],
            "missing_roles": {r: [u.what for u in self.needs(r)] for r in self.missing_roles},
            "globals_changes": self.globals_changes,
            "notes": self.notes,
        }


@dataclass
class DbRestoreResult:
    snapshot: str
    target_db: str
    old_db: str | None
    bytes: int
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # what was applied: properties, roles

    def as_json(self) -> dict:
        return asdict(self)


def _ident(base: str, suffix: str) -> str:
    return base[: MAX_IDENT - len(suffix)] + suffix


def _maintenance(server: PgTarget):
    for db in ("postgres", "template1"):
        try:
            return server.connect(db)
        except EngineError as e:
            last = e
    raise last


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
MAX_COUNTED = 200  # tables whose rows count_rows counts; the rest are listed unnamed


def check_db_name(name: str) -> None:
    """UsageError unless ``name`` is a plain identifier: what a console offers to type."""
    if not _IDENT.fullmatch(name) or len(name.encode()) > MAX_IDENT:
        raise UsageError(f"{name!r} is not a valid database name: letters, digits, _ and $, "
                         f"starting with a letter or _, at most {MAX_IDENT} characters")


def default_name(base: str, day: str) -> str:
    """``<base>_restored_<day>``, cut to fit an identifier."""
    return _ident(base, f"_restored_{day}")


def count_rows(server: PgTarget, dbname: str) -> dict[str, int]:
    """The ordinary and partitioned tables of database ``dbname`` ("schema.table", the
    system's and extensions' own left out) with their row counts (``count(*)``), the
    first ``MAX_COUNTED`` by name; more are reported as ``{"...": n}`` (n tables)."""
    conn = server.connect(dbname)
    try:
        conn.set_session(readonly=True, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
                "'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
                "AND n.nspname NOT LIKE 'pg_temp%%' AND NOT EXISTS (SELECT 1 FROM pg_depend d "
                "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
                "AND d.deptype = 'e') ORDER BY 1, 2")
            tables = cur.fetchall()
            out: dict[str, int] = {}
            for schema, name in tables[:MAX_COUNTED]:
                cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)))
                out[f"{schema}.{name}"] = int(cur.fetchone()[0])
            if len(tables) > MAX_COUNTED:
                out["..."] = len(tables) - MAX_COUNTED
            return out
    except psycopg2.Error as e:
        raise EngineError(f"counting the rows of database {dbname!r}: {_first_line(e)}") \
            from None
    finally:
        conn.close()


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
    repo: Repository | None = None,
    no_acl: bool = False,
    create_missing_roles: bool = False,
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
    for n in range(100):  # a name no database has (two restores within one second)
        tail = f"{stamp}_{n}" if n else stamp
        temp_db = _ident(target_db, f"__restoring_{tail}")
        old_db = _ident(target_db, f"__old_{tail}") if exists else None
        if not database_exists(server, temp_db) and not (
                old_db and database_exists(server, old_db)):
            break
    plan = DbRestorePlan(snap, server, target_db, exists, replace, temp_db, old_db,
                         drop_old, no_owner, with_globals, no_acl, create_missing_roles)
    plan.properties = snap.get("postgres", {}).get("database")
    conn = _maintenance(server)
    try:
        server_num = conn.server_version
        with conn.cursor() as cur:
            roles = existing_roles(cur)
    finally:
        conn.close()
    plan.uses = property_uses(plan.properties)
    if repo is not None:
        major = int(snap.get("postgres", {}).get("server_major", 0))
        try:
            plan.uses += archive_uses(repo, snap, max(major, server_num // 10000))
        except EngineError as e:
            plan.notes.append(f"the roles the archive needs could not be listed: {e}")
    plan.missing_roles = sorted({u.role for u in plan.uses} - roles)
    blocking = blocking_uses(plan, set(plan.missing_roles))
    if blocking and not (with_globals or create_missing_roles):
        plan.notes.append("as planned, this restore will be refused: "
                          + missing_roles_message(plan, blocking))
    if with_globals:
        plan.steps.append("apply the roles and tablespaces saved with the dump (existing roles "
                          "are changed to their state at backup time)")
        if repo is not None:
            plan.globals_changes = globals_changes(repo, plan, server_num // 10000)
    elif create_missing_roles and plan.missing_roles:
        plan.steps.append("create the missing roles " + ", ".join(plan.missing_roles)
                          + " from the roles saved with the dump (existing roles unchanged)")
    what = (f"with encoding {plan.properties['encoding']}, "
            f"locale provider {plan.properties['locale_provider']}"
            if plan.properties else "with the server's default encoding and locale")
    plan.steps.append(f"create database {temp_db} {what} and restore snapshot {snap['id'][:8]} "
                      "into it")
    if plan.properties:
        plan.steps.append(f"give {temp_db} the owner, comment, ACL and settings saved with the "
                          "snapshot")
    else:
        plan.notes.append(f"snapshot {snap['id'][:8]} was taken before database properties "
                          "were saved: its owner, locale, ACL and settings are not restored")
    if exists:
        plan.steps.append(f"in one transaction: disconnect clients of {target_db}, rename it "
                          f"to {old_db} and {temp_db} to {target_db} (until it commits, "
                          f"{target_db} stays as it is, open to connections)")
        if drop_old:
            plan.steps.append(f"drop {old_db}")
    else:
        plan.steps.append(f"rename {temp_db} to {target_db}")
    return plan


# ------------------------------------------------------------------ roles
class ArchiveUnreadable(EngineError):
    """pg_restore could not read the archive (its own words in the message)."""


def run_tool(argv: list[str], env: dict | None = None, feed=None, wait=None,
             stdout=subprocess.DEVNULL) -> tuple[int, str, object]:
    """Run one client tool (pg_restore): ``feed(proc)`` writes its stdin (else it reads
    none), then ``wait(proc)`` (default ``proc.wait``) gives its exit status. Killed on
    any exception (cancel included). Returns (status, stderr text, what feed returned)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                                stdout=stdout, stderr=err, env=env)
        try:
            fed = feed(proc) if feed else None
            rc = wait(proc) if wait else proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        return rc, err.read().decode("utf-8", "replace"), fed


def archive_text(repo: Repository, snap: dict, major: int, args: list[str],
                 what: str = "table of contents") -> str:
    """What ``pg_restore ARGS`` prints over the snapshot's archive, streamed in (custom
    format) or with only its ``toc.dat`` materialized (directory format): ``-l`` lists
    the table of contents, the pre- and post-data sections give its SQL. EngineError
    naming ``what`` with pg_restore's own words when it fails (`ArchiveUnreadable`), or
    the repository's error when the stream cannot be read."""
    tool, _ = find_tool("pg_restore", major)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as folder:
        directory = "tree" in snap
        argv = [tool, *args]
        if directory:
            materialize(repo, snap, folder, only={"toc.dat"})
            argv += ["--format=directory", folder]
        rc, err, _ = run_tool(argv, stdout=out, feed=None if directory else
                              lambda proc: stream_into(repo, snap, proc, lambda n: None))
        if rc != 0:
            raise ArchiveUnreadable(f"pg_restore ({what}): " + err.strip()[-300:])
        out.seek(0)
        return out.read().decode("utf-8", "replace")


def archive_uses(repo: Repository, snap: dict, major: int) -> list[RoleUse]:
    """The (role, object) pairs of the archive's table of contents. pg_restore with the
    pre- and post-data sections (not --schema-only, which leaves out large objects'
    owners and grants) reads only the table of contents, at the start of the stream."""
    return archive_role_uses(archive_text(
        repo, snap, major, ["--section=pre-data", "--section=post-data", "-f", "-"]))


def property_uses(props: dict | None) -> list[RoleUse]:
    """The roles the database's own properties name."""
    if not props:
        return []
    uses = [RoleUse(props["owner"], "owner of the database itself", "owner")]
    for e in props.get("acl") or []:
        for role in (e["grantee"], e["grantor"]):
            if role:
                uses.append(RoleUse(role, "the database's own ACL (who may connect)", "acl"))
    for role in props.get("role_settings", {}):
        uses.append(RoleUse(role, "ALTER ROLE .. IN DATABASE .. SET", "settings"))
    seen: dict[tuple[str, str], RoleUse] = {}
    for u in uses:
        seen.setdefault((u.role, u.what), u)
    return list(seen.values())


def blocking_uses(plan: DbRestorePlan, missing: set[str]) -> list[RoleUse]:
    """The uses of missing roles that no chosen option leaves out."""
    out = []
    for u in plan.uses:
        if u.role not in missing or u.skip_with == "settings":
            continue
        if (u.skip_with == "owner" and plan.no_owner) or (u.skip_with == "acl" and plan.no_acl):
            continue
        out.append(u)
    return out


def missing_roles_message(plan: DbRestorePlan, blocking: list[RoleUse]) -> str:
    """Which roles, which objects need them, and the options that will work."""
    roles = sorted({u.role for u in blocking})
    lines = [f"snapshot {plan.snapshot['id'][:8]} needs roles that "
             f"{plan.server.where.rsplit('/', 1)[0]} lacks; nothing was changed:"]
    for role in roles:
        whats = [u.what for u in plan.uses if u.role == role and u.skip_with != "settings"]
        shown = "; ".join(whats[:8]) + (f"; and {len(whats) - 8} more" if len(whats) > 8 else "")
        lines.append(f"  role {role}: {shown}")
    saved = bool(plan.snapshot.get("globals"))
    lines.append("  --create-missing-roles creates " + ", ".join(roles)
                 + (" from the roles saved with the snapshot" if saved else
                    " (no roles were saved with this snapshot: as plain NOLOGIN roles)")
                 + "; existing roles are not changed")
    uses = [u for u in plan.uses if u.role in roles]
    hard = [u for u in uses if u.skip_with == ""]
    flags = []
    if any(u.skip_with == "owner" for u in uses):
        flags.append("--no-owner")
    if any(u.skip_with == "acl" for u in uses):
        flags.append("--no-acl")
    if hard:
        names = "; ".join(f"{u.what} (role {u.role})" for u in hard[:5])
        lines.append(f"  --no-owner/--no-acl cannot help: {names} cannot be restored without "
                     "the role (a policy's or user mapping's roles are part of it)")
    elif flags:
        lines.append(f"  or {' '.join(flags)}: the objects then belong to "
                     f"{plan.server.user!r} and grants to the missing roles are left out")
    lines.append("  or create the roles yourself and restore again")
    return "\n".join(lines)


def _saved_globals(repo: Repository, plan: DbRestorePlan) -> Globals | None:
    gids = plan.snapshot.get("globals", [])
    if not gids:
        return None
    script = b"".join(repo.load_blob(g, "data") for g in gids)
    return Globals.parse(script.decode("utf-8", "replace"))


def globals_changes(repo: Repository, plan: DbRestorePlan, server_major: int) -> list[str]:
    """What applying the saved globals would change on the server (no password hashes)."""
    saved = _saved_globals(repo, plan)
    if saved is None:
        return ["no roles were saved with this snapshot: --with-globals changes nothing"]
    current_sql, notes = dump_globals(plan.server.with_db("postgres"), server_major)
    if not current_sql:
        return [f"the server's roles could not be read to compare ({'; '.join(notes)}): every "
                "saved role would be applied: " + ", ".join(saved.roles)]
    current = Globals.parse(current_sql.decode("utf-8", "replace"))
    readable = not any("without role passwords" in n for n in notes)
    return saved.changes_against(current, readable)


def create_missing_roles(repo: Repository, plan: DbRestorePlan) -> tuple[list[str], list[str]]:
    """Create the roles the restore names and the server lacks, from the saved globals:
    their attributes, password, settings, comment and memberships in other roles.
    Existing roles are not touched (no membership is granted to them). Returns (notes,
    warnings)."""
    saved = _saved_globals(repo, plan) or Globals()
    notes: list[str] = []
    warnings: list[str] = []
    conn = _maintenance(plan.server)
    try:
        with conn.cursor() as cur:
            missing = sorted({u.role for u in plan.uses} - existing_roles(cur))
            for role in missing:
                stmts = saved.roles.get(role)
                try:
                    if not stmts:
                        cur.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
                        warnings.append(f"role {role} was not among the saved roles: created "
                                        "as a plain NOLOGIN role")
                        continue
                    for toks in stmts:
                        text = statement_text(toks)
                        if toks[0].up == "CREATE" or toks[0].up == "ALTER" and len(toks) > 3 \
                                and toks[3].up == "WITH":
                            cur.execute(text)  # a failure here fails the restore
                        else:
                            try:
                                cur.execute(text)
                            except psycopg2.Error as e:
                                warnings.append(f"role {role}: {mask_passwords(text)[:120]} "
                                                f"failed: {_first_line(e)}")
                except psycopg2.Error as e:
                    raise EngineError(f"could not create role {role}: {_first_line(e)}; "
                                      "nothing else was changed") from None
                attrs = " ".join(a for toks in stmts for a in _with_words(toks))
                notes.append(f"created role {role} ({attrs})" if attrs else
                             f"created role {role}")
            have = existing_roles(cur)
            for granted, member, toks in saved.memberships:
                if member not in missing:
                    if granted in missing:
                        warnings.append(f"role {member} was not made a member of {granted} "
                                        "(an existing role is not changed)")
                    continue
                if granted not in have:
                    continue
                text = statement_text(toks)
                try:
                    cur.execute(text)
                except psycopg2.Error:
                    # GRANTED BY a role this server lacks: granted by us instead
                    cut = next((n for n, t in enumerate(toks) if t.up == "GRANTED"), len(toks))
                    try:
                        cur.execute(statement_text(toks[:cut]))
                    except psycopg2.Error as e:
                        warnings.append(f"could not grant {granted} to {member}: "
                                        f"{_first_line(e)}")
                        continue
                notes.append(f"role {member} made a member of {granted}")
    finally:
        conn.close()
    return notes, warnings


def _with_words(toks) -> list[str]:
    """The attribute words of ALTER ROLE .. WITH .., without the password."""
    if not (toks[0].up == "ALTER" and len(toks) > 3 and toks[3].up == "WITH"):
        return []
    out, skip = [], 0
    for t in toks[4:]:
        if skip:
            skip -= 1
            continue
        if t.up == "PASSWORD":
            out.append("with its saved password")
            skip = 1
            continue
        out.append(t.text)
    return out


def _first_line(e: Exception) -> str:
    return mask_passwords(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))


def _exec(server: PgTarget, *statements) -> None:
    conn = _maintenance(server)
    try:
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st[0], st[1] if len(st) > 1 else None)
    finally:
        conn.close()


def _oid(server: PgTarget, name: str) -> int | None:
    conn = _maintenance(server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (name,))
            row = cur.fetchone()
            return int(row[0]) if row else None
    finally:
        conn.close()


def _drop(server: PgTarget, name: str) -> None:
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    _exec(server, (drop,))


# ------------------------------------------------------------- crash safety
FAULT_POINTS = (
    "journal",         # the entry is written, the temporary database not yet created
    "created",         # CREATE DATABASE done, its oid not yet in the journal
    "pg_restore",      # pg_restore is running (after the first bytes of the stream)
    "restored",        # pg_restore finished, properties not yet applied
    "properties",      # the owner of the temporary database set, its ACL not yet
    "applied",         # properties applied, swap not yet begun
    "swap-begin",      # the swap transaction open, clients of the target terminated
    "swap-renamed-old",  # inside it: the target renamed to its dated name
    "swap-renamed-new",  # inside it: the temporary database renamed to the target's
    "swapped",         # committed; the journal entry not yet removed
)


def _fault_point(name: str) -> None:
    """Tests: die here, as a SIGKILL would, when BACKUP_TUI_FAULT_POINT names this point."""
    if os.environ.get("BACKUP_TUI_FAULT_POINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def journal_dir(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), "restore-db")


class SwapJournal:
    """One run's entry: what it is about to create and where, durable before it acts."""

    def __init__(self, folder: str, plan: DbRestorePlan, job_id: str, staged: str | None):
        self.path = os.path.join(folder, f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}.json")
        self.entry = {
            "version": 1, "job": job_id, "time": datetime.now(UTC).isoformat(),
            "host": host.hostname(), "boot": host.boot_id(), "pid": os.getpid(),
            "pid_start": host.pid_start(os.getpid()),
            "kind": plan.snapshot.get("kind"), "source": plan.server.name,
            "where": plan.server.where.rsplit("/", 1)[0],
            "target_db": plan.target_db, "temp_db": plan.temp_db, "temp_oid": None,
            "old_db": plan.old_db, "target_oid": None, "drop_old": plan.drop_old,
            "staged": staged, "phase": "creating",
        }

    def write(self, **changes) -> None:
        self.entry.update(changes)
        folder = os.path.dirname(self.path)
        try:
            shared = _make_journal_dir(folder)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if shared:  # other admins settle what this run leaves
                    os.fchmod(fd, 0o660)
                os.write(fd, json.dumps(self.entry, indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(folder)
        except OSError as e:
            raise EngineError(f"cannot record the database restore in {self.path}: "
                              f"{e.strerror or e}; nothing was changed on the server") from None

    def remove(self) -> None:
        try:
            os.unlink(self.path)
            _fsync_dir(os.path.dirname(self.path))
        except FileNotFoundError:
            pass


def _make_journal_dir(folder: str) -> bool:
    """The journal folder: shared with the admin group when the state directory is (it is
    setgid, engine/catalog.py), else the owner's alone. True when shared."""
    shared = bool(os.stat(os.path.dirname(folder)).st_mode & stat.S_ISGID)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return shared
    if shared:  # made just now, by us
        os.chmod(folder, 0o2770)
    return shared


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class JournalEntry:
    path: str
    entry: dict

    @property
    def source(self) -> str:
        return str(self.entry.get("source", ""))

    def alive(self) -> bool:
        """Is the run that wrote it still running (this host, this boot, same process)?"""
        e = self.entry
        if e.get("host") != host.hostname():
            return True  # another host's run: not ours to judge
        if e.get("boot") and host.boot_id() and e["boot"] != host.boot_id():
            return False
        pid = e.get("pid")
        if not isinstance(pid, int) or not host.pid_alive(pid):
            return False
        return e.get("pid_start") is None or host.pid_start(pid) == e.get("pid_start")

    def describe(self) -> str:
        e = self.entry
        return (f"restore of {e.get('target_db')!r} on {e.get('source')!r} "
                f"({e.get('where')}), job {e.get('job')}, pid {e.get('pid')}, "
                f"started {str(e.get('time', ''))[:19]}")


def journal_entries(state_dir: str | os.PathLike[str]) -> tuple[list[JournalEntry], list[str]]:
    """Every entry of the journal, and the files in it that cannot be read (named)."""
    folder = journal_dir(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"{folder}: cannot be read ({e.strerror or e})"]
    entries, bad = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith(".json"):
            continue
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read(65536))
            if not isinstance(data, dict) or not isinstance(data.get("temp_db"), str):
                raise ValueError("not a journal entry")
        except (OSError, ValueError) as e:
            bad.append(f"{path}: unreadable ({e})")
            continue
        entries.append(JournalEntry(path, data))
    return entries, bad


@dataclass
class Settled:
    """What settling one dead run's entry found, did (or, without fix, would do)."""

    entry: JournalEntry
    actions: list[str] = field(default_factory=list)  # done, or to do with fix
    notes: list[str] = field(default_factory=list)  # found, left alone on purpose
    problems: list[str] = field(default_factory=list)  # could not be settled
    done: bool = False  # the entry is (with fix: was) resolved and removed


def settle(entry: JournalEntry, server: PgTarget, fix: bool = True) -> Settled:
    """Undo what a dead run left on its server: its temporary database (by the journal's
    name and, once recorded, oid), its staged dump folder; then remove its entry. The old
    database of a run that committed its swap is kept (and named), even with --drop-old:
    the run that asked for it never finished."""
    e, out = entry.entry, Settled(entry)
    temp, target, old = e.get("temp_db"), e.get("target_db"), e.get("old_db")
    temp_oid = e.get("temp_oid")
    verb = "" if fix else "would "
    try:
        conn = _maintenance(server)
    except EngineError as err:
        out.problems.append(f"cannot check: {err}")
        return out
    try:
        with conn.cursor() as cur:
            def name_of(oid) -> str | None:
                cur.execute("SELECT datname FROM pg_database WHERE oid = %s", (oid,))
                row = cur.fetchone()
                return row[0] if row else None

            def oid_of(name) -> int | None:
                cur.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (name,))
                row = cur.fetchone()
                return int(row[0]) if row else None

            drop = None
            if isinstance(temp_oid, int):
                now = name_of(temp_oid)
                if now == temp:
                    drop = temp
                elif now == target:
                    out.notes.append(f"the swap had committed: {target} is the restored "
                                     "database")
                    if old and oid_of(old) is not None:
                        out.notes.append(f"the previous database is kept as {old}"
                                         + (" (--drop-old was asked, but its run did not "
                                            "finish: drop it yourself once checked)"
                                            if e.get("drop_old") else ""))
                elif now is not None:
                    out.notes.append(f"its temporary database (oid {temp_oid}) is now named "
                                     f"{now} (renamed since, by a later restore or by hand): "
                                     "left alone")
            elif oid_of(temp) is not None:
                # killed between CREATE DATABASE and recording its oid: the name was
                # journaled before it was created, with a time stamp no one else uses
                drop = temp
            if drop:
                out.actions.append(f"{verb}drop temporary database {drop} (left by a "
                                   "killed restore)")
                if fix:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(drop)))
            if target and oid_of(target) is None:
                out.problems.append(f"database {target} does not exist"
                                    + (f"; the previous one may be {old}"
                                       if old and oid_of(old) is not None else ""))
    except psycopg2.Error as err:
        out.problems.append(f"could not settle: {_first_line(err)}")
        return out
    finally:
        conn.close()
    staged = e.get("staged")
    if staged and os.path.isdir(staged):
        out.actions.append(f"{verb}remove the staged dump folder {staged}")
        if fix:
            shutil.rmtree(staged, ignore_errors=True)
    if fix and not out.problems:
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        out.done = True
    return out


def half_written(state_dir: str | os.PathLike[str]) -> list[str]:
    """Journal files a run killed inside ``SwapJournal.write`` left (``<entry>.<pid>.tmp``,
    never renamed into place, so no entry names them) whose process is gone."""
    folder = journal_dir(state_dir)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        m = re.fullmatch(r".+\.json\.(\d+)\.tmp", name)
        if m and int(m.group(1)) != os.getpid() and not host.pid_alive(int(m.group(1))):
            out.append(os.path.join(folder, name))
    return out


def remove_half_written(state_dir: str | os.PathLike[str]) -> list[str]:
    """Remove ``half_written`` files; what was removed."""
    gone = []
    for path in half_written(state_dir):
        try:
            os.unlink(path)
            gone.append(path)
        except FileNotFoundError:
            pass
    return gone


def settle_dead_runs(state_dir: str | os.PathLike[str], server: PgTarget) -> list[str]:
    """At the start of a restore: settle what dead runs left on the same server. Returns
    warnings (what was cleaned up, or could not be)."""
    out: list[str] = [f"removed a journal file an interrupted restore left half written: "
                      f"{p}" for p in remove_half_written(state_dir)]
    entries, _ = journal_entries(state_dir)
    for entry in entries:
        if entry.source != server.name or entry.alive():
            continue
        s = settle(entry, server, fix=True)
        out += [f"an interrupted earlier restore ({entry.describe()}): {m}"
                for m in s.actions + s.notes + s.problems]
    return out


def _explain_restore_error(text: str, no_owner: bool) -> str:
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return (f"the dump names role {m.group(1)!r}, which this server lacks: restore with "
                "--create-missing-roles, or create the role"
                + ("" if no_owner else ", or (for ownership and grants only) --no-owner "
                   "--no-acl"))
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return (lines[0] if lines else text.strip()[-500:]) or "unknown error"


def stream_into(repo: Repository, snap: dict, proc: subprocess.Popen, on_bytes,
                after_first=None) -> int:
    """Feed the snapshot's stream to a process's stdin; returns bytes written.
    ``after_first`` is called once the first blob is written."""
    written = 0
    assert proc.stdin is not None
    try:
        for bid in snap.get("stream", []):
            data = repo.load_blob(bid, "data")
            proc.stdin.write(data)
            if not written and after_first:
                proc.stdin.flush()
                after_first()
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
    return [f"globals: {mask_passwords(e)}" for e in errs[:10]]


def execute_restore_db(
    repo: Repository,
    plan: DbRestorePlan,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    scratch: str = "/tmp",
    state_dir: str | None = None,
) -> DbRestoreResult:
    """Restore aside, then swap (see the module docstring). ``scratch`` is the state
    directory's ``tmp``; the journal lives beside it (``state_dir``, by default the
    parent of ``scratch``)."""
    cancel = cancel or CancelToken()
    server = plan.server
    state = state_dir or os.path.dirname(os.path.abspath(scratch))
    major = int(plan.snapshot.get("postgres", {}).get("server_major", 0))
    facts_conn = _maintenance(server)
    try:
        server_num = facts_conn.server_version
        with facts_conn.cursor() as cur:
            roles = existing_roles(cur)
            cur.execute("SELECT spcname FROM pg_tablespace")
            tablespaces = {r for (r,) in cur.fetchall()}
    finally:
        facts_conn.close()
    server_major = server_num // 10000
    tool, _ = find_tool("pg_restore", max(major, server_major))
    total = int(plan.snapshot.get("stats", {}).get("size", 0))
    warnings: list[str] = settle_dead_runs(state, server)
    notes: list[str] = []
    if database_exists(server, plan.target_db) and not plan.replace:
        raise UsageError(f"database {plan.target_db!r} already exists (created meanwhile?)")
    missing = {u.role for u in plan.uses} - roles
    if missing and not (plan.with_globals or plan.create_missing_roles):
        blocking = blocking_uses(plan, missing)
        if blocking:  # before anything is changed
            raise EngineError(missing_roles_message(plan, blocking))
    if plan.with_globals:
        warnings += restore_globals(repo, plan, max(major, server_major))
        notes.append("applied the roles and tablespaces saved with the snapshot"
                     + (f" ({len(plan.globals_changes)} change(s))" if plan.globals_changes
                        else ""))
    elif plan.create_missing_roles and missing:
        made, warned = create_missing_roles(repo, plan)
        notes += made
        warnings += warned
    if plan.with_globals or plan.create_missing_roles:
        conn = _maintenance(server)
        try:
            with conn.cursor() as cur:
                missing = {u.role for u in plan.uses} - existing_roles(cur)
        finally:
            conn.close()
        blocking = blocking_uses(plan, missing)
        if blocking:
            raise EngineError(missing_roles_message(plan, blocking))
    own = set(property_uses(plan.properties))  # apply_properties speaks of these itself
    left: dict[str, list[str]] = {}
    for u in plan.uses:
        if u.role in missing and u not in own:
            left.setdefault(u.role, []).append(u.what)
    for role, whats in left.items():
        warnings.append(f"role {role} does not exist here, left out: {'; '.join(whats[:5])}"
                        + (f"; and {len(whats) - 5} more" if len(whats) > 5 else ""))
    create, warned = create_statement(plan.temp_db, plan.properties, server_num, tablespaces)
    warnings += warned
    directory = "tree" in plan.snapshot
    # scratch of this restore: the staged dump (directory format), or the archive's
    # head and -L lists (custom format, restore_db_parallel)
    folder = os.path.join(scratch, f"restore-{plan.temp_db}")
    journal = SwapJournal(journal_dir(state), plan, job_id, folder)
    journal.write()  # before anything exists on the server
    _fault_point("journal")
    try:
        _exec(server, (create,))
    except psycopg2.Error as e:
        journal.remove()
        raise EngineError(f"could not create database {plan.temp_db} with the snapshot's "
                          f"encoding and locale: {_first_line(e)}; nothing was restored") from None
    except BaseException:
        journal.remove()
        raise
    _fault_point("created")
    try:
        journal.write(temp_oid=_oid(server, plan.temp_db), phase="restoring",
                      target_oid=_oid(server, plan.target_db) if plan.exists else None)
        args = [tool, "--exit-on-error", "--no-password", "-d", plan.temp_db]
        if plan.no_owner:
            args += ["--no-owner"]
        if plan.no_acl:
            args += ["--no-acl"]

        def on_bytes(n: int) -> None:
            on_event(Event(job_id, "restore", bytes_done=n, bytes_total=total,
                           message=f"pg_restore into {plan.temp_db}"))
            cancel.check()

        env = server.with_db(plan.temp_db).env()
        try:
            if directory:  # in sections, the tables' data streamed by parallel COPYs
                written = restore_directory(
                    repo, plan.snapshot, tool, args + ["--format=directory"], env, folder,
                    lambda: server.connect(plan.temp_db), on_bytes, cancel,
                    lambda: _fault_point("pg_restore"))
            else:  # streamed custom format: in sections, post-data in parallel
                written = restore_sections(repo, plan.snapshot, tool, args, env, folder,
                                           on_bytes, cancel, lambda: _fault_point("pg_restore"))
        except RestoreFailed as e:
            step = f" ({e.step})"
            raise EngineError(
                f"restore of snapshot {plan.snapshot['id'][:8]} failed{step}: "
                f"{_explain_restore_error(e.text, plan.no_owner)}; "
                f"database {plan.target_db!r} was not changed") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        _fault_point("restored")
        if plan.properties:
            on_event(Event(job_id, "properties", bytes_done=written, bytes_total=total,
                           message=f"owner, ACL and settings of {plan.temp_db}"))
            applied, warned = apply_properties(plan)
            notes += applied
            warnings += warned
        else:
            notes.append(f"snapshot {plan.snapshot['id'][:8]} was taken before database "
                         "properties were saved: only its contents were restored (owner, "
                         "locale, ACL and settings are the server's defaults)")
        _fault_point("applied")
        on_event(Event(job_id, "swap", bytes_done=written, bytes_total=total,
                       message=f"renaming {plan.temp_db} to {plan.target_db}"))
        journal.write(phase="swapping")
        _swap(plan, keep_owner=not plan.properties or plan.no_owner)
    except BaseException as e:
        left = ""
        try:
            _drop(server, plan.temp_db)
            journal.remove()
        except (EngineError, psycopg2.Error) as why:
            left = (f"; the temporary database {plan.temp_db} could not be dropped "
                    f"({_first_line(why)}): the next restore on this server or 'backup-tui "
                    "doctor --fix' drops it")
        if isinstance(e, psycopg2.Error):  # a statement of ours the server refused
            raise EngineError(f"restore of snapshot {plan.snapshot['id'][:8]} failed: "
                              f"{_first_line(e)}; database {plan.target_db!r} was not "
                              f"changed{left}") from None
        if left and isinstance(e, EngineError):
            e.args = (f"{e}{left}",)
        raise
    _fault_point("swapped")
    journal.remove()
    if plan.old_db and plan.drop_old:
        try:
            _drop(server, plan.old_db)
        except (EngineError, psycopg2.Error) as e:
            warnings.append(f"the restore is in place, but the old database {plan.old_db} "
                            f"could not be dropped ({_first_line(e)}): it is kept")
            plan.drop_old = False
    on_event(Event(job_id, "done", bytes_done=written, bytes_total=total,
                   message=f"restored into {plan.target_db}", final=True))
    return DbRestoreResult(plan.snapshot["id"], plan.target_db,
                           None if plan.drop_old else plan.old_db, written, warnings, notes)


def _swap(plan: DbRestorePlan, keep_owner: bool = True, attempts: int = 5) -> None:
    """Put the restored database in place, in one transaction: the old one (if any) takes
    its dated name and, with keep_owner (no saved owner applied), hands its owner to the
    new one. A kill or error before the commit leaves everything as it was: the original
    under its name, open to connections (its ``datallowconn`` is never changed).

    The rename takes an exclusive lock on the database, which holds back new sessions
    until the commit, and fails while other sessions are connected: they are terminated
    first, in the same transaction; one that slips in before the lock makes the attempt
    fail, and the swap is tried again (``attempts``)."""
    ident = sql.Identifier
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    conn = _maintenance(plan.server)
    try:
        conn.autocommit = False
        for attempt in range(attempts):
            try:
                with conn.cursor() as cur:
                    if not (plan.exists and plan.old_db):
                        cur.execute(rename.format(ident(plan.temp_db), ident(plan.target_db)))
                        _fault_point("swap-renamed-new")
                        conn.commit()
                        return
                    if keep_owner:
                        cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                    "WHERE datname = %s", (plan.target_db,))
                        row = cur.fetchone()
                        if row is None:
                            raise EngineError(f"database {plan.target_db!r} vanished during "
                                              f"the restore; the restored one is dropped")
                        owner = row[0]
                        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                            ident(plan.temp_db), ident(owner)))
                    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()",
                                (plan.target_db,))
                    _fault_point("swap-begin")
                    cur.execute(rename.format(ident(plan.target_db), ident(plan.old_db)))
                    _fault_point("swap-renamed-old")
                    cur.execute(rename.format(ident(plan.temp_db), ident(plan.target_db)))
                    _fault_point("swap-renamed-new")
                conn.commit()
                return
            except psycopg2.errors.ObjectInUse:
                conn.rollback()  # a session came in before the lock: terminate it again
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except psycopg2.Error as e:  # say what happened, in operator terms
        raise EngineError(f"could not put the restored database in place: "
                          f"{_first_line(e)}; {plan.target_db!r} was not changed") from None
    finally:
        conn.close()


# ------------------------------------------------------- database properties
# settings whose value is a list of quoted names (pg_dump's variable_is_guc_list_quote)
_LIST_QUOTE = {"local_preload_libraries", "search_path", "session_preload_libraries",
               "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}
_PRIVILEGES = {"CREATE", "TEMPORARY", "CONNECT"}
_PROVIDERS = {"libc", "icu", "builtin"}


def _guc_list(value: str) -> list[str]:
    """Split a stored list setting (``app, "$user", public``) into its names."""
    out, i = [], 0
    while i < len(value):
        while i < len(value) and value[i] in " \t\n":
            i += 1
        if i >= len(value):
            break
        if value[i] == '"':
            name, i = "", i + 1
            while i < len(value):
                if value[i] == '"':
                    if value[i + 1: i + 2] == '"':
                        name, i = name + '"', i + 2
                        continue
                    i += 1
                    break
                name, i = name + value[i], i + 1
        else:
            start = i
            while i < len(value) and value[i] not in ", \t\n":
                i += 1
            name = value[start:i]
        out.append(name)
        while i < len(value) and value[i] in " \t\n":
            i += 1
        if i < len(value) and value[i] == ",":
            i += 1
    return out


def set_clause(setting: str) -> sql.Composed:
    """``SET name TO value`` for one stored ``name=value`` (pg_db_role_setting)."""
    name, _, value = setting.partition("=")
    ident = sql.SQL(".").join(sql.Identifier(p) for p in name.split("."))
    if name.lower() in _LIST_QUOTE:
        values = sql.SQL(", ").join(sql.Literal(v) for v in _guc_list(value))
    else:
        values = sql.Literal(value)
    return sql.SQL("SET {} TO {}").format(ident, values)


def describe_properties(props: dict) -> list[str]:
    """The properties in words, one line each."""
    locale = f"locale provider {props['locale_provider']}"
    if props.get("icu_locale"):
        locale += f" (ICU locale {props['icu_locale']})"
    if props.get("builtin_locale"):
        locale += f" (builtin locale {props['builtin_locale']})"
    out = [f"encoding {props['encoding']}, {locale}, collate {props['collate']}, "
           f"ctype {props['ctype']}", f"owner {props['owner']}"]
    if props.get("tablespace") not in (None, "pg_default"):
        out.append(f"tablespace {props['tablespace']}")
    if props.get("comment") is not None:
        out.append(f"comment {props['comment']!r}")
    if props.get("acl") is not None:
        out.append("ACL " + _acl_words(props["acl"]))
    for s in props.get("settings", []):
        out.append(f"ALTER DATABASE SET {s}")
    for role, settings in props.get("role_settings", {}).items():
        for s in settings:
            out.append(f"ALTER ROLE {role} IN DATABASE SET {s}")
    if props.get("connection_limit", -1) != -1:
        out.append(f"connection limit {props['connection_limit']}")
    return out


def _acl_groups(acl: list[dict]) -> list[tuple[str | None, str, bool, list[str]]]:
    """(grantee, grantor, grantable, privileges) in the order of the saved ACL."""
    groups: dict[tuple, list[str]] = {}
    for e in acl:
        groups.setdefault((e["grantee"], e["grantor"], bool(e["grantable"])),
                          []).append(e["privilege"])
    return [(k[0], k[1], k[2], v) for k, v in groups.items()]


def _acl_words(acl: list[dict]) -> str:
    if not acl:
        return "(no privileges for anyone)"
    return "; ".join(f"{grantee or 'PUBLIC'}: {', '.join(privs)}"
                     + (" (with grant option)" if grantable else "")
                     for grantee, _, grantable, privs in _acl_groups(acl))


def create_statement(name: str, props: dict | None, server_num: int,
                     tablespaces: set[str]) -> tuple[sql.Composed, list[str]]:
    """CREATE DATABASE with the snapshot's encoding, locale and tablespace; warnings."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    warnings: list[str] = []
    if not props:
        return sql.SQL(" ").join(parts), warnings
    provider = props.get("locale_provider") or "libc"
    if provider not in _PROVIDERS:
        raise EngineError(f"unknown locale provider {provider!r} in the snapshot")
    parts.append(sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Literal(props["encoding"]), sql.Literal(props["collate"]),
        sql.Literal(props["ctype"])))
    if server_num >= 150000:
        parts.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL(provider)))
        if provider == "icu":
            parts.append(sql.SQL("ICU_LOCALE {}").format(sql.Literal(props["icu_locale"])))
            if props.get("icu_rules"):
                if server_num < 160000:
                    raise EngineError("the snapshot's database has ICU rules, which this "
                                      "server (before PostgreSQL 16) cannot create")
                parts.append(sql.SQL("ICU_RULES {}").format(sql.Literal(props["icu_rules"])))
        if provider == "builtin":
            if server_num < 170000:
                raise EngineError("the snapshot's database uses the builtin locale provider, "
                                  "which this server (before PostgreSQL 17) lacks")
            parts.append(sql.SQL("BUILTIN_LOCALE {}").format(
                sql.Literal(props["builtin_locale"])))
    elif provider != "libc":
        raise EngineError(f"the snapshot's database uses the {provider} locale provider, "
                          "which this server (before PostgreSQL 15) cannot give a database")
    space = props.get("tablespace")
    if space and space != "pg_default":
        if space in tablespaces:
            parts.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(space)))
        else:
            warnings.append(f"tablespace {space} does not exist here: the database is in the "
                            "default tablespace")
    return sql.SQL(" ").join(parts), warnings


def apply_properties(plan: DbRestorePlan) -> tuple[list[str], list[str]]:
    """Give the restored (temporary) database the snapshot's owner, comment, ACL and
    settings, before it takes the target's name. Returns (notes, warnings)."""
    props = plan.properties
    assert props is not None
    ident = sql.Identifier
    db = ident(plan.temp_db)
    notes: list[str] = [describe_properties(props)[0]]
    warnings: list[str] = []
    conn = _maintenance(plan.server)
    try:
        with conn.cursor() as cur:
            roles = existing_roles(cur)
            owner = props["owner"]
            if plan.no_owner:
                notes.append(f"owner not restored (--no-owner; the snapshot's was {owner})")
            elif owner in roles:
                _run(cur, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, ident(owner)),
                     "set the owner")
                notes.append(f"owner {owner}")
            else:
                warnings.append(f"owner {owner} does not exist here: not restored")
            _fault_point("properties")
            if props.get("comment") is not None:
                cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    db, sql.Literal(props["comment"])))
                notes.append(f"comment {props['comment']!r}")
            if props.get("acl") is not None:
                notes.append(_apply_acl(cur, plan, roles, warnings))
            for setting in props.get("settings", []):
                try:
                    cur.execute(sql.SQL("ALTER DATABASE {} ").format(db) + set_clause(setting))
                    notes.append(f"ALTER DATABASE {plan.target_db} SET {setting}")
                except psycopg2.Error as e:
                    warnings.append(f"ALTER DATABASE SET {setting}: {_first_line(e)}")
            for role, settings in props.get("role_settings", {}).items():
                if role not in roles:
                    warnings.append(f"role {role} does not exist here: its settings in the "
                                    f"database ({', '.join(settings)}) are not restored")
                    continue
                for setting in settings:
                    try:
                        cur.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(
                            ident(role), db) + set_clause(setting))
                        notes.append(f"ALTER ROLE {role} IN DATABASE {plan.target_db} "
                                     f"SET {setting}")
                    except psycopg2.Error as e:
                        warnings.append(f"ALTER ROLE {role} IN DATABASE SET {setting}: "
                                        f"{_first_line(e)}")
            limit = props.get("connection_limit", -1)
            if limit != -1:
                cur.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                    db, sql.Literal(int(limit))))
                notes.append(f"connection limit {limit}")
            if props.get("is_template") or props.get("allow_connections") is False:
                warnings.append("the snapshot's database was "
                                + ("a template" if props.get("is_template") else
                                   "closed to connections")
                                + ": not applied to the restored one (set it by hand)")
    finally:
        conn.close()
    return [f"applied {n}" for n in notes], warnings


def _run(cur, statement, what: str) -> None:
    try:
        cur.execute(statement)
    except psycopg2.Error as e:
        raise EngineError(f"could not {what} of the restored database: "
                          f"{_first_line(e)}") from None


def _apply_acl(cur, plan: DbRestorePlan, roles: set[str], warnings: list[str]) -> str:
    """Replace the new database's ACL by the saved one, grantees mapped by name."""
    props = plan.properties
    assert props is not None
    db = sql.Identifier(plan.temp_db)
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                (plan.temp_db,))
    owner_now = cur.fetchone()[0]
    _run(cur, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db), "set the ACL")
    _run(cur, sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(owner_now)),
         "set the ACL")
    for grantee, grantor, grantable, privs in _acl_groups(props["acl"]):
        if grantee is not None and grantee not in roles:
            warnings.append(f"ACL entry for role {grantee} ({', '.join(privs)}) not restored: "
                            "the role does not exist here")
            continue
        bad = [p for p in privs if p not in _PRIVILEGES]
        if bad:
            warnings.append(f"ACL entry with unknown privileges {bad} not restored")
            continue
        grantee_sql = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
        if grantee is not None and grantee == props["owner"]:
            grantee_sql = sql.Identifier(owner_now)  # the owner's own entry stays the owner's
        grant = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privs), db, grantee_sql)
        if grantable:
            grant += sql.SQL(" WITH GRANT OPTION")
        as_grantor = grantor not in (props["owner"], owner_now) and grantor in roles
        if as_grantor:
            cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(grantor)))
        try:
            _run(cur, grant, "set the ACL")
        finally:
            if as_grantor:
                cur.execute("RESET ROLE")
    kept = [e for e in props["acl"] if e["grantee"] is None or e["grantee"] in roles]
    return "ACL " + _acl_words(kept)
