"""The ``cluster`` kind: a whole PostgreSQL cluster, backed up physically (``[[cluster]]``).

A base backup is ``pg_basebackup`` in tar format streamed into the repository
(``engine/sources/basebackup.py`` reads the stream); the snapshot holds the data
directory as a tree of the files format, plus the facts point-in-time recovery
needs (``postgres``: system identifier, timeline, start and stop LSN and their
WAL segments, the backup label, server version). WAL archiving
(``engine/wal.py``), PITR (``engine/ops/pitr.py``) and drills build on it;
``restore_base`` below is what they use to put a base backup back on disk.

A cluster snapshot is not restored with ``restore files`` or ``restore db``
(its place is a fresh data directory with recovery settings: ``restore
pitr``), but ``dump`` gives its data directory as a tar like any tree.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, EngineError, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.sources import pgconn
from engine.sources.base import (
    BackupContext,
    BackupOutput,
    KindCheck,
    RestoreForm,
    Source,
    SourceConfig,
)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(SourceConfig):
    """One ``[[cluster]]``: where to connect for base backups, its data directory, and the
    limits of its WAL archive and drills."""

    section = "cluster"

    dsn: str  # libpq URL of a role with REPLICATION, no password (~/.pgpass, passfile=)
    pgdata: str = ""  # the server's data directory (restore pitr --replace, docs)
    block_kib: int = 16  # block size for relation files, a multiple of 8 (KiB)
    max_rate: str = ""  # pg_basebackup --max-rate (e.g. "50M"); empty: no limit
    wal_max_age_minutes: int = 60  # health fails when the newest archived WAL is older
    ship_interval_seconds: int = 60  # the daemon ships new WAL to replicas this often
    drill_delay_minutes: int = 5  # cluster drills recover to now minus this
    drill_max_age_hours: int = 192  # health fails when the last drill is older
    drill_tables: tuple[str, ...] = ()  # tables whose row count a drill reports
    wal_prefetch: int = 16  # segments wal-fetch fetches ahead in restore pitr (0: none)
    delta: bool = True  # a changed block stored as a delta against the parent backup's block

    def validate(self, where: str, prefix: str) -> None:
        if not self.dsn.strip():
            raise ConfigError(f"{where}: {prefix}.dsn must not be empty (a libpq URL such as "
                              "postgresql://replicator@127.0.0.1:5432/postgres)")
        if self.pgdata and not os.path.isabs(self.pgdata):
            raise ConfigError(f"{where}: {prefix}.pgdata: {self.pgdata!r} is not an absolute "
                              "path")
        if self.block_kib < 8 or self.block_kib % 8 or self.block_kib > 4096:
            raise ConfigError(f"{where}: {prefix}.block_kib must be a multiple of 8 from 8 to "
                              f"4096 (PostgreSQL pages are 8 KiB), got {self.block_kib}")
        for key in ("wal_max_age_minutes", "ship_interval_seconds", "drill_delay_minutes",
                    "drill_max_age_hours"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}: {prefix}.{key} must not be negative")
        if not 0 <= self.wal_prefetch <= 256:
            raise ConfigError(f"{where}: {prefix}.wal_prefetch must be 0 to 256 (segments)")
        if self.max_rate and not self.max_rate.strip().rstrip("kKmM").isdigit():
            raise ConfigError(f"{where}: {prefix}.max_rate must be a number of kB/s, with an "
                              f"optional k or M suffix (pg_basebackup --max-rate), got "
                              f"{self.max_rate!r}")


def _reworded(e: EngineError) -> EngineError:
    """pgconn's messages name a 'database'; ours a 'cluster'."""
    text = str(e)
    if text.startswith("database "):
        text = "cluster " + text[len("database "):]
    return type(e)(text)


