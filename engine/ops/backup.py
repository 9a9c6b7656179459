"""backup: run a source into the repository and commit a snapshot.

Order (rule, DESIGN.md section 3): packs, then the index, then the snapshot.
A snapshot whose source reported errors is still saved (what was read is good)
but marked ``incomplete`` with the list of what is missing.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from engine import __version__
from engine.config import FilesetConfig
from engine.events import CancelToken, Event, EventCallback
from engine.repo.locks import RepoLock
from engine.repo.repository import Repository, now_iso
from engine.sources.files import FilesBackup, FilesStats, scan


@dataclass
class BackupResult:
    id: str
    kind: str
    source: str
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


class _Totals:
    """Progress totals: the parent snapshot's figures when there is one (a fresh walk of
    the tree only to count it cost 40% of a no-change backup), else a scan of the tree
    on a thread of its own, whose figures count once it has finished."""

    def __init__(self, parent: dict | None, fileset: FilesetConfig, cancel: CancelToken):
        self.files = self.bytes = 0
        if parent is not None:
            stats = parent.get("stats", {})
            self.files, self.bytes = int(stats.get("files", 0)), int(stats.get("size", 0))
            return
        import threading

        def run() -> None:
            try:
                self.files, self.bytes = scan(fileset, cancel)
            except Exception:  # noqa: BLE001 - totals are a nicety; the backup goes on
                pass

        threading.Thread(target=run, daemon=True, name="scan").start()

    def get(self) -> tuple[int, int]:
        return self.files, self.bytes


def latest_snapshot(repo: Repository, kind: str, source: str) -> dict | None:
    best = None
    for snap in repo.snapshots():
        if snap["kind"] == kind and snap["source"] == source:
            if best is None or snap["time"] > best["time"]:
                best = snap
    return best


def backup_files(
    repo: Repository,
    fileset: FilesetConfig,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
) -> BackupResult:
    cancel = cancel or CancelToken()
    start = time.monotonic()
    on_event(Event(job_id, "scan", message=f"scanning {', '.join(fileset.paths)}"))
    for p in fileset.paths:
        if not os.path.lexists(p):
            from engine.errors import EngineError

            raise EngineError(f"fileset {fileset.name!r}: path {p} does not exist")
    with RepoLock(repo.backend, exclusive=False, purpose=f"backup files {fileset.name}").acquire(
        wait=60
    ):
        repo.load_index()  # after the lock: a prune that held it may have rewritten the index
        parent = latest_snapshot(repo, "files", fileset.name)
        if parent is not None and sorted(parent.get("paths", [])) != sorted(fileset.paths):
            parent = None
        totals = _Totals(parent, fileset, cancel)

        def progress(stats: FilesStats, current: str) -> None:
            n_files, n_bytes = totals.get()
            on_event(
                Event(
                    job_id,
                    "backup",
                    bytes_done=stats.bytes + stats.partial,
                    bytes_total=max(n_bytes, stats.bytes + stats.partial),
                    items_done=stats.files,
                    items_total=max(n_files, stats.files),
                    message=current,
                )
            )

        with repo.writer() as writer:
            fb = FilesBackup(
                repo, writer, fileset, parent["tree"] if parent else None, progress, cancel
            )
            root = fb.run()
            writer.flush()
            cancel.check()
            on_event(Event(job_id, "commit", message="writing index and snapshot"))
            writer.commit()
            stats = fb.stats
            snap = _snapshot_record(
                "files", fileset.name, parent, writer, start,
                {"files": stats.files, "dirs": stats.dirs, "size": stats.bytes,
                 "unchanged_files": stats.unchanged_files, "bytes_read": stats.bytes_read},
                paths=list(fileset.paths),
                tree=root,
                incomplete=bool(stats.errors),
                errors=stats.errors[:1000],
                errors_total=len(stats.errors),
            )
            sid = repo.save_snapshot(snap)
    return BackupResult(
        id=sid,
        kind="files",
        source=fileset.name,
        size=stats.bytes,
        added=writer.added_bytes,
        errors=stats.errors,
        duration=time.monotonic() - start,
        files=stats.files,
        unchanged_files=stats.unchanged_files,
    )


def backup_db(
    repo: Repository,
    db: dict,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    scratch: str = "/tmp",
) -> BackupResult:
    """Logical backup of one [[database]] (pg_dump custom format, streamed)."""
    from engine.sources.pgconn import resolve
    from engine.sources.postgres import dump_database, dump_database_directory

    cancel = cancel or CancelToken()
    start = time.monotonic()
    target = resolve(db)
    on_event(Event(job_id, "connect", message=f"connecting to {target.where}"))
    with RepoLock(repo.backend, exclusive=False, purpose=f"backup db {db['name']}").acquire(
        wait=60
    ):
        repo.load_index()  # after the lock: a prune that held it may have rewritten the index
        parent = latest_snapshot(repo, "db", db["name"])

        previous = int(parent.get("stats", {}).get("size", 0)) if parent else 0

        def progress(done: int, db_size: int) -> None:
            # the total is an estimate: the last dump's size, else the database's size
            estimate = previous or db_size
            on_event(Event(job_id, "dump", bytes_done=done, bytes_total=max(done, estimate),
                           message=f"pg_dump {target.where}"))

        with repo.writer() as writer:
            tree = None
            if db.get("format") == "directory":
                tree, dumped = dump_database_directory(
                    repo, writer, target, int(db.get("jobs", 1)), scratch, progress, cancel
                )
            else:
                dumped = dump_database(repo, writer, target, progress, cancel)
            on_event(Event(job_id, "commit", bytes_done=dumped.bytes, bytes_total=dumped.bytes,
                           message="writing index and snapshot"))
            writer.commit()
            snap = _snapshot_record(
                "db", db["name"], parent, writer, start,
                {"files": 0, "size": dumped.bytes, "bytes_read": dumped.bytes},
                stream=dumped.stream,
                **({"tree": tree} if tree else {}),
                globals=dumped.globals,
                incomplete=False,
                warnings=dumped.warnings,
                postgres=dumped.facts,
            )
            sid = repo.save_snapshot(snap)
    return BackupResult(
        id=sid,
        kind="db",
        source=db["name"],
        size=dumped.bytes,
        added=writer.added_bytes,
        duration=time.monotonic() - start,
        warnings=dumped.warnings,
    )
