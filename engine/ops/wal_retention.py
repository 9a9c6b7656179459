"""WAL retention: archived WAL that no kept base backup can use expires with cleanup.

Recovery from a base backup replays WAL from the segment holding its start LSN
(``postgres.start_wal``) onward. For each cluster with archived WAL
(``wal/<cluster>/``), the oldest start segment among the cluster snapshots that
remain after the retention policy (pinned ones always remain) is the horizon:
segments, ``.partial`` and ``.backup`` files below it, on any timeline, are
needed by no kept backup and are deleted; ``.history`` files (tiny, and what
timeline switches are read from) and the identity record always stay. A
cluster with no remaining base backup keeps all its WAL (it may be the only
copy of changes a future base backup will not reach back to, and deleting it
could never be undone). A cluster snapshot whose start segment cannot be read
stops the expiry of that cluster, with the reason in the report.

Deletion runs under the exclusive repository lock (wal-push takes a shared one,
so it fails fast and PostgreSQL retries the segment later, never losing it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.repo.locks import RepoLock
from engine.repo.repository import Repository
from engine.wal import SEG_SIZE, list_wal, segment_number, wal_kind


@dataclass
class ClusterExpiry:
    cluster: str
    horizon: str | None = None  # the oldest kept base backup's start segment
    expired: list[str] = field(default_factory=list)  # WAL file names (deleted or to be)
    bytes: int = 0
    kept: int = 0
    note: str = ""

    def as_json(self) -> dict:
        return {"source": self.cluster, "horizon": self.horizon, "expired": len(self.expired),
                "bytes": self.bytes, "kept": self.kept, "note": self.note,
                "oldest_expired": self.expired[0] if self.expired else None,
                "newest_expired": self.expired[-1] if self.expired else None}


def archived_clusters(repo: Repository) -> list[str]:
    """The clusters with anything under ``wal/`` (one LIST)."""
    names = set()
    for info in repo.backend.list("wal/"):
        parts = info.name.split("/")
        if len(parts) >= 3 and parts[1]:
            names.add(parts[1])
    return sorted(names)


def horizons(snapshots: list[dict]) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """cluster -> (start segment name, segment number) of its oldest remaining base
    backup; and cluster -> why its expiry is stopped."""
    out: dict[str, tuple[str, int]] = {}
    stopped: dict[str, str] = {}
    for snap in snapshots:
        pg = snap.get("postgres") if isinstance(snap.get("postgres"), dict) else {}
        if "start_wal" not in pg and not _archives_wal(snap):
            continue  # not a base backup (a logical dump records no WAL position)
        name = snap.get("source", "")
        start = pg.get("start_wal")
        seg = int(pg.get("wal_segment_size") or SEG_SIZE)
        try:
            if not isinstance(start, str) or wal_kind(start) != "segment":
                raise EngineError("no start segment recorded")
            segno = segment_number(start, seg)
        except EngineError as e:
            stopped[name] = f"snapshot {str(snap.get('id'))[:8]}: {e}; WAL kept"
            continue
        if name not in out or segno < out[name][1]:
            out[name] = (start, segno)
    return out, stopped


def expire_wal(repo: Repository, remaining: list[dict], dry_run: bool,
               lock_wait: float, unreadable: int = 0) -> list[ClusterExpiry]:
    """Delete (dry_run: list) the WAL no remaining base backup needs. ``remaining``: the
    snapshots left after the retention policy. ``unreadable``: snapshots that could not
    be read; any makes the expiry stop (one of them could be an older base backup)."""
    clusters = archived_clusters(repo)
    if not clusters:
        return []
    if unreadable:
        return [ClusterExpiry(c, note=f"{unreadable} snapshot(s) unreadable: WAL kept")
                for c in clusters]
    bounds, stopped = horizons(remaining)
    report: list[ClusterExpiry] = []
    lock = None if dry_run else RepoLock(repo.backend, exclusive=True, purpose="cleanup (wal)")
    if lock:
        lock.acquire(wait=lock_wait)
    try:
        for cluster in clusters:
            r = ClusterExpiry(cluster)
            report.append(r)
            if cluster in stopped:
                r.note = stopped[cluster]
                continue
            if cluster not in bounds:
                r.note = "no base backup kept: WAL kept"
                continue
            r.horizon, horizon = bounds[cluster]
            seg = _segment_size(remaining, cluster)
            for w in list_wal(repo.backend, cluster, seg):
                segno = w.segno if w.kind != "backup" else segment_number(w.name[:24], seg)
                if w.kind == "history" or segno is None or segno >= horizon:
                    r.kept += 1
                    continue
                if not dry_run:
                    repo.backend.delete(f"wal/{cluster}/{w.object}")
                r.expired.append(w.name)
                r.bytes += w.size
    finally:
        if lock:
            lock.release()
    return report


def _archives_wal(snap: dict) -> bool:
    """Whether the snapshot's kind archives WAL (a base backup), by the registry."""
    from engine.sources import registry

    try:
        return registry.kind(str(snap.get("kind"))).archives_wal
    except EngineError:
        return False


def _segment_size(snapshots: list[dict], cluster: str) -> int:
    for snap in snapshots:
        pg = snap.get("postgres") if isinstance(snap.get("postgres"), dict) else {}
        if snap.get("source") == cluster and pg.get("wal_segment_size"):
            return int(pg["wal_segment_size"])
    return SEG_SIZE
