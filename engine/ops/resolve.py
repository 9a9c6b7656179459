"""Which snapshot: the inventory rows, and resolving what a user typed.

A reference is a full id, a unique prefix of at least 8 hex characters, or
``latest`` (of one source, with ``source`` where several exist); a time is
ISO 8601, read in the schedule's time zone when it has no offset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from engine.catalog import Catalog
from engine.errors import EngineError, NotFound, UsageError
from engine.repo.repository import Repository


@dataclass(frozen=True)
class SnapshotInfo:
    """One row of the inventory."""

    id: str
    time: datetime
    kind: str
    source: str
    host: str
    size: int
    added: int
    complete: bool
    parent: str | None
    files: int
    verified: str | None = None
    replicas: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "time": self.time.astimezone(UTC).isoformat(),
            "kind": self.kind,
            "source": self.source,
            "host": self.host,
            "size": self.size,
            "added": self.added,
            "complete": self.complete,
            "verified": self.verified,
            "replicas": dict(self.replicas),
        }


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _row(snap: dict, stored: int) -> tuple:
    """The inventory's fields of a snapshot record, in ``Catalog.ROW_FIELDS`` order."""
    stats = snap.get("stats", {})
    parent = snap.get("parent")
    duration = stats.get("duration")
    return (  # text as text, whatever a malformed record holds (the catalog stores these)
        stored,
        str(snap["time"]),
        str(snap["kind"]),
        str(snap.get("source", "")),
        str(snap.get("host", "")),
        int(stats.get("size", 0)),
        int(stats.get("added", 0)),
        int(not snap.get("incomplete", False)),
        None if parent is None else str(parent),
        int(stats.get("files", 0)),
        float(duration) if isinstance(duration, int | float) else None,
    )


def _info(sid: str, row: tuple, verified: float | None,
          replicas: dict[str, bool]) -> SnapshotInfo:
    _stored, time, kind, source, host, size, added, complete, parent, files, _took = row
    return SnapshotInfo(
        id=sid,
        time=datetime.fromisoformat(time),
        kind=kind,
        source=source,
        host=host,
        size=size,
        added=added,
        complete=bool(complete),
        parent=parent,
        files=files,
        verified=iso(verified),
        replicas=replicas,
    )


def repo_key(repo: Repository) -> str:
    """A repository as the catalog's cache of inventory rows knows it: its id and its config's
    authenticator (made with its key), so that another repository under the same id (a
    copy re-keyed, a forgery) never meets rows read from this one."""
    return f"{repo.id}:{repo.config.get('mac', '')}"


def inventory_rows(repo: Repository, catalog: Catalog) -> dict[str, tuple]:
    """Snapshot id -> inventory fields (``Catalog.ROW_FIELDS``) of every readable snapshot
    record; unreadable ones are named in ``repo.snapshot_errors`` (as ``repo.snapshots()``
    does). A record the catalog has read before is only checked: its stored bytes, of the
    size they had, still hash to its name, so they are the bytes that were read and
    authenticated then. Others are opened, and their fields cached (when the catalog
    can be written; a user who may not write it reads every record each time)."""
    key = repo_key(repo)
    cached = catalog.snapshot_rows(key)
    repo.snapshot_errors = {}
    out: dict[str, tuple] = {}
    new: dict[str, tuple] = {}
    for sid in repo.list_ids("snapshots"):
        row = cached.get(sid)
        stored = repo.listed_size("snapshots", sid)
        try:
            if row is not None and row[0] == stored:
                repo.stored_record("snapshots", sid)
                out[sid] = row
                continue
            snap = repo.load_snapshot(sid)
        except EngineError as e:
            repo.snapshot_errors[sid] = str(e)
            continue
        out[sid] = row = _row(snap, stored if stored is not None else -1)
        if all(-(1 << 63) <= v < 1 << 63 for v in row if isinstance(v, int)):  # SQLite's range
            new[sid] = row
    gone = [sid for sid in cached if sid not in out]
    if new or gone:
        catalog.lenient().cache_snapshot_rows(key, new, gone)
    return out


def snapshot_infos(repo: Repository, catalog: Catalog, replica_names: list[str],
                   source: str | None = None, kind: str | None = None) -> list[SnapshotInfo]:
    """The inventory, oldest first, with verification times and replica presence."""
    verified = catalog.verified()
    presence = catalog.replica_presence()
    out = [
        _info(sid, row, verified.get(sid),
              {n: sid in presence.get(n, ()) for n in replica_names})
        for sid, row in inventory_rows(repo, catalog).items()
        if (source is None or row[3] == source) and (kind is None or row[2] == kind)
    ]
    out.sort(key=lambda i: i.time)
    return out


def resolve(repo: Repository, infos: list[SnapshotInfo], ref: str,
            source: str | None = None) -> dict:
    """The snapshot record ``ref`` names; ``infos`` are the inventory rows of ``source``."""
    if ref == "latest":
        if not infos:
            raise NotFound("no snapshots" + (f" of source {source!r}" if source else ""))
        sources = {i.source for i in infos}
        if source is None and len(sources) > 1:
            raise UsageError(
                f"'latest' is ambiguous: snapshots of {len(sources)} sources exist "
                f"({', '.join(sorted(sources))}); add --source NAME"
            )
        return repo.load_snapshot(infos[-1].id)
    ref = ref.lower()
    if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"snapshot {ref!r}: give a full id, 8+ hex characters, or 'latest'")
    matches = [sid for sid in repo.list_ids("snapshots") if sid.startswith(ref)]
    if not matches:
        raise NotFound(f"no snapshot matches {ref!r}")
    if len(matches) > 1:
        raise UsageError(
            f"snapshot prefix {ref!r} is ambiguous: it matches {len(matches)} snapshots "
            f"({', '.join(m[:12] for m in matches[:5])}); give more characters"
        )
    return repo.load_snapshot(matches[0])


def newest_before(infos: list[SnapshotInfo], source: str, when: datetime) -> SnapshotInfo:
    """The newest of a source's inventory rows taken at or before ``when``."""
    before = [i for i in infos if i.time <= when]
    if not before:
        if not infos:
            raise NotFound(f"no snapshots of source {source!r}")
        raise NotFound(
            f"no snapshot of {source!r} at or before {when.isoformat()}: the first one "
            f"was taken at {infos[0].time.isoformat()}"
        )
    return before[-1]


def parse_time(text: str, tz: tzinfo) -> datetime:
    """ISO 8601; without an offset it is read in ``tz``."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-26T14:00 or "
            "2026-11-26T14:00:00+01:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when