def server_facts(t: pgconn.PgTarget) -> dict:
    """What the backup needs before it starts: ``server_version`` (int), ``server_major``,
    ``system_identifier`` (decimal string), ``wal_segment_size``, ``databases`` ([(oid,
    bytes)] where readable). Through a normal connection (``pg_control_system()``), else
    through a replication connection (``IDENTIFY_SYSTEM``), which a role that may only
    replicate can open."""
    import psycopg2

    facts: dict[str, Any] = {"databases": []}
    first: EngineError | None = None
    try:
        conn = t.connect()
    except EngineError as e:
        conn, first = None, _reworded(e)
    if conn is not None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting('server_version_num')::int")
                facts["server_version"] = cur.fetchone()[0]
                for sql, key in (
                    ("SELECT system_identifier::text FROM pg_control_system()",
                     "system_identifier"),
                    ("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"
                     " AND unit = 'B'", "wal_segment_size"),
                ):
                    try:
                        cur.execute(sql)
                        row = cur.fetchone()
                        if row and row[0] is not None:
                            facts[key] = row[0]
                    except psycopg2.Error:
                        pass
                try:
                    cur.execute("SELECT oid, pg_database_size(oid) FROM pg_database "
                                "WHERE has_database_privilege(oid, 'CONNECT')")
                    facts["databases"] = [(int(o), int(s)) for o, s in cur.fetchall()]
                except psycopg2.Error:
                    pass
        finally:
            conn.close()
    if "system_identifier" not in facts or "server_version" not in facts:
        try:
            facts.update(_replication_facts(t))
        except EngineError as e:
            raise first or e from None
    facts["server_major"] = int(facts["server_version"]) // 10000
    return facts


