"""status and health: what an operator (or monitoring) asks first.

``status`` is the full picture per source (newest snapshot and its age, last
failure, next scheduled run, the source's own details such as where its
connection comes from), per replica and per schedule. ``health`` reduces it to
ok or a list of reasons: a source without a complete backup younger than its
limit, a replica without a recent successful run, or a source whose last
restore drill failed or is older than its drill limit (engine/ops/drill.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from engine.catalog import Catalog
from engine.ops import drill as drill_op
from engine.ops import walship
from engine.ops.resolve import inventory_rows, iso
from engine.schedule import next_run, runnable
from engine.sources import registry

if TYPE_CHECKING:
    from engine.facade import Engine, SnapshotInfo
    from engine.sources.base import Source


def _iso_dt(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="seconds") if dt else None


def max_age_hours(engine: Engine, source: Source) -> int:
    return source.max_age_hours or engine.config.health.max_age_hours


def status(engine: Engine, infos: list[SnapshotInfo] | None = None) -> dict:
    """``infos``: the snapshot list when the caller has just read it (``overview``)."""
    infos = engine.snapshots() if infos is None else infos
    now = datetime.now(UTC)
    recent = engine.catalog.jobs(500)
    next_runs = engine.next_runs(now)
    sources = []
    drills = drill_op.newest_drills(engine)
    for src in registry.sources(engine.config):
        info = src.info()
        mine = [i for i in infos if i.kind == src.kind and i.source == src.name]
        good = [i for i in mine if i.complete]
        jobs = [j for j in recent if j["target"] == info.target and j["kind"] == "backup"]
        failures = [j for j in jobs if j["state"] in ("failed", "interrupted", "incomplete")]
        entry: dict = {
            "kind": src.kind,
            "name": src.name,
            "label": src.label,
            "description": info.description,
            "details": dict(info.details),
            "snapshots": len(mine),
            "last": mine[-1].time.isoformat() if mine else None,
            "last_good": good[-1].time.isoformat() if good else None,
            "last_good_ts": good[-1].time.timestamp() if good else None,
            "age_hours": round((now - good[-1].time).total_seconds() / 3600, 2)
            if good else None,
            "max_age_hours": max_age_hours(engine, src),
            "last_failure": iso(failures[0]["ended"]) if failures else None,
            "last_failure_error": failures[0]["error"] if failures else None,
            "failures_24h": sum(1 for j in failures
                                if (j["ended"] or j["started"]) >= now.timestamp() - 86400),
            "last_verified": max((i.verified for i in mine if i.verified), default=None),
            "in_replicas": dict(good[-1].replicas) if good else {},
            "next_run": _iso_dt(next_runs.get(src.schedule)),
            **src.status_fields(),
        }
        if drill_op.drillable(src):  # last drill, RTO trend (engine/ops/drill.py)
            entry["drill"] = drill_op.summary(drills.get((src.kind, src.name), []), src)
        if src.archives_wal:  # newest archived WAL here and per replica (walship.py)
            entry["wal"] = walship.state(engine, src)
        sources.append(entry)
    running = [j for j in recent if j["state"] == "running"]
    stored = sum(engine.repo().pack_sizes.values())
    logical = sum(i.size for i in infos)
    return {
        "repository": engine.backend.location,
        "repository_bytes": stored,
        "dedup_ratio": round(logical / stored, 2) if stored else None,
        "sources": sources,
        "replicas": engine.replica_states(),
        "schedules": schedules(engine, now),
        "running": running,
    }


def health(engine: Engine, infos: list[SnapshotInfo] | None = None) -> dict:
    """ok when every source has a complete backup younger than its max_age_hours and every
    replica had a successful run within replica_max_age_hours; else the reasons."""
    reasons = []
    now = datetime.now(UTC)
    infos = engine.snapshots() if infos is None else infos
    for src in registry.sources(engine.config):
        good = [i for i in infos if i.kind == src.kind and i.source == src.name and i.complete]
        limit = max_age_hours(engine, src)
        if not good:
            reasons.append(f"{src.kind} {src.name}: no complete backup")
        elif (now - good[-1].time).total_seconds() > limit * 3600:
            age = (now - good[-1].time).total_seconds() / 3600
            reasons.append(f"{src.kind} {src.name}: newest complete backup is {age:.1f} h old "
                           f"(limit {limit} h)")
    drills = drill_op.newest_drills(engine)
    for src in registry.sources(engine.config):
        if drill_op.drillable(src):  # the last drill failed, or is too old
            reasons += drill_op.health_reasons(drills.get((src.kind, src.name), []), src,
                                               now.timestamp())
    for src in registry.sources(engine.config):
        if src.archives_wal:  # the recovery point: newest archived WAL, here and per replica
            reasons += walship.health_reasons(engine, src, now.timestamp())
    limit = engine.config.health.replica_max_age_hours
    for r in engine.replica_states():
        last = r["last_success"]
        if not last:
            reasons.append(f"replica {r['name']}: never replicated")
        elif (now - datetime.fromisoformat(last)).total_seconds() > limit * 3600:
            reasons.append(f"replica {r['name']}: last successful replication {last} "
                           f"(limit {limit} h)" + (f"; last error: {r['last_error']}"
                                                   if r["last_error"] else ""))
    return {"ok": not reasons, "reasons": reasons, "checked": now.isoformat()}


def overview(engine: Engine) -> tuple[dict, dict]:
    """``status`` and ``health`` from one listing of the snapshots (the dashboard reads
    both every few seconds; a listing is most of the cost on a large repository)."""
    infos = engine.snapshots()
    return status(engine, infos), health(engine, infos)


FAILED_STATES = ("failed", "interrupted", "incomplete")


def history(engine: Engine, days: int = 30, now: datetime | None = None) -> dict:
    """What the dashboard plots over the last ``days`` days (days of the schedule's time
    zone, the oldest first), from what the repository and the catalog record.

    ``daily``: per day the repository's size at its end, the stored bytes its backups
    added, its backups and its failed backup jobs. The size is read backwards from the
    stored bytes now: now, minus the bytes added by the snapshots taken after that day
    (what prune removed since does not show: the past reads as today's snapshots made it).
    ``backups``: each kept snapshot of the window (time, source, seconds it took, bytes it
    added). ``drills``: each restore drill of the window (time, source, ok, RTO)."""
    now = now or datetime.now(UTC)
    tz = engine.timezone
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=tz)
    repo = engine.repo()
    stored = sum(repo.pack_sizes.values())
    # The inventory's rows (the catalog caches them: 10,000 records are not opened again)
    rows = inventory_rows(repo, engine.catalog)
    snaps = sorted(((datetime.fromisoformat(r[1]), dict(zip(Catalog.ROW_FIELDS, r, strict=True)))
                    for r in rows.values()), key=lambda ts: ts[0])
    daily = {(first + timedelta(days=n)).isoformat(): {"size": 0, "added": 0, "backups": 0,
                                                       "failures": 0} for n in range(days)}
    backups = []
    for when, snap in snaps:
        day = daily.get(when.astimezone(tz).date().isoformat())
        if day is None:
            continue
        day["added"] += snap["added"]
        day["backups"] += 1
        backups.append({"time": when.astimezone(UTC).isoformat(timespec="seconds"),
                        "kind": snap["kind"], "source": snap["source"],
                        "seconds": snap["duration"], "added": snap["added"],
                        "size": snap["size"], "complete": bool(snap["complete"])})
    later = 0  # bytes added by the snapshots after the day being read
    pending = [(w, s["added"]) for w, s in snaps]
    for name in reversed(list(daily)):
        end = datetime.fromisoformat(name).replace(tzinfo=tz) + timedelta(days=1)
        while pending and pending[-1][0] >= end:
            later += pending.pop()[1]
        daily[name]["size"] = max(0, stored - later)
    for job in engine.catalog.jobs(5000):
        if job["kind"] == "backup" and job["state"] in FAILED_STATES:
            day = daily.get(datetime.fromtimestamp(job["started"], tz).date().isoformat())
            if day is not None:
                day["failures"] += 1
    drills = [{"time": iso(d["finished"] or d["started"]), "kind": d["kind"],
               "source": d["source"], "ok": d["ok"], "rto_seconds": d["rto_seconds"]}
              for d in reversed(engine.catalog.drills(limit=500))
              if (d["finished"] or d["started"]) >= since.timestamp()]
    return {"now": now.astimezone(UTC).isoformat(timespec="seconds"),
            "since": since.astimezone(UTC).isoformat(timespec="seconds"), "days": days,
            "repository_bytes": stored,
            "daily": [{"day": name, **figures} for name, figures in daily.items()],
            "backups": backups, "drills": drills}


def next_runs(engine: Engine, now: datetime | None = None) -> dict[str, datetime | None]:
    now = now or datetime.now(UTC)
    states = engine.catalog.schedule_states()
    sched = engine.config.schedule
    return {k: None if states.get(k, {}).get("paused")
            else next_run(sched.cron(k), engine.timezone, now) for k in sched.kinds}


def schedules(engine: Engine, now: datetime | None = None) -> list[dict]:
    """Each schedule: cron, what it does, paused, next run, last run and its result;
    ``runnable`` and ``why`` not (``engine.schedule.runnable``: nothing to run with this
    config), and ``pending``: when a run now was asked that no scheduler took yet."""
    from engine.config import schedule_kinds

    nexts = next_runs(engine, now)
    states = engine.catalog.schedule_states()
    pending = engine.catalog.pending_requests()
    whats = schedule_kinds()
    out = []
    for k in engine.config.schedule.kinds:
        st = states.get(k, {})
        can_run, why = runnable(engine.config, k)
        out.append({
            "kind": k,
            "cron": engine.config.schedule.cron(k),
            "what": whats[k][1],
            "paused": bool(st.get("paused")),
            "next_run": _iso_dt(nexts[k]),
            "last_run": iso(st.get("last_run")),
            "last_result": st.get("last_result") or None,
            "last_error": st.get("last_error") or None,
            "last_missed": iso(st.get("last_missed")),
            "runnable": can_run,
            "why": why,
            "pending": iso(pending.get(k)),
        })
    return out
