"""The Engine facade: the one entry point for the console, the daemon and the CLI.

Every method is blocking and runs in the caller's thread; call it from a worker
thread in a UI. Methods may run concurrently from several threads (the console
lists snapshots while a backup runs): the repository and catalog are opened once
under a lock, the catalog keeps one SQLite connection per thread, and backups
take repository locks like separate processes would. Long operations take
``on_event`` (called from the thread that runs the operation, so it must be
cheap and thread-safe) and a ``CancelToken``.
Each operation is a job: it gets an id, its progress is stored in the catalog
(throttled) so other processes can watch, and it leaves an audit record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from engine import metrics, notify, security
from engine.catalog import Catalog
from engine.config import Config
from engine.errors import Cancelled, EngineError, NotFound, RepositoryError, UsageError
from engine.events import CancelToken, Event, EventCallback, ignore
from engine.ops import backup as backup_op
from engine.ops import dump as dump_op
from engine.ops import prune as prune_op
from engine.ops import replicate as replicate_op
from engine.ops import restore as restore_op
from engine.ops import restore_db as restore_db_op
from engine.ops import retention as retention_op
from engine.ops import verify as verify_op
from engine.repo.repository import Repository
from engine.sources import pgconn
from engine.storage.base import Backend
from engine.storage.local import LocalBackend


class BackupAllError(EngineError):
    """Some sources of 'backup all' failed; the others' results are kept here."""

    def __init__(self, results: list, failures: list[str]):
        super().__init__("; ".join(failures))
        self.results = results
        self.failures = failures


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


def _info(snap: dict) -> SnapshotInfo:
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
    )


log = logging.getLogger("backup_tui.engine")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _iso_dt(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="seconds") if dt else None