def _replication_facts(t: pgconn.PgTarget) -> dict:
    import psycopg2
    from psycopg2.extras import PhysicalReplicationConnection

    from engine.sources.basebackup import parse_setting_bytes

    params = dict(t.params)
    params.setdefault("connect_timeout", "10")
    try:
        conn = psycopg2.connect(connection_factory=PhysicalReplicationConnection, **params)
    except psycopg2.OperationalError as e:
        raise _reworded(EngineError(pgconn.explain_connect_error(t, str(e)))) from None
    try:
        cur = conn.cursor()
        cur.execute("IDENTIFY_SYSTEM")
        sysid = cur.fetchone()[0]
        cur.execute("SHOW server_version_num")
        version = int(cur.fetchone()[0])
        cur.execute("SHOW wal_segment_size")
        seg = parse_setting_bytes(str(cur.fetchone()[0]))
    except psycopg2.Error as e:
        raise EngineError(f"cluster {t.name!r}: cannot identify the server at {t.where}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    out = {"system_identifier": str(sysid), "server_version": version}
    if seg:
        out["wal_segment_size"] = seg
    return out


def _server_now(t: pgconn.PgTarget) -> str | None:
    """The server's clock, ISO 8601 UTC (recovery targets are read on its clock)."""
    try:
        conn = t.connect()
    except EngineError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")
            return str(cur.fetchone()[0])
    except Exception:  # noqa: BLE001 - the local clock will do
        return None
    finally:
        conn.close()


class ClusterSource(Source):
    kind = "cluster"
    config_type = ClusterConfig
    label = "cluster"
    schedule = "cluster"
    default_cron = "0 1 * * *"
    schedule_text = "take a base backup of every cluster"
    example_name = "main"
    archives_wal = True  # WAL shipped and shown per copy (engine/ops/walship.py)

    config: ClusterConfig

    def target(self) -> pgconn.PgTarget:
        try:
            return pgconn.resolve(self.config)
        except EngineError as e:
            raise _reworded(e) from None

    def description(self) -> str:
        try:
            t = self.target()
        except EngineError as e:
            return str(e)
        return f"{t.where}" + (f", data in {self.config.pgdata}" if self.config.pgdata else "")

    def details(self) -> dict[str, str]:
        try:
            t = self.target()
        except EngineError as e:
            return {"connection": f"error: {e}"}
        out = {"connection": t.where, "user": t.user,
               "block size": f"{self.config.block_kib} KiB"}
        if self.config.pgdata:
            out["data directory"] = self.config.pgdata
        return out

    def status_fields(self) -> dict[str, Any]:
        try:
            t = self.target()
            conn: dict[str, Any] = {"name": self.name, "where": t.where, "from": t.origin,
                                    "user": t.user}
        except EngineError as e:
            conn = {"error": str(e)}
        return {"connection": conn, "pgdata": self.config.pgdata}

    # ------------------------------------------------------------- backup
    def backup(self, ctx: BackupContext) -> BackupOutput:
        from engine.sources import basebackup as bb

        t = self.target()
        ctx.on_event(Event(ctx.job_id, "connect", message=f"connecting to {t.where}"))
        started = bb.now_utc()
        server = server_facts(t)
        tool, version = pgconn.find_tool("pg_basebackup", server["server_major"])
        default = self.config.block_kib * 1024
        sizes = {f"base/{oid}".encode(): size for oid, size in server["databases"]}

        def block_for(directory: bytes) -> int:
            return bb.block_size_for(default, sizes.get(directory, 0))

        previous = int(ctx.parent.get("stats", {}).get("size", 0)) if ctx.parent else 0
        estimate = previous or sum(sizes.values()) + int(server.get("wal_segment_size") or 0)

        def progress(done: int, current: str) -> None:
            ctx.on_event(Event(ctx.job_id, "backup", bytes_done=done,
                               bytes_total=max(done, estimate), message=current))

        cmd = [tool, "-D", "-", "-Ft", "-X", "fetch", "--checkpoint=fast", "--no-password",
               "--verbose", f"--label=backup-tui {self.name}"]
        if self.config.max_rate:
            cmd.append(f"--max-rate={self.config.max_rate.strip()}")
        parent = None
        pfacts = (ctx.parent or {}).get("postgres")
        # the same cluster: its blocks are the bases of deltas
        if (self.config.delta and isinstance(pfacts, dict)
                and str(pfacts.get("system_identifier")) == str(server["system_identifier"])):
            parent = bb.ParentBlocks(ctx.repo, ctx.parent)
        res = bb.stream_basebackup(ctx.repo, ctx.writer, self.name, cmd, t.env(), t.user,
                                   block_for, progress, ctx.cancel, parent)
        stopped = _server_now(t) or bb.now_utc()
        facts = bb.postgres_facts(res, server, started, stopped)
        facts.update(pg_basebackup=version, where=t.where, connection_from=t.origin)
        fields: dict[str, Any] = {"tree": res.tree, "postgres": facts, "block_size": default,
                                  "pgdata": self.config.pgdata}
        if res.block_sizes:
            fields["block_sizes"] = res.block_sizes
        return BackupOutput(fields=fields, size=res.bytes,
                            stats={"dirs": res.dirs, "bytes_read": res.bytes,
                                   "delta_blocks": res.deltas},
                            items=res.files)

    # ------------------------------------------------------------- drill
    def drill(self, run) -> None:
        """Restore drill (engine/ops/drill.py): point-in-time recovery to now minus
        drill_delay_minutes into scratch space, started, validated."""
        from engine.ops.drill import physical

        physical(run, self)

    # ------------------------------------------------------------ restore
    @classmethod
    def _not_here(cls, snap: dict) -> UsageError:
        return UsageError(
            f"snapshot {snap['id'][:8]} is a base backup of cluster {snap['source']!r}: "
            f"restore it with 'backup-tui restore pitr --cluster {snap['source']} ...' "
            f"(or take its files with 'backup-tui dump {snap['id'][:8]} | tar -x')")

    @classmethod
    def plan_restore(cls, config, repo, snap: dict, **options: Any):
        raise cls._not_here(snap)

    @classmethod
    def restore_form(cls, snap: dict) -> RestoreForm:
        return RestoreForm("", instead=str(cls._not_here(snap)))

    @classmethod
    def restore(cls, config, repo, plan, job_id, on_event, cancel):
        raise cls._not_here(plan.snapshot)

    # ------------------------------------------------------------- verify
    @classmethod
    def verify_snapshot(cls, repo, snap: dict) -> KindCheck:
        """The data directory must hold backup_label (the one in the facts) and PG_VERSION
        (the server's major version)."""
        from engine.repo.walk import children

        name = f"snapshots/{snap['id']}"
        facts = snap.get("postgres") if isinstance(snap.get("postgres"), dict) else {}
        try:
            top = dict(children(repo, snap["tree"], ""))
            problems = []
            texts: dict[bytes, str] = {}
            for need in (b"backup_label", b"PG_VERSION"):
                node = top.get(need)
                if node is None or node.get("type") != "file":
                    problems.append(f"{name}: the data directory has no {need.decode()}")
                    continue
                if int(node.get("size", 0)) > 1024 * 1024:
                    problems.append(f"{name}: {need.decode()} is implausibly large")
                    continue
                texts[need] = b"".join(repo.load_blob(b, "data")
                                       for b in node.get("content", [])).decode("utf-8",
                                                                                "replace")
        except EngineError as e:
            return KindCheck(problems=[str(e)])
        version = texts.get(b"PG_VERSION", "").strip()
        if version and str(facts.get("server_major", version)) != version:
            problems.append(f"{name}: PG_VERSION says {version}, the snapshot's facts "
                            f"{facts.get('server_major')}")
        label = texts.get(b"backup_label")
        if label is not None and facts.get("backup_label") not in (None, label):
            problems.append(f"{name}: backup_label differs from the one in the snapshot's facts")
        if problems:
            return KindCheck(problems=problems)
        return KindCheck(notes=[f"{name}: base backup of PostgreSQL {version}, backup_label "
                                f"from {facts.get('start_lsn', '?')}"], checked=True)


# ---------------------------------------------------------------- restore_base
def restore_base(repo, snap: dict, pgdata: str | os.PathLike[str], job_id: str,
                 on_event: EventCallback, cancel: CancelToken | None,
                 owner: str | None = "postgres") -> dict:
    """Write a cluster snapshot's data directory into ``pgdata``, which must be empty or
    absent (then it is made, mode 0700, with missing parents 0755). Directories get mode
    0700 and files 0600; running as root, everything written (and ``pgdata`` when made
    here) belongs to ``owner`` (None: the owners stored in the snapshot). Returns
    ``{"files": n, "bytes": n, "warnings": [...]}``. Recovery settings are not written
    here (PITR does that)."""
    from engine.ops.restore import execute_restore, plan_restore

    if not isinstance(snap.get("tree"), str):
        raise UsageError(f"snapshot {snap.get('id', '?')[:8]} has no data directory tree")
    target = Path(os.path.abspath(pgdata))
    ids = None
    if owner is not None and os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise UsageError(f"restore of a data directory: no OS user {owner!r}") from None
        ids = (pw.pw_uid, pw.pw_gid)
    if target.is_symlink():
        raise UsageError(f"{target} is a symlink; give the real directory")
    made = False
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"{target} exists and is not a directory")
        if any(target.iterdir()):
            raise UsageError(f"{target} is not empty: a base backup is restored only into an "
                             "empty or new directory")
    plan = plan_restore(repo, snap, target)  # the whole tree checked: a bad one makes nothing
    if not target.exists():
        missing = [p for p in target.parents if not p.exists()][::-1]
        for p in missing:
            p.mkdir()
            p.chmod(0o755)
        target.mkdir(mode=0o700)
        target.chmod(0o700)
        made = True
        if ids is not None:
            os.chown(target, *ids)
    warnings: list[str] = []
    st = target.stat()
    if not made and (st.st_mode & 0o077) & ~0o050:
        warnings.append(f"{target}: mode {st.st_mode & 0o777:04o}: PostgreSQL starts only on "
                        "a data directory of mode 0700 or 0750")
    if not made and ids is not None and st.st_uid != ids[0]:
        warnings.append(f"{target}: not owned by {owner!r}: PostgreSQL will refuse it")
    # forked writers, one a core (at most 4): a data directory is many large files
    result = execute_restore(repo, plan, job_id, on_event, cancel,
                             processes=min(4, os.cpu_count() or 1))
    for root, dirs, files in os.walk(target):
        for n in dirs:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
        for n in files:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, 0o600)
        if ids is not None:
            for n in dirs + files:
                os.chown(os.path.join(root, n), *ids, follow_symlinks=False)
    return {"files": result.files, "bytes": result.bytes,
            "warnings": result.warnings + warnings}
