"""WAL to the replicas, and how far each copy's recovery point reaches.

wal-push writes only to the local repository (it must return fast and import no
boto3). ``ship`` copies what each replica lacks of ``keys/`` and ``wal/`` (the
replicate machinery with those classes only, under the same shared locks), and
the daemon runs it every ``ship_interval_seconds`` (the smallest of the
configured clusters'), so a region's recovery point lags the local one by about
that interval. A full ``replicate`` copies WAL too (``wal/`` is its last class).

``states`` is what status, health and metrics show per cluster: the newest
archived WAL file locally (its name and the time wal-push stored it, from its
authenticated header: the recovery point objective as it stands) and, per
replica, the newest one shipped there and when (recorded in the catalog by each
ship or replicate; ``wal_state`` table). A source kind archives WAL when its class
says so (``archives_wal``); nothing here names a kind.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.events import CancelToken
from engine.ops import replicate as replicate_op
from engine.repo.locks import RepoLock, reading
from engine.sources import registry

if TYPE_CHECKING:
    from engine.facade import Engine
    from engine.sources.base import Source

log = logging.getLogger("backup_tui.walship")
CLASSES = ("keys/", "wal/")
LOCK_WAIT = 10.0


def archiving_sources(engine: Engine) -> list[Source]:
    """The configured sources whose WAL is archived (the cluster kind)."""
    return [s for s in registry.sources(engine.config) if getattr(s, "archives_wal", False)]


def interval(engine: Engine) -> float | None:
    """Seconds between two ships: the smallest ship_interval_seconds; None when no
    source archives WAL or no replica is configured."""
    srcs = archiving_sources(engine)
    if not srcs or not engine.config.replicas:
        return None
    return float(max(1, min(int(getattr(s.config, "ship_interval_seconds", 60)) for s in srcs)))


def newest(engine: Engine, backend, cluster: str) -> dict | None:
    """The newest archived segment (or .partial/.history) of a cluster in ``backend``:
    {"wal", "archived" (unix time from its header), "timeline"}; None when none."""
    from engine import wal

    items = [w for w in wal.list_wal(backend, cluster) if w.kind in ("segment", "partial")]
    if not items:
        return None
    last = max(items, key=lambda w: (w.timeline, w.segno or 0, w.name))
    header = wal.wal_header(engine.repo(), backend, cluster, last.name)
    return {"wal": last.name, "archived": float(header.get("archived") or 0.0),
            "timeline": last.timeline}


def record(engine: Engine, replica: str, clusters: list[str]) -> None:
    """After a successful copy to ``replica``: what each cluster's newest local WAL is
    (the replica now holds it too)."""
    for cluster in clusters:
        try:
            top = newest(engine, engine.backend, cluster)
        except EngineError as e:
            log.warning("wal state of %s: %s", cluster, e)
            continue
        if top:
            engine.catalog.wal_shipped(replica, cluster, top["wal"], top["archived"])


def ship(engine: Engine, cancel: CancelToken | None = None) -> list[dict]:
    """Copy new WAL (and keys) to every replica; one replica failing does not stop the
    others. No job row (it runs every minute): failures are logged and kept in the
    catalog's wal_state, where status and health read them."""
    clusters = [s.name for s in archiving_sources(engine)]
    out = []
    if not clusters:
        return out
    with reading(engine.backend, "ship wal", wait=LOCK_WAIT):
        for r in engine.config.replicas:
            start = time.monotonic()
            try:
                remote = engine.replica_backend(r.name)
                with RepoLock(remote, exclusive=False,
                              purpose=f"ship wal to {r.name}").acquire(wait=LOCK_WAIT):
                    res = replicate_op.replicate_one(
                        engine.backend, remote, r.name, "wal-ship", lambda _e: None, cancel,
                        classes=CLASSES)
                record(engine, r.name, clusters)
                out.append({"replica": r.name, "ok": True, "uploaded": res.uploaded,
                            "seconds": round(time.monotonic() - start, 3)})
            except EngineError as e:
                log.warning("shipping WAL to %s failed: %s", r.name, e)
                for cluster in clusters:
                    engine.catalog.wal_ship_failed(r.name, cluster, str(e))
                out.append({"replica": r.name, "ok": False, "error": str(e)})
    return out


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def state(engine: Engine, source: Source, now: float | None = None) -> dict:
    """The WAL archive of one cluster as status shows it."""
    now = now or time.time()
    out: dict = {"newest": None, "archived": None, "age_seconds": None, "replicas": {},
                 "max_age_minutes": int(getattr(source.config, "wal_max_age_minutes", 60))}
    try:
        top = newest(engine, engine.backend, source.name)
    except EngineError as e:
        out["error"] = str(e)
        top = None
    if top:
        out.update(newest=top["wal"], archived=_iso(top["archived"]),
                   age_seconds=round(now - top["archived"], 1))
    rows = engine.catalog.wal_states().get(source.name, {})
    for r in engine.config.replicas:
        row = rows.get(r.name, {})
        arch = row.get("archived")
        out["replicas"][r.name] = {
            "newest": row.get("wal"), "archived": _iso(arch),
            "age_seconds": round(now - arch, 1) if arch else None,
            "shipped": _iso(row.get("shipped")),
            "behind": bool(top and row.get("wal") != top["wal"]),
            "error": row.get("error") or None, "error_time": _iso(row.get("error_time")),
        }
    return out


def health_reasons(engine: Engine, source: Source, now: float | None = None) -> list[str]:
    """The newest archived WAL, here and in each replica, older than the threshold."""
    st = state(engine, source, now)
    limit = st["max_age_minutes"] * 60
    name = f"{source.label} {source.name}"
    if st.get("error"):
        return [f"{name}: WAL archive unreadable: {st['error']}"]
    if st["newest"] is None:
        return [f"{name}: no WAL archived (is archive_command set to wal-push?)"]
    reasons = []
    if st["age_seconds"] > limit:
        reasons.append(f"{name}: newest archived WAL {st['newest']} is "
                       f"{st['age_seconds'] / 60:.0f} min old (limit "
                       f"{st['max_age_minutes']} min)")
    for rep, r in st["replicas"].items():
        if r["age_seconds"] is None:
            reasons.append(f"{name}: no WAL shipped to replica {rep} yet"
                           + (f" ({r['error']})" if r["error"] else ""))
        elif r["age_seconds"] > limit:
            reasons.append(f"{name}: newest WAL in replica {rep} ({r['newest']}) is "
                           f"{r['age_seconds'] / 60:.0f} min old (limit "
                           f"{st['max_age_minutes']} min)"
                           + (f"; last error: {r['error']}" if r["error"] else ""))
    return reasons
