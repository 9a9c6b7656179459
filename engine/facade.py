"""The Engine facade: the one entry point for the console, the daemon and the CLI.

Every method is blocking and runs in the caller's thread; call it from a worker
thread in a UI. Methods may run concurrently from several threads (the console
lists snapshots while a backup runs): the repository and catalog are opened once
under a lock, the catalog keeps one SQLite connection per thread, and backups
take repository locks like separate processes would. Long operations take
``on_event`` (called from the thread that runs the operation, so it must be
cheap and thread-safe) and a ``CancelToken``.

Each method is a few lines: the work is in ``engine/ops/`` (one module per
verb), the kinds of sources in ``engine/sources/``, and every operation runs as
a job through ``engine/jobs.py``. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, BinaryIO
from zoneinfo import ZoneInfo

from engine import security
from engine.catalog import Catalog
from engine.config import Config, warn_password_unused
from engine.errors import EngineError, NotFound, RepositoryError, UsageError
from engine.events import CancelToken, EventCallback, ignore
from engine.jobs import Job, run_job
from engine.ops import backup as backup_op
from engine.ops import dump as dump_op
from engine.ops import init as init_op
from engine.ops import resolve as resolve_op
from engine.ops.resolve import SnapshotInfo
from engine.repo import keycache
from engine.repo import locks as repo_locks
from engine.repo.repository import Repository
from engine.sources import registry
from engine.sources.base import SourceInfo
from engine.storage.base import Backend
from engine.storage.local import LocalBackend

if TYPE_CHECKING:  # the operations a command may not need are imported where used
    from engine.ops import adopt as adopt_op
    from engine.ops import doctor as doctor_op
    from engine.ops import repair as repair_op
    from engine.ops import replicate as replicate_op
    from engine.ops import retention as retention_op
    from engine.ops import verify as verify_op

log = logging.getLogger("backup_tui.engine")


class BackupAllError(EngineError):
    """Some sources of 'backup all' failed; the others' results are kept here."""

    def __init__(self, results: list, failures: list[str]):
        super().__init__("; ".join(failures))
        self.results = results
        self.failures = failures