def new_job_id(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


class Engine:
    def __init__(self, config: Config, backend: Backend | None = None, kdf: dict | None = None):
        self.config = config
        self.backend = backend or LocalBackend(config.repo_path)
        self.kdf = kdf  # key derivation cost for init; tests pass a cheap one
        self._repo: Repository | None = None
        self._catalog: Catalog | None = None
        self._open_lock = threading.RLock()

    # ------------------------------------------------------------ plumbing
    @property
    def catalog(self) -> Catalog:
        with self._open_lock:
            if self._catalog is None:
                self._catalog = Catalog(self.config.state_dir)
            return self._catalog

    def repo(self) -> Repository:
        with self._open_lock:
            if self._repo is None:
                self._repo = Repository.open(self.backend, self.config.password())
            return self._repo

    def refresh(self) -> None:
        """Forget cached repository state (another process may have written)."""
        if self._repo is not None:
            self._repo.load_index()

    @contextlib.contextmanager
    def _job(
        self, kind: str, target: str, on_event: EventCallback
    ) -> Iterator[tuple[str, EventCallback]]:
        job_id = new_job_id(kind)
        cat = self.catalog
        cat.start_job(job_id, kind, target)

        def emit(ev: Event) -> None:
            cat.progress(ev)
            on_event(ev)

        try:
            yield job_id, emit
        except BaseException as e:
            msg = str(e) or type(e).__name__
            interrupted = isinstance(e, KeyboardInterrupt | Cancelled)
            state = "interrupted" if interrupted else "failed"
            cat.end_job(job_id, state, error=msg)
            cat.audit(kind, target, state, detail=msg)
            on_event(Event(job_id, "interrupted" if interrupted else "failed", message=msg,
                           final=True))
            self._after_job(job_id)
            raise
        else:
            job = cat.job(job_id)
            if job and job["state"] == "running":  # an op may have set incomplete/failed
                cat.end_job(job_id, "succeeded")
            self._after_job(job_id)

    def _after_job(self, job_id: str) -> None:
        """Notifications and the metrics file; neither may ever fail the job."""
        job = self.catalog.job(job_id) or {"id": job_id}
        notify.notify(self.config.notify, job)
        if self.config.metrics["textfile"]:
            try:
                metrics.write_textfile(self, self.config.metrics["textfile"])
            except (OSError, EngineError) as e:
                log.warning("cannot write metrics file %s: %s", self.config.metrics["textfile"],
                            e)

    def _admin(self, action: str) -> None:
        security.require_admin(self.config.security["admin_group"], action)

    @property
    def is_admin(self) -> bool:
        return security.is_admin(self.config.security["admin_group"])

    # ------------------------------------------------------------ repository
    def init(self) -> dict:
        self._admin("init")
        password = self.config.password()
        catalog = self.catalog  # a broken state dir fails here, before a repository is made
        repo = Repository.init(
            self.backend, password, self.config.repository["compression"], self.kdf
        )
        self._repo = repo
        catalog.audit("init", self.backend.location, "succeeded")
        return {"id": repo.id, "location": self.backend.location,
                "encrypted": repo.keys.encrypted}

    # --------------------------------------------------------------- backup
    def sources(self) -> list[tuple[str, str]]:
        """(kind, name) of every configured source."""
        out = [("files", fs.name) for fs in self.config.filesets]
        out += [("db", d["name"]) for d in self.config.databases]
        return out

    def backup_files(
        self,
        name: str,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
        replicate: bool = True,
    ) -> backup_op.BackupResult:
        """Back up one fileset; then, unless replicate=False, copy to the replicas that
        have replicate_after_backup (their failures are in result.replication)."""
        self._admin("backup")
        fileset = self.config.fileset(name)
        repo = self.repo()
        with self._job("backup", f"files:{name}", on_event) as (job_id, emit):
            result = backup_op.backup_files(repo, fileset, job_id, emit, cancel)
            outcome = "succeeded" if result.complete else "incomplete"
            self.catalog.audit("backup", f"files:{name}", outcome, [result.id],
                               detail=f"{len(result.errors)} error(s)" if result.errors else "")
            emit(Event(job_id, "done", bytes_done=result.size, bytes_total=result.size,
                       items_done=result.files, items_total=result.files,
                       message=f"snapshot {result.id[:8]}", final=True))
            if result.errors:
                self.catalog.end_job(job_id, "incomplete", error=f"{len(result.errors)} file(s) "
                                     "could not be read")
        if replicate:
            result.replication = self._replicate_after_backup(on_event, cancel)
        return result

    def database(self, name: str) -> dict:
        for db in self.config.databases:
            if db["name"] == name:
                return db
        known = ", ".join(d["name"] for d in self.config.databases) or "none configured"
        raise UsageError(f"no [[database]] named {name!r} (known: {known})")

    def database_connection(self, name: str) -> dict:
        """Where a database's connection comes from (config, $DATABASE_URL, libpq), no secrets."""
        t = pgconn.resolve(self.database(name))
        return {"name": name, "where": t.where, "from": t.origin, "user": t.user}

    def backup_db(
        self,
        name: str,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
        replicate: bool = True,
    ) -> backup_op.BackupResult:
        """Back up one database (pg_dump); replication afterwards as for backup_files."""
        self._admin("backup")
        db = self.database(name)
        repo = self.repo()
        with self._job("backup", f"db:{name}", on_event) as (job_id, emit):
            scratch = str(self.config.state_dir / "tmp")
            result = backup_op.backup_db(repo, db, job_id, emit, cancel, scratch)
            self.catalog.audit("backup", f"db:{name}", "succeeded", [result.id])
            emit(Event(job_id, "done", bytes_done=result.size, bytes_total=result.size,
                       message=f"snapshot {result.id[:8]}", final=True))
        if replicate:
            result.replication = self._replicate_after_backup(on_event, cancel)
        return result

    def backup_all(
        self, on_event: EventCallback = ignore, cancel: CancelToken | None = None
    ) -> list[backup_op.BackupResult]:
        """Every database, then every fileset. One failing source does not stop the others."""
        results: list[backup_op.BackupResult] = []
        failures: list[str] = []
        jobs = [(self.backup_db, d["name"]) for d in self.config.databases]
        jobs += [(self.backup_files, fs.name) for fs in self.config.filesets]
        for run, name in jobs:
            try:
                results.append(run(name, on_event, cancel, replicate=False))
            except EngineError as e:
                failures.append(str(e))
        if results:  # one replication run for all the new snapshots
            results[-1].replication = self._replicate_after_backup(on_event, cancel)
        if failures:
            raise BackupAllError(results, failures)
        return results

    # ------------------------------------------------------------- inventory
    def snapshots(self, source: str | None = None, kind: str | None = None) -> list[SnapshotInfo]:
        repo = self.repo()
        verified = self.catalog.verified()
        presence = self.catalog.replica_presence()
        names = [r["name"] for r in self.config.replicas]
        out = [
            dataclasses.replace(
                _info(s),
                verified=_iso(verified.get(s["id"])),
                replicas={n: s["id"] in presence.get(n, ()) for n in names},
            )
            for s in repo.snapshots()
            if (source is None or s.get("source") == source) and (kind is None or s["kind"] == kind)
        ]
        out.sort(key=lambda i: i.time)
        return out

    def snapshot(self, ref: str, source: str | None = None) -> dict:
        """Resolve a full id, a unique prefix of 8+ characters, or 'latest'."""
        repo = self.repo()
        if ref == "latest":
            infos = self.snapshots(source=source)
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

    def snapshot_at(self, source: str, when: datetime) -> tuple[dict, float]:
        """The newest snapshot of source taken at or before when; and how many seconds before."""
        infos = [i for i in self.snapshots(source=source) if i.time <= when]
        if not infos:
            first = self.snapshots(source=source)
            if not first:
                raise NotFound(f"no snapshots of source {source!r}")
            raise NotFound(
                f"no snapshot of {source!r} at or before {when.isoformat()}: the first one "
                f"was taken at {first[0].time.isoformat()}"
            )
        best = infos[-1]
        return self.repo().load_snapshot(best.id), (when - best.time).total_seconds()

    def parse_time(self, text: str) -> datetime:
        """ISO 8601; without an offset it is read in the schedule's time zone."""
        from zoneinfo import ZoneInfo

        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-26T14:00 or "
                "2026-11-26T14:00:00+01:00"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=ZoneInfo(self.config.schedule["timezone"]))
        return when

    # ---------------------------------------------------------------- verify
    def verify(
        self,
        refs: list[str] | None = None,
        read_data: bool = False,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
    ) -> verify_op.VerifyReport:
        repo = self.repo()
        repo.load_index()
        ids = [self.snapshot(r)["id"] for r in refs] if refs else None
        with self._job("verify", ",".join(i[:8] for i in ids) if ids else "all", on_event) as (
            job_id,
            emit,
        ):
            report = verify_op.verify(repo, ids, read_data, job_id, emit, cancel)
            bad = {sid for p in report.problems for sid in p.snapshots}
            self.catalog.mark_verified([s for s in report.snapshots if s not in bad], read_data)
            self.catalog.audit("verify", "read-data" if read_data else "quick",
                               "ok" if report.ok else "problems", report.snapshots[:100],
                               detail="; ".join(p.message for p in report.problems[:5]))
        return report

    # --------------------------------------------------------------- restore
    def plan_restore_files(
        self, ref: str, target: str, paths: list[str] | tuple[str, ...] = (), force: bool = False
    ) -> restore_op.RestorePlan:
        repo = self.repo()
        snap = self.snapshot(ref)
        return restore_op.plan_restore(repo, snap, target, paths, force)

    def restore_files(
        self,
        plan: restore_op.RestorePlan,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
    ) -> restore_op.RestoreResult:
        self._admin("restore")
        repo = self.repo()
        target = f"files:{plan.snapshot['source']} -> {plan.target}"
        with self._job("restore", target, on_event) as (job_id, emit):
            result = restore_op.execute_restore(repo, plan, job_id, emit, cancel)
            self.catalog.audit("restore", target, "succeeded", [plan.snapshot["id"]])
        return result

    def plan_restore_db(
        self,
        ref: str | dict,
        target_db: str,
        replace: bool = False,
        drop_old: bool = False,
        no_owner: bool = False,
        with_globals: bool = False,
    ) -> restore_db_op.DbRestorePlan:
        snap = ref if isinstance(ref, dict) else self.snapshot(ref)
        if snap.get("kind") != "db":
            raise UsageError(f"snapshot {snap['id'][:12]} is a {snap.get('kind')} snapshot, "
                             "not db")
        db = self.database(snap["source"]) if any(
            d["name"] == snap["source"] for d in self.config.databases
        ) else None
        if db is None:
            raise UsageError(f"snapshot {snap['id'][:8]} is of database {snap['source']!r}, "
                             "which is not in the config: add a [[database]] for its server")
        server = pgconn.resolve(db)
        return restore_db_op.plan_restore_db(snap, server, target_db, replace, drop_old,
                                             no_owner, with_globals)

    def restore_db(
        self,
        plan: restore_db_op.DbRestorePlan,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
    ) -> restore_db_op.DbRestoreResult:
        self._admin("restore")
        repo = self.repo()
        target = f"db:{plan.snapshot['source']} -> {plan.target_db}"
        with self._job("restore", target, on_event) as (job_id, emit):
            scratch = str(self.config.state_dir / "tmp")
            result = restore_db_op.execute_restore_db(repo, plan, job_id, emit, cancel, scratch)
            self.catalog.audit("restore", target, "succeeded", [plan.snapshot["id"]],
                               detail=f"old database kept as {result.old_db}"
                               if result.old_db else "")
        return result

    # ------------------------------------------------------------------ dump
    def dump(self, ref: str, out: BinaryIO, path: str | None = None) -> int:
        repo = self.repo()
        return dump_op.dump(repo, self.snapshot(ref), out, path)

    # --------------------------------------------------------------- cleanup
    def policy_for(self, kind: str, source: str) -> retention_op.Policy:
        """[retention], with the source's own retention table over it."""
        base = retention_op.Policy.from_dict(self.config.retention)
        override: dict = {}
        if kind == "files" and any(f.name == source for f in self.config.filesets):
            override = dict(self.config.fileset(source).retention)
        elif kind == "db" and any(d["name"] == source for d in self.config.databases):
            override = dict(self.database(source).get("retention", {}))
        return base.merged(override)

    def plan_cleanup(self) -> list[retention_op.Decision]:
        """What the retention policy keeps and forgets, with the rule that decides each."""
        from zoneinfo import ZoneInfo

        repo = self.repo()
        return retention_op.plan(
            self.snapshots(), self.policy_for, prune_op.pinned(repo), datetime.now(UTC),
            ZoneInfo(self.config.schedule["timezone"]),
        )

    def cleanup(
        self,
        dry_run: bool = False,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
        replicas: bool = True,
        lock_wait: float = 300.0,
    ) -> dict:
        """Apply retention (forget) and prune, here and then on every replica. Objects a
        replica keeps under Object Lock are skipped and reported, never a failure."""
        if not dry_run:
            self._admin("cleanup")
        where = self.replica_name or "local"
        with self._job("cleanup", where, on_event) as (job_id, emit):
            decisions = self.plan_cleanup()
            forget_ids = [d.snapshot_id for d in decisions if not d.keep]
            skipped: list[str] = []
            repo = self.repo()
            if not dry_run and forget_ids:
                emit(Event(job_id, "forget", items_total=len(forget_ids),
                           message=f"forgetting {len(forget_ids)} snapshot(s)"))
                forgotten = prune_op.forget(repo, forget_ids, skipped=skipped,
                                            lock_wait=lock_wait)
            else:
                forgotten = []
            report = prune_op.prune(repo, dry_run=dry_run, on_event=emit, job_id=job_id,
                                    lock_wait=lock_wait, cancel=cancel)
            out = {
                "where": where,
                "dry_run": dry_run,
                "decisions": [d.as_json() for d in decisions],
                "forgotten": forgotten,
                "prune": report.as_json(),
                "skipped": skipped + list(report.skipped),
                "replicas": [],
            }
            if not dry_run:
                self.catalog.audit("cleanup", where, "succeeded", forgotten,
                                   detail=f"freed {report.bytes_freed} bytes; "
                                   f"{len(out['skipped'])} skipped")
        if replicas and not self.replica_name:
            for r in self.config.replicas:
                try:
                    out["replicas"].append(self.for_replica(r["name"]).cleanup(
                        dry_run, on_event, cancel, replicas=False, lock_wait=lock_wait))
                except EngineError as e:
                    out["replicas"].append({"where": r["name"], "error": str(e)})
        return out

    def pin(self, ref: str, note: str = "", pinned: bool = True) -> str:
        """Pin (or unpin) a snapshot: pinned snapshots are never forgotten by cleanup."""
        self._admin("pin" if pinned else "unpin")
        sid = self.snapshot(ref)["id"]
        if pinned:
            prune_op.pin(self.repo(), sid, note)
        else:
            prune_op.unpin(self.repo(), sid)
        self.catalog.audit("pin" if pinned else "unpin", sid[:12], "succeeded", [sid],
                           detail=note)
        return sid

    # -------------------------------------------------------------- replicas
    def replica(self, name: str) -> dict:
        for r in self.config.replicas:
            if r["name"] == name:
                return r
        known = ", ".join(r["name"] for r in self.config.replicas) or "none configured"
        raise UsageError(f"no [[replica]] named {name!r} (known: {known})")

    def replica_backend(self, name: str):
        from engine.storage.s3 import S3Backend

        r = self.replica(name)
        return S3Backend(
            bucket=r["bucket"], region=r["region"], prefix=r["prefix"],
            endpoint_url=r["endpoint_url"], profile=r["profile"],
            storage_class=r["storage_class"], object_lock_days=r["object_lock_days"],
            object_lock_mode=r["object_lock_mode"], name=name,
        )

    def for_replica(self, name: str) -> Engine:
        """An Engine reading and writing the replica as its repository (no local state
        needed): list, verify, restore and dump from it exactly as from the local one."""
        other = Engine(self.config, backend=self.replica_backend(name), kdf=self.kdf)
        other._catalog = self._catalog
        other.replica_name = name
        return other

    replica_name: str | None = None

    def replicate(
        self,
        replica: str | None = None,
        repair: bool = False,
        on_event: EventCallback = ignore,
        cancel: CancelToken | None = None,
        only_auto: bool = False,
    ) -> list[replicate_op.ReplicaResult]:
        """Copy what each replica lacks. repair: read-verify the replica first and upload
        again every object found damaged there."""
        self._admin("replicate")
        names = [replica] if replica else [r["name"] for r in self.config.replicas
                                           if r["replicate_after_backup"] or not only_auto]
        if replica:
            self.replica(replica)
        results = []
        for name in names:
            with self._job("replicate", name, on_event) as (job_id, emit):
                try:
                    bad: set[str] = set()
                    if repair:
                        report = self.for_replica(name).verify(read_data=True)
                        bad = {p.object for p in report.problems
                               if p.object.split("/")[0] in ("data", "index", "snapshots")}
                    res = replicate_op.replicate_one(
                        self.backend, self.replica_backend(name), name, job_id, emit, cancel,
                        repair=bad,
                    )
                except EngineError as e:
                    res = replicate_op.ReplicaResult(name, error=str(e))
                    emit(Event(job_id, "replicate", message=f"to {name}: failed: {e}",
                               final=True))
                if res.ok:
                    self.catalog.replica_done(name, res.snapshots)
                else:
                    self.catalog.replica_failed(name, res.error or "")
                    self.catalog.end_job(job_id, "failed", error=res.error or "")
                self.catalog.audit("replicate", name, "succeeded" if res.ok else "failed",
                                   detail=res.error or f"{res.uploaded} object(s) uploaded")
            results.append(res)
        return results

    def replica_states(self, check: bool = False) -> list[dict]:
        """Each configured replica: last success, last error, and how far behind it is.
        check=True lists both sides now (one LIST pass per object class) to measure the lag;
        otherwise the figures of the last run or check are given."""
        out = []
        for r in self.config.replicas:
            name = r["name"]
            if check:
                try:
                    objects, nbytes = replicate_op.lag(self.backend, self.replica_backend(name))
                    self.catalog.replica_lag(name, objects, nbytes)
                except EngineError as e:
                    self.catalog.replica_failed(name, str(e))
            st = self.catalog.replica_states().get(name, {})
            out.append({
                "name": name,
                "bucket": r["bucket"],
                "region": r["region"],
                "prefix": r["prefix"],
                "endpoint_url": r["endpoint_url"],
                "storage_class": r["storage_class"],
                "failing": bool(st.get("last_error_time")) and (
                    not st.get("last_success")
                    or st["last_error_time"] > st["last_success"]),
                "last_success": _iso(st.get("last_success")),
                "last_error": st.get("last_error") or None,
                "last_error_time": _iso(st.get("last_error_time")),
                "objects_behind": st.get("objects_behind"),
                "bytes_behind": st.get("bytes_behind"),
                "checked": _iso(st.get("checked")),
                "snapshots": len(self.catalog.replica_presence().get(name, ())),
            })
        return out

    def _replicate_after_backup(self, on_event, cancel) -> list:
        if not any(r["replicate_after_backup"] for r in self.config.replicas):
            return []
        if self.replica_name:  # a backup written straight into a replica
            return []
        return self.replicate(on_event=on_event, cancel=cancel, only_auto=True)

    def rebuild_catalog(self, from_replica: str | None = None) -> dict:
        """Recreate the state directory's catalog from a repository (DESIGN.md section 6):
        the local one, or a replica when the ops host was lost."""
        self._admin("catalog rebuild")
        source = self.for_replica(from_replica) if from_replica else self
        snaps = source.snapshots()  # opens the repository: checks the password too
        path = self.config.state_dir / "catalog.sqlite"
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                old = path.with_name(path.name + suffix)
                if old.exists():
                    old.rename(old.with_name(f"{old.name}.old-{stamp}"))
        self._catalog = None
        catalog = self.catalog
        if from_replica:
            catalog.replica_done(from_replica, [s.id for s in snaps])
        catalog.audit("catalog rebuild", from_replica or "local", "succeeded",
                      detail=f"{len(snaps)} snapshot(s)")
        return {"from": from_replica or "local", "snapshots": len(snaps),
                "state_dir": str(self.config.state_dir)}

    # ---------------------------------------------------------------- status
    def jobs(self, limit: int = 50) -> list[dict]:
        return self.catalog.jobs(limit)

    def status(self) -> dict:
        """Per source: the newest snapshot and its age; for databases, where the
        connection comes from. (Schedules and replicas join in later versions.)"""
        infos = self.snapshots()
        now = datetime.now(UTC)
        recent = self.catalog.jobs(500)
        next_runs = self.next_runs(now)
        sources = []
        for kind, name in self.sources():
            mine = [i for i in infos if i.kind == kind and i.source == name]
            good = [i for i in mine if i.complete]
            jobs = [j for j in recent if j["target"] == f"{kind}:{name}" and j["kind"] == "backup"]
            failures = [j for j in jobs if j["state"] in ("failed", "interrupted", "incomplete")]
            entry: dict = {
                "kind": kind,
                "name": name,
                "snapshots": len(mine),
                "last": mine[-1].time.isoformat() if mine else None,
                "last_good": good[-1].time.isoformat() if good else None,
                "last_good_ts": good[-1].time.timestamp() if good else None,
                "age_hours": round((now - good[-1].time).total_seconds() / 3600, 2)
                if good else None,
                "max_age_hours": self._max_age(kind, name),
                "last_failure": _iso(failures[0]["ended"]) if failures else None,
                "last_failure_error": failures[0]["error"] if failures else None,
                "next_run": _iso_dt(next_runs.get("database" if kind == "db" else "files")),
            }
            if kind == "db":
                try:
                    entry["connection"] = self.database_connection(name)
                except EngineError as e:
                    entry["connection"] = {"error": str(e)}
            sources.append(entry)
        running = [j for j in recent if j["state"] == "running"]
        stored = sum(self.repo().pack_sizes.values())
        logical = sum(i.size for i in infos)
        return {
            "repository": self.backend.location,
            "repository_bytes": stored,
            "dedup_ratio": round(logical / stored, 2) if stored else None,
            "sources": sources,
            "replicas": self.replica_states(),
            "schedules": self.schedules(now),
            "running": running,
        }

    def _max_age(self, kind: str, name: str) -> int:
        own = 0
        if kind == "files":
            own = self.config.fileset(name).max_age_hours
        elif kind == "db":
            own = int(self.database(name).get("max_age_hours", 0))
        return own or int(self.config.health["max_age_hours"])

    def health(self) -> dict:
        """ok when every source has a complete backup younger than its max_age_hours and every
        replica had a successful run within replica_max_age_hours; else the reasons."""
        reasons = []
        now = datetime.now(UTC)
        infos = self.snapshots()
        for kind, name in self.sources():
            good = [i for i in infos if i.kind == kind and i.source == name and i.complete]
            limit = self._max_age(kind, name)
            if not good:
                reasons.append(f"{kind} {name}: no complete backup")
            elif (now - good[-1].time).total_seconds() > limit * 3600:
                age = (now - good[-1].time).total_seconds() / 3600
                reasons.append(f"{kind} {name}: newest complete backup is {age:.1f} h old "
                               f"(limit {limit} h)")
        limit = int(self.config.health["replica_max_age_hours"])
        for r in self.replica_states():
            last = r["last_success"]
            if not last:
                reasons.append(f"replica {r['name']}: never replicated")
            elif (now - datetime.fromisoformat(last)).total_seconds() > limit * 3600:
                reasons.append(f"replica {r['name']}: last successful replication {last} "
                               f"(limit {limit} h)" + (f"; last error: {r['last_error']}"
                                                       if r["last_error"] else ""))
        return {"ok": not reasons, "reasons": reasons, "checked": now.isoformat()}

    # ------------------------------------------------------------- schedule
    def next_runs(self, now: datetime | None = None) -> dict[str, datetime | None]:
        from zoneinfo import ZoneInfo

        from engine.schedule import KINDS, next_run

        now = now or datetime.now(UTC)
        tz = ZoneInfo(self.config.schedule["timezone"])
        states = self.catalog.schedule_states()
        return {k: None if states.get(k, {}).get("paused")
                else next_run(self.config.schedule[k], tz, now) for k in KINDS}

    def schedules(self, now: datetime | None = None) -> list[dict]:
        """Each schedule: cron, paused, next run, last run and its result."""
        from engine.schedule import DESCRIPTIONS, KINDS

        nexts = self.next_runs(now)
        states = self.catalog.schedule_states()
        out = []
        for k in KINDS:
            st = states.get(k, {})
            out.append({
                "kind": k,
                "cron": self.config.schedule[k],
                "what": DESCRIPTIONS[k],
                "paused": bool(st.get("paused")),
                "next_run": _iso_dt(nexts[k]),
                "last_run": _iso(st.get("last_run")),
                "last_result": st.get("last_result") or None,
                "last_error": st.get("last_error") or None,
                "last_missed": _iso(st.get("last_missed")),
            })
        return out

    def pause(self, kind: str, paused: bool = True) -> None:
        from engine.schedule import KINDS

        if kind not in KINDS:
            raise UsageError(f"no schedule {kind!r} (known: {', '.join(KINDS)})")
        self._admin("pause" if paused else "resume")
        self.catalog.set_paused(kind, paused)
        self.catalog.audit("pause" if paused else "resume", kind, "succeeded")

    def request_run(self, kind: str) -> int:
        """Ask the running scheduler (daemon or console) to run a schedule now."""
        from engine.schedule import KINDS

        if kind not in KINDS:
            raise UsageError(f"no schedule {kind!r} (known: {', '.join(KINDS)})")
        self._admin("run now")
        rid = self.catalog.request_run(kind, security.current_user())
        self.catalog.audit("run now", kind, "requested")
        return rid

    def audit_log(self, limit: int = 200) -> list[dict]:
        return self.catalog.audit_log(limit)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


BackupResult = backup_op.BackupResult
RestorePlan = restore_op.RestorePlan
DbRestorePlan = restore_db_op.DbRestorePlan

__all__ = [
    "Engine",
    "SnapshotInfo",
    "BackupResult",
    "RestorePlan",
    "DbRestorePlan",
    "EngineError",
    "RepositoryError",
    "human_bytes",
]
