"""lock list / lock break, and the shared locks of the readers.

``locks`` lists every ``locks/<id>`` record of a repository as this host judges
it (engine/repo/locks.py: owner, host, pid and whether it runs when it is on
this host, age, stale or not and why). ``break_lock`` removes one lock by id
(or unique id prefix), or every stale one; the facade gates it to admins and
audits it.

``replicate`` runs each replica's copy under a shared lock on the replica (its
cleanup prunes packs that no index names yet, so an upload must hold one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import EngineError, NotFound, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.ops import replicate as replicate_op
from engine.repo.locks import STALE, RepoLock, list_locks, reading
from engine.storage.base import Backend

if TYPE_CHECKING:
    from engine.facade import Engine

LOCK_WAIT = 60.0


def locks(backend: Backend) -> list[dict]:
    """Every lock of the repository, oldest first, as JSON-ready dicts."""
    infos = list_locks(backend)
    infos.sort(key=lambda i: (-(i.age or 0.0), i.id))
    return [i.as_json() for i in infos]


def break_lock(backend: Backend, lock_id: str | None = None, stale: bool = False) -> list[dict]:
    """Remove the lock ``lock_id`` (a unique prefix will do), or with ``stale`` every
    stale one. Returns the removed locks as ``locks`` shows them."""
    if bool(lock_id) == bool(stale):
        raise UsageError("name one lock id, or --stale for every stale lock")
    infos = list_locks(backend)
    if stale:
        chosen = [i for i in infos if i.stale]
    else:
        assert lock_id is not None
        want = lock_id.removeprefix("locks/").lower()
        chosen = [i for i in infos if i.id.startswith(want)] if want else []
        if not chosen:
            raise NotFound(f"{backend.location}: no lock {lock_id!r} (see 'backup-tui lock "
                           "list')")
        if len(chosen) > 1:
            raise UsageError(f"lock id {lock_id!r} is ambiguous: "
                             f"{', '.join(i.id for i in chosen)}")
    for info in chosen:
        backend.delete(info.name)
    return [i.as_json() for i in chosen]


def replicate(engine: Engine, names: list[str], repair: bool, on_event: EventCallback,
              cancel: CancelToken | None) -> list[replicate_op.ReplicaResult]:
    """`replicate_op.replicate`, one replica at a time, each under a shared lock on the
    replica; the local repository is read under a shared lock too. A replica whose
    lock cannot be taken (busy, unreachable) fails alone, like any replica error."""
    results: list[replicate_op.ReplicaResult] = []
    with reading(engine.backend, "replicate", wait=LOCK_WAIT):
        for name in names:
            try:
                remote = engine.replica_backend(name)
                lock = RepoLock(remote, exclusive=False, purpose=f"replicate to {name}")
                lock.acquire(wait=LOCK_WAIT)
            except EngineError as e:
                results.append(_failed(engine, name, str(e), on_event))
                continue
            try:
                results += replicate_op.replicate(engine, [name], repair, on_event, cancel)
            finally:
                lock.release()
    return results


def _failed(engine: Engine, name: str, error: str,
            on_event: EventCallback) -> replicate_op.ReplicaResult:
    with engine.job("replicate", name, on_event) as job:
        job.emit(Event(job.id, "replicate", message=f"to {name}: failed: {error}", final=True))
        engine.catalog.replica_failed(name, error)
        job.fail(error)
        job.detail = error
    return replicate_op.ReplicaResult(name, error=error)


__all__ = ["locks", "break_lock", "replicate", "STALE"]
