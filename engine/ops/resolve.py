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
from engine.errors import NotFound, UsageError
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


def _info(snap: dict, verified: float | None, replicas: dict[str, bool]) -> SnapshotInfo:
    stats = snap.get("stats", {})
    return SnapshotInfo(
        id=snap["id"],
        time=datetime.fromisoformat(snap["time"]),
        kind=snap["kind"],
        source=snap.get("source", ""),
        host=snap.get("host", ""),
        size=int(stats.get("size", 0)),
        added=int(stats.get("added", 0)),
        complete=not snap.get("incomplete", False),
        parent=snap.get("parent"),
        files=int(stats.get("files", 0)),
        verified=iso(verified),
        replicas=replicas,
    )


def snapshot_infos(repo: Repository, catalog: Catalog, replica_names: list[str],
                   source: str | None = None, kind: str | None = None) -> list[SnapshotInfo]:
    """The inventory, oldest first, with verification times and replica presence."""
    verified = catalog.verified()
    presence = catalog.replica_presence()
    out = [
        _info(s, verified.get(s["id"]),
              {n: s["id"] in presence.get(n, ()) for n in replica_names})
        for s in repo.snapshots()
        if (source is None or s.get("source") == source) and (kind is None or s["kind"] == kind)
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
