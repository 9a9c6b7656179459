"""backup: run a source of any kind into the repository and commit a snapshot.

One skeleton for every kind (docs/ARCHITECTURE.md): the source's ``backup``
writes blobs and returns its fields; this module takes the locks, finds the
parent, commits and writes the record. Order (a rule of the format): packs,
then the index, then the snapshot.
A snapshot whose source reported errors is still saved (what was read is good)
but marked ``incomplete`` with the list of what is missing.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import __version__
from engine.errors import EngineError
from engine.events import CancelToken, Event, EventCallback
from engine.jobs import Job
from engine.repo.locks import RepoLock
from engine.repo.repository import Repository, now_iso
from engine.sources.base import BackupContext, Source


@dataclass
class BackupResult:
    id: str
    kind: str
    source: str
    label: str  # what the source is called: "fileset", "database"
    size: int
    added: int
    errors: list[dict] = field(default_factory=list)
    duration: float = 0.0
    files: int = 0
    unchanged_files: int = 0
    warnings: list[str] = field(default_factory=list)
    replication: list = field(default_factory=list)  # ReplicaResult of the automatic run

    @property
    def complete(self) -> bool:
        return not self.errors

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "size": self.size,
            "added": self.added,
            "complete": self.complete,
            "errors": self.errors,
            "warnings": self.warnings,
            "replication": [r.as_json() for r in self.replication],
        }


def _snapshot_record(
    kind: str, source: str, parent: dict | None, writer, start: float, stats: dict, **fields
) -> dict:
    """The snapshot fields every kind shares, with the source's own fields after them."""
    return {
        "version": 1,
        "time": now_iso(),
        "kind": kind,
        "source": source,
        "host": socket.gethostname(),
        "tags": [],
        "parent": parent["id"] if parent else None,
        **fields,
        "stats": {
            **stats,
            "added": writer.added_bytes,
            "added_raw": writer.added_raw,
            "new_blobs": writer.new_blobs,
            "duration": round(time.monotonic() - start, 3),
        },
        "program": f"backup-tui {__version__}",
    }


def record(job: Job, result: BackupResult) -> None:
    """What the job and the audit line say of a backup, and its last event."""
    job.objects = [result.id]
    if result.errors:
        job.outcome = job.state = "incomplete"
        job.error = f"{len(result.errors)} file(s) could not be read"
        job.detail = f"{len(result.errors)} error(s)"
    job.emit(Event(job.id, "done", bytes_done=result.size, bytes_total=result.size,
                   items_done=result.files, items_total=result.files,
                   message=f"snapshot {result.id[:8]}", final=True))


def latest_snapshot(repo: Repository, kind: str, source: str) -> dict | None:
    best = None
    for snap in repo.snapshots():
        if snap["kind"] == kind and snap["source"] == source:
            if best is None or snap["time"] > best["time"]:
                best = snap
    return best


def _still_held(lock: RepoLock, purpose: str) -> None:
    """A lock removed while we ran (judged stale elsewhere, or broken by hand) may have let
    a prune delete packs this backup counts on: commit nothing then."""
    if lock.lost or not lock.backend.exists(lock.name):
        raise EngineError(
            f"{purpose}: its repository lock was removed while it ran (judged stale by "
            "another process, or broken by hand); nothing was committed: run it again")


def run_backup(
    repo: Repository,
    source: Source,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    scratch: str | os.PathLike[str] = "/tmp",
) -> BackupResult:
    """Back up one source of any kind: lock, parent, writer, the source's own backup,
    then commit (packs, index) and the snapshot record."""
    cancel = cancel or CancelToken()
    start = time.monotonic()
    source.check()
    purpose = f"backup {source.kind} {source.name}"
    lock = RepoLock(repo.backend, exclusive=False, purpose=purpose)
    with lock.acquire(wait=60):
        repo.load_index()  # after the lock: a prune that held it may have rewritten the index
        parent = latest_snapshot(repo, source.kind, source.name)
        if parent is not None and not source.usable_parent(parent):
            parent = None
        with repo.writer() as writer:
            writer.guard = lambda: _still_held(lock, purpose)  # before an index mid-backup
            ctx = BackupContext(repo, writer, parent, job_id, on_event, cancel, Path(scratch))
            out = source.backup(ctx)
            writer.flush()
            cancel.check()
            on_event(Event(job_id, "commit", bytes_done=out.size, bytes_total=out.size,
                           message="writing index and snapshot"))
            _still_held(lock, purpose)
            writer.commit()
            snap = _snapshot_record(
                source.kind, source.name, parent, writer, start,
                {"files": out.items, **out.stats, "size": out.size},
                **out.fields,
                incomplete=bool(out.errors),
            )
            _still_held(lock, purpose)
            sid = repo.save_snapshot(snap)
    return BackupResult(
        id=sid,
        kind=source.kind,
        source=source.name,
        label=source.label,
        size=out.size,
        added=writer.added_bytes,
        errors=out.errors,
        warnings=out.warnings,
        duration=time.monotonic() - start,
        files=out.items,
        unchanged_files=int(out.stats.get("unchanged_files", 0)),
    )
