"""What a restore wizard asks the engine besides the plan: which snapshot was current at a
time, what is in a snapshot's tree, how long a restore will take, and whether it worked.

Words. *As of* a time: the newest snapshot of a source taken at or before it; a time
in the future is refused (nothing is known about it), as is one before the first
backup (``resolve.newest_before``). A *listing* is one directory of a snapshot's tree
(files snapshots, base backups), the way ``restore files --path`` and ``dump --path``
find paths (``engine.repo.walk.find``, names checked). An *estimate* comes from past
restores of the same source (their bytes per second, applied to this one's bytes),
else from its restore drills (their median RTO), else from past restores of the same
kind; never from nothing. The *check* of a finished restore is the kind's own
(``Source.check_restore``), given the drills recorded of the restored snapshot.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.errors import UsageError
from engine.ops import resolve
from engine.repo.walk import children, find
from engine.sources import registry
from engine.sources.base import RestoreCheck

if TYPE_CHECKING:
    from engine.facade import Engine

RECENT = 5  # past restores or drills an estimate looks at


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a directory in a snapshot's tree."""

    name: str
    path: str  # absolute within the snapshot: /srv/app/x
    type: str  # file, dir, symlink, ...
    size: int


def as_of(engine: Engine, kind: str, source: str, text: str,
          now: datetime | None = None) -> tuple[dict, float]:
    """The newest snapshot of (kind, source) at or before the typed time ``text``, and how
    many seconds before it; UsageError for a time in the future or unreadable."""
    when = engine.parse_time(text)
    now = now or datetime.now(when.tzinfo)
    if when > now:
        raise UsageError(f"{when.isoformat(timespec='seconds')} is in the future (now is "
                         f"{now.astimezone(when.tzinfo).isoformat(timespec='seconds')}): "
                         "give a time up to now")
    best = resolve.newest_before(engine.snapshots(source=source, kind=kind), source, when)
    return engine.repo().load_snapshot(best.id), (when - best.time).total_seconds()


def list_dir(engine: Engine, snap: dict, path: str) -> list[TreeEntry]:
    """The entries of directory ``path`` ("/" for the top) of a snapshot with a tree,
    directories first, then by name."""
    if not isinstance(snap.get("tree"), str):
        raise UsageError(f"snapshot {snap['id'][:8]} has no tree of files to browse")
    repo = engine.repo()
    rel, node = find(repo, snap["tree"], path)
    if node["type"] != "dir":
        raise UsageError(f"{path} is not a directory in snapshot {snap['id'][:8]}")
    base = "/" + os.fsdecode(rel) if rel else ""
    out = [TreeEntry(os.fsdecode(name), f"{base}/{os.fsdecode(name)}", str(n["type"]),
                     int(n.get("size", 0)))
           for name, n in children(repo, node["subtree"], os.fsdecode(rel))]
    out.sort(key=lambda e: (e.type != "dir", e.name))
    return out


def _restore_jobs(engine: Engine, prefix: str) -> list[dict]:
    """Succeeded restore jobs whose target starts with ``prefix``, newest first, that
    wrote bytes and took time."""
    jobs = engine.catalog.lenient().jobs(500) or []
    return [j for j in jobs if j.get("kind") == "restore" and j.get("state") == "succeeded"
            and str(j.get("target", "")).startswith(prefix) and j.get("ended")
            and (j.get("bytes_done") or 0) > 0 and j["ended"] > j["started"]][:RECENT]


def estimate(engine: Engine, plan: Any) -> tuple[float | None, str]:
    """Seconds a restore of ``plan`` should take, and what the figure rests on."""
    snap = plan.snapshot
    size = int(plan.summary().get("bytes") or snap.get("stats", {}).get("size", 0) or 0)
    kind, source = snap["kind"], snap.get("source", "")

    def by_speed(prefix: str, what: str) -> tuple[float | None, str] | None:
        runs = _restore_jobs(engine, prefix)
        if not (runs and size):
            return None
        rate = statistics.median(j["bytes_done"] / (j["ended"] - j["started"]) for j in runs)
        return round(size / rate, 1), f"the speed of the last {len(runs)} restore(s) of {what}"

    mine = by_speed(f"{kind}:{source} -> ", f"{kind}:{source}")
    if mine:
        return mine
    drills = [d for d in engine.catalog.lenient().drills(kind, source, 20) or []
              if d.get("ok") and d.get("rto_seconds")][:RECENT]
    if drills:
        return (round(statistics.median(float(d["rto_seconds"]) for d in drills), 1),
                f"the median time of the last {len(drills)} restore drill(s) of "
                f"{kind}:{source}")
    return by_speed(f"{kind}:", f"any {kind} source") or \
        (None, "no past restore or drill to go by")


def check(engine: Engine, plan: Any, result: Any) -> RestoreCheck:
    """The kind's validation of a finished restore (``Source.check_restore``)."""
    snap = plan.snapshot
    cls = registry.kind(snap["kind"])
    drills = [d for d in engine.catalog.lenient().drills(snap["kind"], snap.get("source"), 50)
              or [] if d.get("snapshot") == snap["id"] and d.get("ok")]
    return cls.check_restore(engine.config, engine.repo(), plan, result, drills)
