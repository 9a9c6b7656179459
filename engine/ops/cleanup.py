"""cleanup: apply the retention policy (forget) and prune, here and on every replica.

The policy is ``[retention]`` with each source's own ``retention`` keys over it
(engine/ops/retention.py plans; engine/ops/prune.py forgets and prunes; archived WAL
older than the oldest kept base backup of its cluster expires, engine/ops/wal_retention.py).
Each
replica is cleaned as a repository of its own, so a region that was offline is
cleaned on the next run. Objects a replica keeps under Object Lock are skipped
and reported, never a failure; so is a replica that holds no repository yet (nothing
was replicated to it: ``{"where": name, "empty": True}``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine.errors import EngineError, NoRepository
from engine.events import CancelToken, Event, EventCallback
from engine.ops import prune as prune_op
from engine.ops import retention as retention_op
from engine.ops import verify as verify_op
from engine.ops import wal_retention
from engine.sources import registry

if TYPE_CHECKING:
    from engine.facade import Engine


def policy_for(engine: Engine, kind: str, source: str) -> retention_op.Policy:
    """[retention], with the source's own retention table over it (if it is configured)."""
    base = retention_op.Policy.from_dict(engine.config.retention.as_dict())
    configured = registry.find(engine.config, kind, source)
    return base.merged(configured.retention if configured else {})


def plan(engine: Engine) -> list[retention_op.Decision]:
    """What the retention policy keeps and forgets, with the rule that decides each."""
    return retention_op.plan(
        engine.snapshots(), lambda kind, source: policy_for(engine, kind, source),
        prune_op.pinned(engine.repo()), datetime.now(UTC), engine.timezone,
    )


def cleanup(engine: Engine, dry_run: bool, on_event: EventCallback,
            cancel: CancelToken | None, replicas: bool, lock_wait: float) -> dict:
    where = engine.replica_name or "local"
    with engine.job("cleanup", where, on_event) as job:
        decisions = plan(engine)
        forget_ids = [d.snapshot_id for d in decisions if not d.keep]
        skipped: list[str] = []
        repo = engine.repo()
        forgotten: list[str] = []
        if not dry_run and forget_ids:
            job.emit(Event(job.id, "forget", items_total=len(forget_ids),
                           message=f"forgetting {len(forget_ids)} snapshot(s)"))
            forgotten = prune_op.forget(  # recorded as removed, not 'vanished', under the lock
                repo, forget_ids, skipped=skipped, lock_wait=lock_wait,
                on_deleted=lambda ids: verify_op.record_removed(repo, engine.catalog, ids))
        report = prune_op.prune(repo, dry_run=dry_run, on_event=job.emit, job_id=job.id,
                                lock_wait=lock_wait, cancel=cancel)
        gone = set(forget_ids if dry_run else forgotten)
        remaining = [s for s in repo.snapshots() if s.get("id") not in gone]
        wal = wal_retention.expire_wal(repo, remaining, dry_run, lock_wait,
                                       unreadable=len(repo.snapshot_errors))
        wal_bytes = sum(w.bytes for w in wal)
        out = {
            "where": where,
            "dry_run": dry_run,
            "decisions": [d.as_json() for d in decisions],
            "forgotten": forgotten,
            "prune": report.as_json(),
            "skipped": skipped + list(report.skipped),
            "wal": [w.as_json() for w in wal],
            "replicas": [],
        }
        job.audited = not dry_run
        job.objects = forgotten
        job.detail = (f"freed {report.bytes_freed} bytes"
                      + (f" and {wal_bytes} bytes of WAL" if wal_bytes else "")
                      + f"; {len(out['skipped'])} skipped")
    if replicas and not engine.replica_name:
        for r in engine.config.replicas:
            try:
                out["replicas"].append(engine.for_replica(r.name).cleanup(
                    dry_run, on_event, cancel, replicas=False, lock_wait=lock_wait))
            except NoRepository:  # never replicated to: nothing there to clean, no failure
                out["replicas"].append({"where": r.name, "empty": True})
            except EngineError as e:
                out["replicas"].append({"where": r.name, "error": str(e)})
    return out
