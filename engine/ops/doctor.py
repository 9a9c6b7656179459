"""doctor: find (and with fix, clean up) what interrupted runs left behind.

Today that is the database side of ``restore db`` (engine/ops/restore_db.py):

* the journal of database restores (``<state>/restore-db/``): an entry whose
  run is dead is settled -- its temporary ``NAME__restoring_*`` database
  dropped when the journal names it and its recorded oid still matches (never
  by the name alone), its staged dump folder removed, the entry removed. An
  entry whose run is alive is reported as running and left alone;
* every configured database server is also looked at, read-only:
  ``__restoring_`` databases the journal does not name (another tool's, a run
  of a version before the journal, or made by hand) and databases closed to
  connections (``datallowconn = false``; this tool no longer closes any, a
  version before the transactional swap could leave one so) are reported with
  the statement that would fix them, never changed.

Repository temporary objects are cleanup's (engine/ops/prune.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2

from engine.config import Config
from engine.errors import EngineError
from engine.ops.restore_db import (
    JournalEntry,
    _maintenance,
    half_written,
    journal_entries,
    remove_half_written,
    settle,
)
from engine.repo import locks as host
from engine.sources import registry
from engine.sources.pgconn import PgTarget


@dataclass
class DoctorReport:
    fix: bool
    fixed: list[str] = field(default_factory=list)  # done (fix=True)
    to_fix: list[str] = field(default_factory=list)  # what --fix would do (fix=False)
    running: list[str] = field(default_factory=list)  # runs still alive: left alone
    notes: list[str] = field(default_factory=list)  # found, not ours to change
    problems: list[str] = field(default_factory=list)  # could not be checked or settled

    @property
    def ok(self) -> bool:
        """Nothing left that --fix would do, and nothing that could not be checked."""
        return not self.to_fix and not self.problems

    def as_json(self) -> dict:
        return {"ok": self.ok, "fix": self.fix, "fixed": self.fixed, "to_fix": self.to_fix,
                "running": self.running, "notes": self.notes, "problems": self.problems}


def _servers(config: Config) -> dict[str, PgTarget]:
    """The configured sources that connect to a PostgreSQL server, by source name."""
    out: dict[str, PgTarget] = {}
    for src in registry.sources(config):
        target = getattr(src, "target", None)
        if not callable(target):
            continue
        try:
            t = target()
        except EngineError:
            continue
        if isinstance(t, PgTarget):
            out[src.name] = t
    return out


def _server_of(config: Config, entry: JournalEntry) -> PgTarget | None:
    src = registry.find(config, str(entry.entry.get("kind", "")), entry.source)
    target = getattr(src, "target", None) if src is not None else None
    if not callable(target):
        return None
    t = target()
    return t if isinstance(t, PgTarget) else None


def doctor(config: Config, fix: bool = False) -> DoctorReport:
    rep = DoctorReport(fix)
    entries, unreadable = journal_entries(config.state_dir)
    rep.problems += [f"restore journal: {b} (remove it once checked)" for b in unreadable]
    if fix:
        rep.fixed += [f"removed a half-written restore journal file {p}"
                      for p in remove_half_written(config.state_dir)]
    else:
        rep.to_fix += [f"would remove a half-written restore journal file {p}"
                       for p in half_written(config.state_dir)]
    recorded: set[tuple[str, str]] = set()
    for entry in entries:
        recorded.add((entry.source, str(entry.entry.get("temp_db"))))
        if entry.alive():
            other = entry.entry.get("host") != host.hostname()
            rep.running.append(f"{entry.describe()}: "
                               + (f"recorded on host {entry.entry.get('host')}, left alone"
                                  if other else "still running, left alone"))
            continue
        try:
            server = _server_of(config, entry)
        except EngineError as e:
            server, why = None, str(e)
        else:
            why = (f"[[database]] {entry.source!r} is no longer in the config: cannot "
                   f"check its server")
        if server is None:
            rep.problems.append(f"{entry.describe()} was interrupted; {why} (remove "
                                f"{entry.path} once you have checked for "
                                f"{entry.entry.get('temp_db')})")
            continue
        s = settle(entry, server, fix)
        head = f"{entry.describe()} was interrupted"
        (rep.fixed if fix else rep.to_fix).extend(f"{head}: {a}" for a in s.actions)
        rep.notes += [f"{head}: {n}" for n in s.notes]
        rep.problems += [f"{head}: {p}" for p in s.problems]
        if not fix and not s.problems:
            rep.to_fix.append(f"{head}: would remove its journal entry {entry.path}")
        elif s.done and not s.actions:
            rep.fixed.append(f"{head}: removed its journal entry (nothing else was left)")
    seen: set[str] = set()
    for name, server in _servers(config).items():
        where = server.where.rsplit("/", 1)[0]
        if where in seen:
            continue
        seen.add(where)
        _look_at_server(rep, name, server, where, recorded)
    return rep


def _look_at_server(rep: DoctorReport, name: str, server: PgTarget, where: str,
                    recorded: set[tuple[str, str]]) -> None:
    try:
        conn = _maintenance(server)
    except EngineError as e:
        rep.problems.append(f"{where}: cannot check: {e}")
        return
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname, datallowconn FROM pg_database "
                        "WHERE NOT datistemplate AND (NOT datallowconn OR "
                        "datname LIKE %s) ORDER BY 1", ("%\\_\\_restoring\\_%",))
            rows = cur.fetchall()
    except psycopg2.Error as e:
        rep.problems.append(f"{where}: cannot list databases: {str(e).strip()}")
        return
    finally:
        conn.close()
    temps = {t for _, t in recorded}
    for datname, allow in rows:
        if not allow:
            rep.notes.append(
                f"{where}: database {datname} is closed to connections (datallowconn = "
                "false); this tool no longer closes databases, but a restore --replace of a "
                "version before its transactional swap, killed, could leave one so. If that "
                f"is not on purpose: ALTER DATABASE \"{datname}\" ALLOW_CONNECTIONS true")
        if "__restoring_" in datname and datname not in temps:
            rep.notes.append(
                f"{where}: database {datname} looks like a temporary restore database, but "
                "no restore of this tool recorded it: left alone (drop it yourself if it is "
                "a leftover)")
