"""replicate: make each S3 replica a complete copy of the local repository.

Objects are copied as they are (sealed bytes), so a replica needs no keys to
receive them and is, with the password, a repository of its own. Order keeps
every replica consistent at every moment, like a backup's own write order:
``config`` and ``keys/`` first, then packs (``data/``), then ``index/``, then
``snapshots/``, then ``pins/`` and ``wal/``. Removals (forgotten snapshots,
pruned packs) are not copied: cleanup applies the retention policy to each
replica itself. Each class is listed once on each side; only what the replica
lacks (or holds with another size) is uploaded, concurrently. An interrupted
run leaves whole objects only, so the next run continues where it stopped. A
replica whose ``config`` names another repository is refused.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import EngineError, IntegrityError, NotFound, RepositoryError
from engine.events import CancelToken, Event, EventCallback
from engine.ops.resolve import iso
from engine.repo import codec
from engine.storage.base import Backend

if TYPE_CHECKING:
    from engine.config import ReplicaConfig
    from engine.facade import Engine

CLASSES = ("keys/", "data/", "index/", "snapshots/", "pins/", "wal/")


@dataclass
class ReplicaResult:
    replica: str
    uploaded: int = 0
    uploaded_bytes: int = 0
    present: int = 0
    repaired: int = 0
    snapshots: list[str] = field(default_factory=list)  # snapshot ids complete in the replica
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict:
        return {
            "replica": self.replica,
            "ok": self.ok,
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "present": self.present,
            "repaired": self.repaired,
            "snapshots": len(self.snapshots),
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def check_identity(local: Backend, remote: Backend) -> bool:
    """True if the replica already holds this repository; raises if it holds another."""
    mine = codec.parse_json(local.get("config"), "config")
    try:
        theirs = codec.parse_json(remote.get("config"), f"{remote.location}: config")
    except NotFound:
        return False
    except (ValueError, IntegrityError):
        raise RepositoryError(f"{remote.location}: holds an unreadable config; refusing to "
                              "replicate over it") from None
    if theirs.get("id") != mine.get("id"):
        raise RepositoryError(
            f"{remote.location}: holds a different repository (id {theirs.get('id')}, ours "
            f"{mine.get('id')}); refusing to mix them: use another bucket or prefix"
        )
    return True


def replicate_one(
    local: Backend,
    remote: Backend,
    name: str,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    workers: int = 8,
    repair: set[str] | None = None,
    classes: tuple[str, ...] = CLASSES,
) -> ReplicaResult:
    """Copy what the replica lacks. ``repair``: names to upload again even if present.
    ``classes``: the object classes to copy, in write order (WAL shipping copies
    ``keys/`` and ``wal/`` only)."""
    cancel = cancel or CancelToken()
    res = ReplicaResult(name)
    start = time.monotonic()
    if hasattr(remote, "check_bucket"):
        remote.check_bucket()
    has_config = check_identity(local, remote)
    # The local side is listed in the reverse of the write order (wal/ ... data/,
    # keys/): a backup running beside us (both hold shared locks) writes packs, then
    # its index, then its snapshot, so a snapshot seen here has its index and packs
    # in the listings that follow. Listed in write order, a backup finishing between
    # two listings would send its snapshot without its index.
    listed: dict[str, list] = {}
    for cls in reversed(classes):
        listed[cls] = sorted(local.list(cls), key=lambda o: o.name)
    todo: list[tuple[str, int]] = []
    for cls in classes:
        theirs = {o.name: o.size for o in remote.list(cls)}
        for obj in listed[cls]:
            again = bool(repair) and obj.name in repair
            if theirs.get(obj.name) != obj.size or again:
                todo.append((obj.name, obj.size))
                res.repaired += again
            else:
                res.present += 1
        if cls == "snapshots/":
            local_snaps = {o.name for o in listed[cls]}
            res.snapshots = sorted(n.split("/", 1)[1] for n in theirs if n in local_snaps)
    total = sum(s for _, s in todo)
    lock = threading.Lock()

    def emit(final: bool = False) -> None:
        on_event(Event(job_id, "replicate", bytes_done=res.uploaded_bytes, bytes_total=total,
                       items_done=res.uploaded, items_total=len(todo),
                       message=f"to {name}", final=final))

    if not has_config:
        remote.put("config", local.get("config"))

    def upload(obj: str) -> int:
        cancel.check()
        data = local.get(obj)
        remote.put(obj, data)
        with lock:
            res.uploaded += 1
            res.uploaded_bytes += len(data)
        emit()
        return len(data)

    # One class at a time, in dependency order: packs land before the index that
    # names them, indexes before the snapshots that need them.
    for cls in classes:
        batch = [n for n, _ in todo if n.startswith(cls)]
        if not batch:
            continue
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"up-{name}") as pool:
            futures = [pool.submit(upload, n) for n in batch]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in done:
                f.result()
        if cls == "snapshots/":
            res.snapshots = sorted(
                {*res.snapshots, *(n.split("/", 1)[1] for n in batch)}
            )
    res.seconds = time.monotonic() - start
    emit(final=True)
    return res


def lag(local: Backend, remote: Backend) -> tuple[int, int]:
    """(objects, bytes) the replica lacks: one LIST pass per object class on each side."""
    objects = nbytes = 0
    for cls in ("config", *CLASSES):
        theirs = {o.name: o.size for o in remote.list(cls)}
        for obj in local.list(cls):
            if cls == "config" and obj.name != "config":
                continue
            if theirs.get(obj.name) != obj.size:
                objects += 1
                nbytes += obj.size
    return objects, nbytes


# ------------------------------------------------------------ across replicas
def backend_for(replica: ReplicaConfig) -> Backend:
    """The S3 backend of one [[replica]]."""
    from engine.storage.s3 import S3Backend

    r = replica
    return S3Backend(
        bucket=r.bucket, region=r.region, prefix=r.prefix, endpoint_url=r.endpoint_url,
        profile=r.profile, storage_class=r.storage_class,
        object_lock_days=r.object_lock_days, object_lock_mode=r.object_lock_mode,
        name=r.name,
    )


def replicate(engine: Engine, names: list[str], repair: bool, on_event: EventCallback,
              cancel: CancelToken | None) -> list[ReplicaResult]:
    """Each replica independently, one job each: one region failing does not stop the
    others. repair: read-verify the replica first and upload again what is damaged."""
    results = []
    for name in names:
        with engine.job("replicate", name, on_event) as job:
            try:
                bad: set[str] = set()
                if repair:
                    report = engine.for_replica(name).verify(read_data=True)
                    bad = {p.object for p in report.problems
                           if p.object.split("/")[0] in ("data", "index", "snapshots")}
                res = replicate_one(engine.backend, engine.replica_backend(name), name,
                                    job.id, job.emit, cancel, repair=bad)
            except EngineError as e:
                res = ReplicaResult(name, error=str(e))
                job.emit(Event(job.id, "replicate", message=f"to {name}: failed: {e}",
                               final=True))
            if res.ok:
                engine.catalog.replica_done(name, res.snapshots)
                from engine.ops import walship  # wal/ went too: the replica's WAL state

                walship.record(engine, name, [s.name for s in walship.archiving_sources(engine)])
                job.detail = f"{res.uploaded} object(s) uploaded"
            else:
                engine.catalog.replica_failed(name, res.error or "")
                job.fail(res.error or "")
                job.detail = res.error or ""
        results.append(res)
    return results


def replica_states(engine: Engine, check: bool = False) -> list[dict]:
    """Each configured replica: last success, last error, and how far behind it is.
    check=True lists both sides now (one LIST pass per object class) to measure the lag;
    otherwise the figures of the last run or check are given."""
    out = []
    for r in engine.config.replicas:
        if check:
            try:
                objects, nbytes = lag(engine.backend, engine.replica_backend(r.name))
                engine.catalog.replica_lag(r.name, objects, nbytes)
            except EngineError as e:
                engine.catalog.replica_failed(r.name, str(e))
        st = engine.catalog.replica_states().get(r.name, {})
        out.append({
            "name": r.name,
            "bucket": r.bucket,
            "region": r.region,
            "prefix": r.prefix,
            "endpoint_url": r.endpoint_url,
            "storage_class": r.storage_class,
            "failing": bool(st.get("last_error_time")) and (
                not st.get("last_success") or st["last_error_time"] > st["last_success"]),
            "last_success": iso(st.get("last_success")),
            "last_error": st.get("last_error") or None,
            "last_error_time": iso(st.get("last_error_time")),
            "objects_behind": st.get("objects_behind"),
            "bytes_behind": st.get("bytes_behind"),
            "checked": iso(st.get("checked")),
            "snapshots": len(engine.catalog.replica_presence().get(r.name, ())),
        })
    return out
