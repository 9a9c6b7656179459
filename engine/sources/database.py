"""The ``db`` kind: a ``[[database]]`` backed up logically with pg_dump.

This module is the kind's face to the rest of the engine (config, backup entry
point, restore planning, the archive check of verify); pg_dump itself runs in
``engine/sources/postgres.py``, connections are resolved in ``pgconn.py``, and
``engine/ops/restore_db.py`` restores into a new database or swaps one in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, EngineError, UsageError
from engine.events import Event
from engine.sources import pgconn
from engine.sources.base import (
    BackupContext,
    BackupOutput,
    KindCheck,
    RestoreCheck,
    RestoreForm,
    Source,
    SourceConfig,
)


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig(SourceConfig):
    """One ``[[database]]``: where to connect, and the pg_dump format."""

    section = "database"

    dsn: str = ""  # empty: $DATABASE_URL, else libpq's defaults (PG* variables, ~/.pgpass)
    # "auto": "directory" for a database of AUTO_DIRECTORY_BYTES or more (when the scratch
    # folder has room for its largest files), else "custom"; see choose_format
    format: str = "auto"
    jobs: int = 0  # pg_dump -Fd -j; 0: the machine's cores, at most MAX_AUTO_JOBS
    drill_tables: tuple[str, ...] = ()  # tables whose row count a restore drill reports
    drill_max_age_hours: int = 0  # health: a last drill older fails it; 0: 192 h

    def validate(self, where: str, prefix: str) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"{where}: {prefix}.format must be 'auto', 'custom' or "
                              "'directory'")
        if self.jobs < 0:
            raise ConfigError(f"{where}: {prefix}.jobs must be 0 (the cores) or more")


FORMATS = ("auto", "custom", "directory")
AUTO_DIRECTORY_BYTES = 512 << 20  # format "auto": directory from this database size on
MAX_AUTO_JOBS = 4


def dump_jobs(config: DatabaseConfig) -> int:
    """pg_dump -j for the directory format: the configured jobs, else the cores (<= 4)."""
    import os

    return config.jobs or max(1, min(MAX_AUTO_JOBS, os.cpu_count() or 1))


def choose_format(config: DatabaseConfig, database_size: int, free: int) -> tuple[str, str]:
    """The format of this backup and why: the configured one, or with ``auto`` the
    directory format (tables dumped and restored in parallel) for a database of
    ``AUTO_DIRECTORY_BYTES`` or more whose scratch folder has ``free`` bytes for it (its
    files sit there while pg_dump writes them: up to the largest tables), else custom
    (one stream, nothing on disk)."""
    if config.format != "auto":
        return config.format, f"format {config.format} (configured)"
    mib = f"{database_size / (1 << 20):,.0f} MiB"
    if database_size < AUTO_DIRECTORY_BYTES:
        return "custom", (f"format auto: custom, the database is {mib} (directory from "
                          f"{AUTO_DIRECTORY_BYTES >> 20} MiB)")
    if free < database_size:
        return "custom", (f"format auto: custom, the database is {mib} but the scratch "
                          f"folder has only {free / (1 << 20):,.0f} MiB free for the "
                          "directory format's files")
    return "directory", (f"format auto: directory with {dump_jobs(config)} jobs, the "
                         f"database is {mib}")


class DatabaseSource(Source):
    kind = "db"
    config_type = DatabaseConfig
    label = "database"
    schedule = "database"
    default_cron = "0 2 * * *"
    schedule_text = "back up every database"
    example_name = "app"

    config: DatabaseConfig

    def target(self) -> pgconn.PgTarget:
        return pgconn.resolve(self.config)

    def description(self) -> str:
        try:
            t = self.target()
        except EngineError as e:
            return str(e)
        return f"{t.where}, from {t.origin}"

    def details(self) -> dict[str, str]:
        try:
            t = self.target()
        except EngineError as e:
            return {"connection": f"error: {e}"}
        return {"connection": t.where, "from": t.origin, "user": t.user}

    def status_fields(self) -> dict[str, Any]:
        """Where the connection goes and where that came from (config, $DATABASE_URL, libpq)."""
        try:
            t = self.target()
        except EngineError as e:
            return {"connection": {"error": str(e)}}
        return {"connection": {"name": self.name, "where": t.where, "from": t.origin,
                               "user": t.user}}

    def backup(self, ctx: BackupContext) -> BackupOutput:
        import os
        import shutil

        from engine.sources.pgconn import server_facts
        from engine.sources.postgres import dump_database, dump_database_directory

        target = self.target()
        ctx.on_event(Event(ctx.job_id, "connect", message=f"connecting to {target.where}"))
        previous = int(ctx.parent.get("stats", {}).get("size", 0)) if ctx.parent else 0
        facts = server_facts(target)  # also proves we can connect, with a clear error
        free = 0
        if self.config.format == "auto" and facts["database_size"] >= AUTO_DIRECTORY_BYTES:
            os.makedirs(ctx.scratch, exist_ok=True)
            free = shutil.disk_usage(ctx.scratch).free
        fmt, why = choose_format(self.config, facts["database_size"], free)
        ctx.on_event(Event(ctx.job_id, "connect", message=f"{target.where}: {why}"))

        def progress(done: int, db_size: int) -> None:
            # the total is an estimate: the last dump's size, else the database's size
            ctx.on_event(Event(ctx.job_id, "dump", bytes_done=done,
                               bytes_total=max(done, previous or db_size),
                               message=f"pg_dump {target.where}"))

        fields: dict[str, Any] = {}
        if fmt == "directory":
            fields["tree"], dumped = dump_database_directory(
                ctx.repo, ctx.writer, target, dump_jobs(self.config), str(ctx.scratch),
                progress, ctx.cancel, facts=facts)
        else:
            dumped = dump_database(ctx.repo, ctx.writer, target, progress, ctx.cancel,
                                   facts=facts)
        fields.update(stream=dumped.stream, globals=dumped.globals, postgres=dumped.facts,
                      warnings=dumped.warnings)
        return BackupOutput(fields=fields, size=dumped.bytes,
                            stats={"files": 0, "bytes_read": dumped.bytes},
                            warnings=dumped.warnings)

    # ------------------------------------------------------------- drill
    def drill(self, run) -> None:
        """Restore drill (engine/ops/drill.py): the newest dump into a throwaway server."""
        from engine.ops.drill import logical

        logical(run, self)

    # ------------------------------------------------------------ restore
    @classmethod
    def plan_restore(cls, config, repo, snap: dict, target_db: str = "",
                     replace: bool = False, drop_old: bool = False, no_owner: bool = False,
                     with_globals: bool = False, no_acl: bool = False,
                     create_missing_roles: bool = False, **unknown: Any):
        """Options: ``target_db``; ``replace`` (restore aside, then swap; ``drop_old``);
        ``no_owner`` / ``no_acl`` (pg_restore's: objects owned by the restoring user,
        object grants left out); ``create_missing_roles`` (create the roles the dump
        names that the server lacks, from the saved globals; existing roles unchanged);
        ``with_globals`` (apply the saved globals: changes existing roles, see the plan's
        ``globals_changes``)."""
        from engine.ops.restore_db import plan_restore_db
        from engine.sources import registry

        cls.reject_options(unknown)
        source = registry.find(config, cls.kind, snap["source"])
        if source is None:
            raise UsageError(f"snapshot {snap['id'][:8]} is of database {snap['source']!r}, "
                             "which is not in the config: add a [[database]] for its server")
        return plan_restore_db(snap, source.target(), target_db, replace, drop_old,
                               no_owner, with_globals, repo=repo, no_acl=no_acl,
                               create_missing_roles=create_missing_roles)

    @classmethod
    def restore(cls, config, repo, plan, job_id, on_event, cancel):
        from engine.ops.restore_db import execute_restore_db

        return execute_restore_db(repo, plan, job_id, on_event, cancel,
                                  str(config.state_dir / "tmp"))

    @classmethod
    def restore_form(cls, snap: dict) -> RestoreForm:
        """A new database (``<db>_restored_<today>``), or the database itself, replaced."""
        from datetime import datetime

        from engine.ops.restore_db import default_name

        dbname = str(snap.get("postgres", {}).get("dbname") or snap["source"])
        return RestoreForm("database", option="target_db",
                           default=default_name(dbname, datetime.now().strftime("%Y%m%d")),
                           replaces=dbname, replace_option="replace", noun="database",
                           on_stop="the temporary database was dropped and the target "
                           "database was not changed")

    @classmethod
    def check_target(cls, value: str) -> None:
        from engine.ops.restore_db import check_db_name

        check_db_name(value)

    @classmethod
    def check_restore(cls, config, repo, plan, result, drills: list[dict]) -> RestoreCheck:
        """Tables and row counts of the restored database, against the tables the
        snapshot's archive lists and the row counts a drill of this snapshot recorded."""
        from engine.ops.drill import toc_tables
        from engine.ops.restore_db import count_rows

        check = RestoreCheck()
        counts = count_rows(plan.server, result.target_db)
        more = counts.pop("...", 0)
        check.lines.append(f"{len(counts) + more} table(s), {sum(counts.values())} row(s) in "
                           f"database {result.target_db}"
                           + (f" ({more} table(s) not counted)" if more else ""))
        major = int(plan.snapshot.get("postgres", {}).get("server_major", 0))
        try:
            listed = [t.replace(" ", ".", 1) for t in toc_tables(repo, plan.snapshot, major)]
        except EngineError as e:
            check.lines.append(f"the archive's table list could not be read: {e}")
        else:
            missing = [t for t in listed if t not in counts] if not more else []
            if missing:
                check.problems.append(f"{len(missing)} table(s) of the archive are missing: "
                                      + ", ".join(missing[:10]))
            else:
                check.lines.append(f"all {len(listed)} table(s) the snapshot's archive lists "
                                   "are there")
        recorded: dict[str, int] = {}
        for d in drills:  # newest first: the newest drill's count of a table wins
            for table, n in (d.get("rows") or {}).items():
                parts = str(table).split(".")
                key = ".".join((["public"] + parts)[-2:]) if len(parts) < 3 else \
                    ".".join(parts[1:])
                recorded.setdefault(key, int(n))
        for table, n in counts.items():
            want = recorded.get(table)
            check.rows.append((table, n, want))
            if want is not None and want != n:
                check.problems.append(f"{table}: {n} row(s), the drill of this snapshot "
                                      f"counted {want}")
        if recorded:
            check.lines.append(f"row counts of {len(recorded)} table(s) compared with the "
                               "restore drill of this snapshot")
        else:
            check.lines.append("no row counts were recorded with this snapshot (a restore "
                               "drill records them for drill_tables)")
        return check

    # ------------------------------------------------------------- verify
    @classmethod
    def verify_snapshot(cls, repo, snap: dict) -> KindCheck:
        """The stream must be a pg_dump archive whose table of contents pg_restore lists."""
        from engine.ops.restore_db import ArchiveUnreadable, archive_text
        from engine.sources.pgconn import find_tool

        name = f"snapshots/{snap['id']}"
        major = int(snap.get("postgres", {}).get("server_major", 0))
        try:
            find_tool("pg_restore", major)
        except EngineError as e:
            return KindCheck(notes=[f"{name}: archive not checked: {e}"])
        try:
            text = archive_text(repo, snap, major, ["-l"])
        except ArchiveUnreadable as e:
            return KindCheck(problems=[f"{name}: not a readable pg_dump archive: {e}"])
        except EngineError as e:  # the stream itself cannot be read
            return KindCheck(problems=[str(e)])
        entries = sum(1 for ln in text.splitlines() if ln and not ln.startswith(";"))
        return KindCheck(notes=[f"{name}: pg_dump archive lists {entries} entries"],
                         checked=True)
