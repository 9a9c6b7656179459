"""Prometheus text-format metrics, for node_exporter's textfile collector or /metrics.

Written atomically (temp file, rename) after each job. Labels carry source and
replica names only; never credentials or paths with secrets.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(engine) -> str:
    lines: list[str] = []

    def metric(name: str, help_text: str, kind: str, rows: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP backup_tui_{name} {help_text}")
        lines.append(f"# TYPE backup_tui_{name} {kind}")
        for labels, value in rows:
            lab = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"backup_tui_{name}{{{lab}}} {value}" if lab
                         else f"backup_tui_{name} {value}")

    status = engine.status()
    last, ages, counts = [], [], []
    for s in status["sources"]:
        labels = {"kind": s["kind"], "source": s["name"]}
        counts.append((labels, s["snapshots"]))
        if s.get("last_good_ts"):
            last.append((labels, s["last_good_ts"]))
            ages.append((labels, round(time.time() - s["last_good_ts"], 1)))
    metric("snapshots", "Snapshots kept per source.", "gauge", counts)
    metric("last_success_timestamp_seconds", "Time of the newest complete backup.", "gauge",
           last)
    metric("last_success_age_seconds", "Age of the newest complete backup.", "gauge", ages)
    drill_ok, drill_rto, drill_time = [], [], []
    for s in status["sources"]:
        last = (s.get("drill") or {}).get("last")
        if not last:
            continue
        labels = {"kind": s["kind"], "source": s["name"]}
        drill_ok.append((labels, 1 if last["ok"] else 0))
        if s["drill"]["rto_trend"]:
            drill_rto.append((labels, s["drill"]["rto_trend"][-1]))
        if last["finished"]:
            drill_time.append((labels, datetime.fromisoformat(last["finished"]).timestamp()))
    metric("drill_ok", "1 when the last restore drill of the source passed.", "gauge",
           drill_ok)
    metric("drill_rto_seconds", "Seconds to a validated database in the newest passed drill.",
           "gauge", drill_rto)
    metric("drill_timestamp_seconds", "When the last restore drill ended.", "gauge",
           drill_time)
    wal_time, wal_age = [], []
    for s in status["sources"]:
        w = s.get("wal")
        if not w:
            continue
        copies = [("local", w)] + list(w["replicas"].items())
        for copy, c in copies:
            if c.get("archived"):
                labels = {"source": s["name"], "copy": copy}
                wal_time.append((labels, datetime.fromisoformat(c["archived"]).timestamp()))
                wal_age.append((labels, c["age_seconds"]))
    metric("wal_newest_archived_timestamp_seconds", "When the newest WAL file of the cluster "
           "in this copy (local or a replica) was archived: its recovery point.", "gauge",
           wal_time)
    metric("wal_newest_archived_age_seconds", "Age of that newest archived WAL file.", "gauge",
           wal_age)
    reps = engine.replica_states()
    metric("replica_objects_behind", "Objects the replica lacks (last check).", "gauge",
           [({"replica": r["name"]}, r["objects_behind"] or 0) for r in reps])
    metric("replica_bytes_behind", "Bytes the replica lacks (last check).", "gauge",
           [({"replica": r["name"]}, r["bytes_behind"] or 0) for r in reps])
    health = engine.health()
    metric("healthy", "1 when every check of 'backup-tui health' passes.", "gauge",
           [({}, 1 if health["ok"] else 0)])
    jobs = engine.catalog.jobs(200)
    failed: dict[str, int] = {}
    for j in jobs:
        if j["state"] in ("failed", "interrupted"):
            failed[j["kind"]] = failed.get(j["kind"], 0) + 1
    metric("recent_failed_jobs", "Failed or interrupted jobs among the last 200.", "gauge",
           [({"kind": k}, v) for k, v in sorted(failed.items())])
    return "\n".join(lines) + "\n"


def write_textfile(engine, path: str) -> None:
    text = render(engine)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".backup_tui.", suffix=".prom")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