class Engine:
    replica_name: str | None = None  # set on an Engine whose repository is a replica

    def __init__(self, config: Config, backend: Backend | None = None, kdf: dict | None = None):
        self.config = config
        self.backend = backend or LocalBackend(config.repo_path)
        self.kdf = kdf  # key derivation cost for init; tests pass a cheap one
        self._repo: Repository | None = None
        self._catalog: Catalog | None = None
        self._open_lock = threading.RLock()
        # stale-lock observations survive between runs (engine/repo/locks.py)
        repo_locks.set_observation_file(config.state_dir / "lock-observations.json")

    # ------------------------------------------------------------ plumbing
    @property
    def catalog(self) -> Catalog:
        with self._open_lock:
            if self._catalog is None:
                self._catalog = Catalog(self.config.state_dir,
                                        self.config.security.admin_group)
            return self._catalog

    def reopen_catalog(self) -> Catalog:
        with self._open_lock:
            self._catalog = None
            return self.catalog

    def repo(self) -> Repository:
        with self._open_lock:
            if self._repo is None:
                password = self.config.password()
                try:
                    # parsed index files: index-cache/; the key from the key cache when
                    # it holds this config's and password's (engine/repo/keycache.py)
                    self._repo = Repository.open(
                        self.backend, password, cache_dir=self.config.state_dir / "index-cache",
                        key_cache=self.config.state_dir if self.replica_name is None else None)
                except RepositoryError:
                    init_op.explain_missing_config(self.backend, self.replica_names())
                    raise
                if password and not self._repo.keys.encrypted:
                    warn_password_unused(self.backend.location)
                if password and self._repo.keys.encrypted and self.replica_name is None:
                    # wal-push then skips the key derivation (engine/repo/keycache.py)
                    keycache.store(self.config.state_dir, self._repo.config,
                                   self._repo.keys.master_key() or b"", password,
                                   self.config.repository.password_file)
            return self._repo

    def refresh(self) -> None:
        """Forget cached repository state (another process may have written)."""
        if self._repo is not None:
            self._repo.load_index()

    @property
    def timezone(self) -> tzinfo:
        return ZoneInfo(self.config.schedule.timezone)

    @contextlib.contextmanager
    def job(self, kind: str, target: str, on_event: EventCallback = ignore,
            admin: str | None = None, record: bool = True,
            read_only: bool = False) -> Iterator[Job]:
        """Run the body as a job (engine/jobs.py); ``admin`` names the action when only
        an admin may do it; record=False for an instant action (audited, no job row);
        read_only=True for a command anyone may run: its bookkeeping is skipped when the
        catalog cannot be written (another user's, or a full disk)."""
        if admin:
            self._admin(admin)
        catalog = self.catalog.lenient() if read_only else self.catalog
        with run_job(catalog, kind, target, on_event, self._after_job, record) as job:
            yield job

    def _after_job(self, job_id: str) -> None:
        """Notifications and the metrics file; neither may ever fail the job."""
        job = self.catalog.job(job_id) or {"id": job_id}
        if self.config.notify.webhook_url or self.config.notify.command:
            from engine import notify  # urllib and http.client: only when configured

            notify.notify(self.config.notify, job)
        textfile = self.config.metrics.textfile
        if textfile:
            from engine import metrics

            try:
                metrics.write_textfile(self, textfile)
            except (OSError, EngineError) as e:
                log.warning("cannot write metrics file %s: %s", textfile, e)

    def _admin(self, action: str) -> None:
        security.require_admin(self.config.security.admin_group, action)

    @property
    def is_admin(self) -> bool:
        return security.is_admin(self.config.security.admin_group)

    # ------------------------------------------------------------ repository
    def init(self) -> dict:
        self._admin("init")
        password = self.config.password()
        catalog = self.catalog  # a broken state dir fails here, before a repository is made
        init_op.refuse_existing(self.backend, self.replica_names())
        repo = Repository.init(self.backend, password, self.config.repository.compression,
                               self.kdf)
        self._repo = repo
        catalog.audit("init", self.backend.location, "succeeded")
        return {"id": repo.id, "location": self.backend.location,
                "encrypted": repo.keys.encrypted}

    # --------------------------------------------------------------- backup
    def sources(self) -> list[SourceInfo]:
        """Every configured source, of every kind, as screens and reports show it."""
        return [s.info() for s in registry.sources(self.config)]

    def backup(self, kind: str, name: str, on_event: EventCallback = ignore,
               cancel: CancelToken | None = None,
               replicate: bool = True) -> backup_op.BackupResult:
        """Back up one source; then, unless replicate=False, copy to the replicas that
        have replicate_after_backup (their failures are in result.replication)."""
        self._admin("backup")
        source = registry.source(self.config, kind, name)
        repo = self.repo()
        target = source.info().target
        with self.job("backup", target, on_event) as job:
            result = backup_op.run_backup(repo, source, job.id, job.emit, cancel,
                                          self.config.state_dir / "tmp")
            backup_op.record(job, result)
        if replicate:
            result.replication = self._replicate_after_backup(on_event, cancel)
        return result

    def backup_all(self, on_event: EventCallback = ignore,
                   cancel: CancelToken | None = None) -> list[backup_op.BackupResult]:
        """Every source (databases first). One failing source does not stop the others."""
        results: list[backup_op.BackupResult] = []
        failures: list[str] = []
        for src in registry.sources(self.config):
            try:
                results.append(self.backup(src.kind, src.name, on_event, cancel,
                                           replicate=False))
            except EngineError as e:
                failures.append(str(e))
        if results:  # one replication run for all the new snapshots
            results[-1].replication = self._replicate_after_backup(on_event, cancel)
        if failures:
            raise BackupAllError(results, failures)
        return results

    # ------------------------------------------------------------- inventory
    def snapshots(self, source: str | None = None, kind: str | None = None) -> list[SnapshotInfo]:
        return resolve_op.snapshot_infos(self.repo(), self.catalog, self.replica_names(),
                                         source, kind)

    def snapshot(self, ref: str, source: str | None = None) -> dict:
        """Resolve a full id, a unique prefix of 8+ characters, or 'latest'."""
        infos = self.snapshots(source=source) if ref == "latest" else []
        return resolve_op.resolve(self.repo(), infos, ref, source)

    def snapshot_at(self, source: str, when: datetime) -> tuple[dict, float]:
        """The newest snapshot of source taken at or before when; and how many seconds before."""
        best = resolve_op.newest_before(self.snapshots(source=source), source, when)
        return self.repo().load_snapshot(best.id), (when - best.time).total_seconds()

    def parse_time(self, text: str) -> datetime:
        """ISO 8601; without an offset it is read in the schedule's time zone."""
        return resolve_op.parse_time(text, self.timezone)

    # ---------------------------------------------------------------- verify
    def verify(self, refs: list[str] | None = None, read_data: bool = False,
               on_event: EventCallback = ignore,
               cancel: CancelToken | None = None) -> verify_op.VerifyReport:
        from engine.ops import verify as verify_op

        repo = self.repo()
        ids = [self.snapshot(r)["id"] for r in refs] if refs else None
        target = ",".join(i[:8] for i in ids) if ids else "all"
        catalog = self.catalog.lenient()  # a read-only command: bookkeeping if it can
        with self.job("verify", target, on_event, read_only=True) as job:
            if repo.key_from_cache:  # the key records themselves: open did not read them
                repo.check_key_records(self.config.password())
            with self._reading("verify"):
                report = verify_op.verify(repo, ids, read_data, job.id, job.emit, cancel,
                                          catalog)
            bad = {sid for p in report.problems for sid in p.snapshots}
            catalog.mark_verified([s for s in report.snapshots if s not in bad], read_data)
            job.audit_target = "read-data" if read_data else "quick"
            job.outcome = "ok" if report.ok else "problems"
            job.objects = report.snapshots
            job.detail = "; ".join(p.message for p in report.problems[:5])
        return report

    # --------------------------------------------------------------- restore
    def plan_restore(self, ref: str | dict, **options: Any) -> Any:
        """What restoring a snapshot would do, checked, before anything is written. The
        options are those of the snapshot kind's ``plan_restore`` (engine/sources/): for
        files ``target``, ``paths``, ``force``, ``resume`` (an existing target accepted,
        files already there with the snapshot's content kept: a restore that stopped part
        way finished); for a database ``target_db``, ``replace``, ``drop_old``,
        ``no_owner``, ``no_acl``, ``create_missing_roles``, ``with_globals``."""
        snap = ref if isinstance(ref, dict) else self.snapshot(ref)
        cls = registry.kind(snap.get("kind", ""))
        with self._reading(f"plan restore {snap['id'][:12]}", snap["id"]):
            return cls.plan_restore(self.config, self.repo(), snap, **options)

    def restore(self, plan: Any, on_event: EventCallback = ignore,
                cancel: CancelToken | None = None) -> Any:
        """Execute a plan from ``plan_restore``."""
        cls = registry.kind(plan.snapshot["kind"])
        with self.job("restore", plan.target_label, on_event, admin="restore") as job, \
                self._reading(f"restore {plan.snapshot['id'][:12]}", plan.snapshot["id"]):
            result = cls.restore(self.config, self.repo(), plan, job.id, job.emit, cancel)
            job.objects = [plan.snapshot["id"]]
            old = getattr(result, "old_db", None)
            job.detail = f"old database kept as {old}" if old else ""
        return result

    # ------------------------------------------------------- restore wizards
    # What a wizard asks besides the plan (engine/ops/restore_aid.py); all kind-blind.
    def restore_form(self, snap: dict) -> Any:
        """What restoring this snapshot asks for: a directory, a database (RestoreForm)."""
        return registry.kind(snap.get("kind", "")).restore_form(snap)

    def check_restore_target(self, snap: dict, value: str) -> None:
        """UsageError when ``value`` cannot be where this snapshot is restored."""
        registry.kind(snap.get("kind", "")).check_target(value)

    def snapshot_as_of(self, kind: str, source: str, text: str) -> tuple[dict, float]:
        """The newest snapshot of a source at or before a typed time; seconds before it.
        A time in the future or before the first backup is refused."""
        from engine.ops import restore_aid

        return restore_aid.as_of(self, kind, source, text)

    def snapshot_dir(self, snap: dict, path: str = "/") -> list[Any]:
        """One directory of a snapshot's tree (TreeEntry: name, path, type, size)."""
        from engine.ops import restore_aid

        return restore_aid.list_dir(self, snap, path)

    def restore_estimate(self, plan: Any) -> tuple[float | None, str]:
        """Seconds a restore should take (None: unknown), and what that rests on."""
        from engine.ops import restore_aid

        return restore_aid.estimate(self, plan)

    def check_restore(self, plan: Any, result: Any) -> Any:
        """The kind's validation of a finished restore (RestoreCheck): a database's tables
        and row counts, a directory's files and bytes."""
        from engine.ops import restore_aid

        return restore_aid.check(self, plan, result)

    # ---------------------------------------------------------- point in time
    def pitr_target(self, kind: str, value: str | None, inclusive: bool = True) -> Any:
        """A recovery target (engine/ops/pitr.py): kind time|lsn|xid|name|immediate; a
        time without an offset is read in the schedule's time zone."""
        from engine.ops import pitr as pitr_op

        return pitr_op.Target.parse(kind, value, self.timezone, inclusive)

    def pitr_plan(self, cluster: str, target: Any, replica: str | None = None) -> Any:
        """Which base backup and WAL recover ``cluster`` to ``target``, whether every
        segment is there (locally, in each replica), gaps, the newest reachable point."""
        from engine.ops import pitr as pitr_op

        with self.job("pitr-plan", pitr_op.JOB_TARGET + cluster, read_only=True) as job:
            result = pitr_op.plan(self, cluster, target, replica)
            job.audited = False  # a plan changes nothing
            job.outcome = "ok" if result.feasible else "refused"
        return result

    def restore_pitr(self, cluster: str, target: Any, pgdata: str, port: int | None = None,
                     start: bool = False, replace: bool = False, replica: str | None = None,
                     on_event: EventCallback = ignore, cancel: CancelToken | None = None,
                     wait_seconds: float = 3600.0) -> dict:
        """Recover ``cluster`` to ``target`` into data directory ``pgdata`` (absent or
        empty; the cluster's own, stopped, with replace), optionally start it and wait
        for promotion. From ``replica`` alone when named (no local repository needed)."""
        from engine.ops import pitr as pitr_op

        self._admin("restore")
        src = self.for_replica(replica) if replica and self.replica_name != replica else self
        with self.job("restore", pitr_op.JOB_TARGET + cluster, on_event) as job:
            plan = pitr_op.plan(src, cluster, target, replica)
            with src._reading(f"restore pitr {cluster}", plan.snapshot["id"]):
                result = pitr_op.restore(src, plan, pgdata, port, start, replace, job.id,
                                         job.emit, cancel, wait_seconds)
            job.objects = [plan.snapshot["id"]]
            job.detail = f"{target.describe()} into {result['pgdata']}" + (
                f"; old data directory kept as {result['moved_aside']}"
                if result.get("moved_aside") else "")
        return result

    # ------------------------------------------------------------------ dump
    def dump(self, ref: str, out: BinaryIO, path: str | None = None,
             warn: Callable[[str], None] | None = None) -> int:
        """The snapshot's native stream (pax tar, or the pg_dump archive) to ``out``;
        what cannot be in it (sockets) goes to ``warn``."""
        snap = self.snapshot(ref)
        with self._reading(f"dump {snap['id'][:12]}", snap["id"]):
            return dump_op.dump(self.repo(), snap, out, path, warn)

    @contextlib.contextmanager
    def _reading(self, purpose: str, snapshot_id: str | None = None) -> Iterator[None]:
        """A shared repository lock for a reader (a prune waits for it), then the index
        as it is now; the snapshot, if named, must still exist."""
        from engine.ops import locks as locks_op

        with repo_locks.reading(self.backend, purpose, wait=locks_op.LOCK_WAIT):
            repo = self.repo()
            repo.load_index(reuse=True)
            if snapshot_id and not self.backend.exists(f"snapshots/{snapshot_id}"):
                raise NotFound(f"snapshot {snapshot_id} no longer exists (a cleanup "
                               "removed it)")
            yield

    # --------------------------------------------------------------- cleanup
    def policy_for(self, kind: str, source: str) -> retention_op.Policy:
        """[retention], with the source's own retention table over it."""
        from engine.ops import cleanup as cleanup_op

        return cleanup_op.policy_for(self, kind, source)

    def plan_cleanup(self) -> list[retention_op.Decision]:
        """What the retention policy keeps and forgets, with the rule that decides each."""
        from engine.ops import cleanup as cleanup_op

        return cleanup_op.plan(self)

    def cleanup(self, dry_run: bool = False, on_event: EventCallback = ignore,
                cancel: CancelToken | None = None, replicas: bool = True,
                lock_wait: float = 300.0) -> dict:
        """Apply retention (forget) and prune, here and then on every replica."""
        from engine.ops import cleanup as cleanup_op

        if not dry_run:
            self._admin("cleanup")
        return cleanup_op.cleanup(self, dry_run, on_event, cancel, replicas, lock_wait)

    def pin(self, ref: str, note: str = "", pinned: bool = True) -> str:
        """Pin (or unpin) a snapshot: pinned snapshots are never forgotten by cleanup."""
        from engine.ops import prune as prune_op

        verb = "pin" if pinned else "unpin"
        self._admin(verb)
        sid = self.snapshot(ref)["id"]
        with self.job(verb, sid[:12], record=False) as job:
            (prune_op.pin(self.repo(), sid, note) if pinned else prune_op.unpin(self.repo(), sid))
            job.objects, job.detail = [sid], note
        return sid

    def forget(self, refs: list[str], force: bool = False) -> dict:
        """Delete snapshot records (ids, prefixes, 'latest'); pinned ones only with force
        (unpinned first). Their data goes with the next cleanup. Admin only, audited."""
        from engine.ops import repair as repair_op

        self._admin("forget")
        return repair_op.forget(self, refs, force)

    def repair(self, dry_run: bool = False, from_replica: str | None = None,
               on_event: EventCallback = ignore,
               cancel: CancelToken | None = None) -> repair_op.RepairReport:
        """Rebuild the index from the packs, fetch damaged or missing objects from a
        replica, save intact blobs of damaged packs, prune, and report what is lost."""
        from engine.ops import repair as repair_op

        self._admin("repair")
        return repair_op.repair(self, dry_run, from_replica, on_event, cancel)

    # -------------------------------------------------------------- replicas
    def replica_names(self) -> list[str]:
        return [r.name for r in self.config.replicas]

    def replica_backend(self, name: str) -> Backend:
        from engine.ops import replicate as replicate_op

        return replicate_op.backend_for(self.config.replica(name))

    def for_replica(self, name: str) -> Engine:
        """An Engine reading and writing the replica as its repository (no local state
        needed): list, verify, restore and dump from it exactly as from the local one."""
        other = Engine(self.config, backend=self.replica_backend(name), kdf=self.kdf)
        other._catalog = self._catalog
        other.replica_name = name
        return other

    def replicate(self, replica: str | None = None, repair: bool = False,
                  on_event: EventCallback = ignore, cancel: CancelToken | None = None,
                  only_auto: bool = False) -> list[replicate_op.ReplicaResult]:
        """Copy what each replica lacks. repair: read-verify the replica first and upload
        again every object found damaged there."""
        from engine.ops import locks as locks_op

        self._admin("replicate")
        if replica:
            self.config.replica(replica)
        names = [replica] if replica else [r.name for r in self.config.replicas
                                           if r.replicate_after_backup or not only_auto]
        return locks_op.replicate(self, names, repair, on_event, cancel)

    def replica_states(self, check: bool = False) -> list[dict]:
        """Each replica: last success, last error, how far behind (check=True: measure now)."""
        from engine.ops import replicate as replicate_op

        return replicate_op.replica_states(self, check)

    def _replicate_after_backup(self, on_event, cancel) -> list:
        if self.replica_name or not any(r.replicate_after_backup for r in self.config.replicas):
            return []  # nothing to copy to, or a backup written straight into a replica
        return self.replicate(on_event=on_event, cancel=cancel, only_auto=True)

    def rebuild_catalog(self, from_replica: str | None = None) -> dict:
        """Recreate the catalog from the local repository, or a replica after losing the host."""
        from engine.ops import rebuild as rebuild_op

        self._admin("catalog rebuild")
        return rebuild_op.rebuild_catalog(self, from_replica)

    def adopt(self, replica: str, on_event: EventCallback = ignore,
              cancel: CancelToken | None = None) -> adopt_op.AdoptResult:
        """Make the local repository from a replica after losing the host: same id and keys,
        every object checked as it lands; a second run resumes. Records the replica's
        presence in the catalog."""
        from engine.ops import adopt as adopt_op

        self._admin("adopt")
        result = adopt_op.adopt(self, replica, on_event, cancel)
        self._repo = None  # open the adopted repository afresh
        return result

    # ----------------------------------------------------------------- drill
    def drill(self, kind: str, name: str, on_event: EventCallback = ignore,
              cancel: CancelToken | None = None) -> Any:
        """Restore drill of one source (engine/ops/drill.py): its newest backup restored
        into scratch space on a throwaway server, validated, timed (RTO), torn down and
        recorded. Returns the DrillResult; a failed drill is a failed job, not raised."""
        from engine.ops import drill as drill_op

        self._admin("drill")
        source = registry.source(self.config, kind, name)
        with self.job("drill", source.info().target, on_event) as job:
            result = drill_op.run_drill(self, source, job.id, job.emit, cancel)
            job.objects = [result.snapshot] if result.snapshot else []
            job.detail = (f"RTO {result.rto_seconds} s" if result.ok else result.error)[:500]
            if not result.ok:
                job.fail(result.error)
        return result

    def drill_all(self, on_event: EventCallback = ignore,
                  cancel: CancelToken | None = None) -> list[Any]:
        """A drill of every source whose kind has drills, one after the other."""
        from engine.ops import drill as drill_op

        return [self.drill(s.kind, s.name, on_event, cancel)
                for s in registry.sources(self.config) if drill_op.drillable(s)]

    def drills(self, kind: str | None = None, source: str | None = None,
               limit: int = 50) -> list[dict]:
        """Recorded drills, newest first."""
        return self.catalog.drills(kind, source, limit)

    # ---------------------------------------------------------------- status
    def jobs(self, limit: int = 50) -> list[dict]:
        return self.catalog.jobs(limit)

    def status(self) -> dict:
        from engine.ops import status as status_op

        return status_op.status(self)

    def health(self) -> dict:
        from engine.ops import status as status_op

        return status_op.health(self)

    def overview(self) -> tuple[dict, dict]:
        """``status()`` and ``health()`` from one listing of the snapshots (the dashboard)."""
        from engine.ops import status as status_op

        return status_op.overview(self)

    def history(self, days: int = 30) -> dict:
        """The dashboard's figures over the last ``days`` days: repository size and bytes
        added per day, backup durations, drills' RTO (engine/ops/status.py)."""
        from engine.ops import status as status_op

        return status_op.history(self, days)

    # ------------------------------------------------------------- schedule
    def next_runs(self, now: datetime | None = None) -> dict[str, datetime | None]:
        from engine.ops import status as status_op

        return status_op.next_runs(self, now)

    def schedules(self, now: datetime | None = None) -> list[dict]:
        from engine.ops import status as status_op

        return status_op.schedules(self, now)

    def _schedule_kind(self, kind: str) -> None:
        kinds = self.config.schedule.kinds
        if kind not in kinds:
            raise UsageError(f"no schedule {kind!r} (known: {', '.join(kinds)})")

    def pause(self, kind: str, paused: bool = True) -> None:
        self._schedule_kind(kind)
        verb = "pause" if paused else "resume"
        with self.job(verb, kind, admin=verb, record=False):
            self.catalog.set_paused(kind, paused)

    def request_run(self, kind: str) -> int:
        """Ask the running scheduler (daemon or console) to run a schedule now."""
        self._schedule_kind(kind)
        with self.job("run now", kind, admin="run now", record=False) as job:
            rid = self.catalog.request_run(kind, security.current_user())
            job.outcome = "requested"
        return rid

    # ----------------------------------------------------------------- locks
    def locks(self) -> list[dict]:
        """Every repository lock: owner, host, pid (alive?), age, stale and why."""
        from engine.ops import locks as locks_op

        return locks_op.locks(self.backend)

    def break_lock(self, lock_id: str | None = None, stale: bool = False) -> list[dict]:
        """Remove one lock by id (prefix), or every stale one (admin; audited)."""
        from engine.ops import locks as locks_op

        with self.job("lock break", lock_id or "stale", admin="lock break",
                      record=False) as job:
            removed = locks_op.break_lock(self.backend, lock_id, stale)
            job.detail = "; ".join(f"{r['id']} {r['purpose']} pid {r['pid']} on {r['host']}"
                                   for r in removed) or "none"
        return removed

    def doctor(self, fix: bool = False) -> doctor_op.DoctorReport:
        """What interrupted runs left behind (temporary databases of killed restores, their
        staged folders); fix=True (admin, audited) cleans up what this tool recorded."""
        from engine.ops import doctor as doctor_op

        if not fix:
            return doctor_op.doctor(self.config)
        with self.job("doctor", "fix", admin="doctor --fix", record=False) as job:
            report = doctor_op.doctor(self.config, fix=True)
            job.detail = "; ".join(report.fixed)[:500] or "nothing to fix"
        return report

    def audit_log(self, limit: int = 200) -> list[dict]:
        return self.catalog.audit_log(limit)

    # -------------------------------------------------------------- API keys
    def _api_keys(self) -> Any:
        """The key store of the state directory (engine/api/keys.py), imported only here:
        the console and wal-push never load engine.api."""
        from engine.api.keys import KeyStore

        with self._open_lock:
            if getattr(self, "_key_store", None) is None:
                self.catalog  # noqa: B018 - makes the state directory with its modes first
                self._key_store = KeyStore(self.config.state_dir)
            return self._key_store

    def api_key_create(self, name: str, role: str) -> str:
        """A new API key for the daemon's HTTP API; returns its text, shown this once (the
        store keeps a salted hash). Admin only; audited with the name, never the key."""
        with self.job("api-key create", name, admin="api-key create", record=False) as job:
            text = self._api_keys().create(name, role)
            job.outcome, job.detail = "created", f"role {role}"
        return text

    def api_key_list(self) -> list[dict]:
        """Every API key, revoked ones too: name, role, created, revoked (no hashes)."""
        return self._api_keys().list()

    def api_key_revoke(self, name: str) -> None:
        """Revoke an API key at once (a running daemon rereads the store). Admin only,
        audited."""
        with self.job("api-key revoke", name, admin="api-key revoke", record=False) as job:
            self._api_keys().revoke(name)
            job.outcome = "revoked"


BackupResult = backup_op.BackupResult

__all__ = ["Engine", "SnapshotInfo", "SourceInfo", "BackupResult", "BackupAllError",
           "EngineError", "RepositoryError"]
