"""forget, prune and pins: the repository side of retention (docs/ARCHITECTURE.md).

``forget`` deletes snapshot objects. ``prune`` then removes the data no
remaining snapshot uses:

1. under an exclusive lock, reload the index and collect every blob that every
   remaining snapshot references (`used_blobs`); refuse to go on if an index
   file or a snapshot cannot be read, or a used blob is in no index, since
   pruning on partial knowledge could delete live data;
2. sort the packs the index names: *delete* (no used blob), *repack* (the
   unused bytes exceed ``repack_threshold`` of the pack's size), *keep*; and
   find the *unreferenced* packs (in ``data/`` but in no index file: left by an
   interrupted backup or an interrupted prune);
3. write the used blobs of the repacked packs into new packs (each blob is
   authenticated and checked against its id first; its sealed bytes are copied
   as they are, so nothing is re-encrypted);
4. write one new index file naming every kept and new pack;
5. delete the old index files;
6. delete the dropped, repacked and unreferenced packs.

Crash safety: until step 4 the repository only gained unreferenced packs.
Between 4 and 5 old and new index files overlap (a blob may be named twice,
which readers accept). Between 5 and 6 the leftover packs are unreferenced and
the next prune removes them. A pack named by the new index is never deleted.

Locked objects (S3 Object Lock): a delete that fails is recorded in
``PruneReport.skipped`` and the cleanup goes on. An old index file that cannot
be deleted still names its packs, so none of those packs is deleted either:
every index file that remains names only packs that exist.

Unreferenced packs and the grace period (``unreferenced_grace``, 1 hour): the
exclusive lock is the real guard, since every writer (backup, pin, adopt,
replicate into a replica) holds a shared lock from before its first pack until
after its snapshot, so while we hold the exclusive lock no live writer can have
unindexed packs: the packs of a failed or killed backup are garbage at once. But
a lock is ignored once it is stale, and a stale lock whose owner might still be
running (on another host, unreadable, or a process of this host that stopped
refreshing it) may belong to a backup that wakes up and commits its index later.
When taking our lock removed such a lock, a pack written within the grace period
is left alone (and reported); an older one is garbage. The age comes from the
backend where it can tell (local files: mtime; S3: LastModified); where it
cannot, the lock alone decides.

Partial objects (``.tmp-*`` of a local repository, left by a writer killed
mid-write) are removed once no lock could own them: older than the stale
timeout, or, when no possibly-live lock was removed, older than TEMP_MIN_AGE (a
lock being taken writes one for a moment). Removing one never loses data: a
writer still busy with it fails its rename and reports it.

Pins: ``pins/<snapshot id>`` (plain JSON, see docs/FORMAT.md) keep a snapshot
regardless of the retention policy; `forget` refuses (skips) a pinned snapshot.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.errors import EngineError, NotFound
from engine.events import CancelToken, Event, EventCallback
from engine.repo import codec
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import stored_ids
from engine.repo.locks import STALE, RepoLock, list_locks
from engine.repo.pack import DATA, TREE, BlobEntry, PackBuilder, pack_name
from engine.repo.repository import PACK_TARGET, Repository
from engine.storage.base import Backend

LOCK_WAIT = 60.0
UNREFERENCED_GRACE = 3600.0
TEMP_MIN_AGE = 120.0  # seconds: a partial object younger than this may be a live put
MAX_INDEX_BLOBS = 500_000  # blob entries per index file (records are bounded at read)
_PACK_NAME = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")
_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")


class PruneRefused(EngineError):
    """Pruning would act on partial knowledge of what is in use; nothing was deleted."""


@dataclass
class PruneReport:
    """What prune did (or, with dry_run, would do). Pack lists hold pack ids."""

    dry_run: bool
    snapshots: int = 0  # snapshots whose data is kept
    packs_total: int = 0  # packs named by the index before
    packs_deleted: list[str] = field(default_factory=list)  # no used blob left
    packs_repacked: list[str] = field(default_factory=list)  # used blobs moved to new packs
    packs_unreferenced: list[str] = field(default_factory=list)  # in no index: garbage
    packs_written: list[str] = field(default_factory=list)  # new packs from repacking
    bytes_deleted: int = 0
    bytes_written: int = 0  # new packs (an estimate in a dry run)
    blobs_kept: int = 0  # blobs the snapshots use
    blobs_removed: int = 0  # blobs no index names any more
    index_written: list[str] = field(default_factory=list)
    index_deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<object>: <why>", e.g. "locked: ..."
    temp_deleted: list[str] = field(default_factory=list)  # partial objects (.tmp-*) removed
    temp_bytes: int = 0

    @property
    def bytes_freed(self) -> int:
        return self.bytes_deleted - self.bytes_written

    def as_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "snapshots": self.snapshots,
            "packs_total": self.packs_total,
            "packs_deleted": len(self.packs_deleted),
            "packs_repacked": len(self.packs_repacked),
            "packs_unreferenced": len(self.packs_unreferenced),
            "packs_written": len(self.packs_written),
            "bytes_deleted": self.bytes_deleted,
            "bytes_written": self.bytes_written,
            "bytes_freed": self.bytes_freed,
            "blobs_kept": self.blobs_kept,
            "blobs_removed": self.blobs_removed,
            "index_written": list(self.index_written),
            "index_deleted": list(self.index_deleted),
            "skipped": list(self.skipped),
            "temp_deleted": len(self.temp_deleted),
            "temp_bytes": self.temp_bytes,
        }


# ------------------------------------------------------------------- forget


def forget(
    repo: Repository,
    snapshot_ids: list[str],
    *,
    skipped: list[str] | None = None,
    lock_wait: float = LOCK_WAIT,
    on_deleted: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Delete ``snapshots/<id>`` for each full snapshot id, under an exclusive lock.
    ``on_deleted`` gets the deleted ids while the lock is still held (the catalog records
    them as removed on purpose before a reader under a shared lock can miss them).

    Returns the ids actually deleted. An id that is pinned, does not exist or
    whose object cannot be deleted (S3 Object Lock) is left alone and, when a
    ``skipped`` list is given, a line ``"snapshots/<id>: <why>"`` is appended to
    it. The data stays until `prune`.
    """
    skipped = skipped if skipped is not None else []
    deleted: list[str] = []
    with RepoLock(repo.backend, exclusive=True, purpose="cleanup").acquire(wait=lock_wait):
        present = set(repo.list_ids("snapshots"))
        pins = pinned(repo)
        for sid in dict.fromkeys(snapshot_ids):
            name = f"snapshots/{sid}"
            if sid not in present:
                skipped.append(f"{name}: no such snapshot")
            elif sid in pins:
                skipped.append(f"{name}: pinned (unpin it first)")
            elif _delete(repo.backend, name, skipped):
                deleted.append(sid)
        if on_deleted is not None and deleted:
            on_deleted(deleted)
    return deleted


# --------------------------------------------------------------- used blobs


def used_blobs(repo: Repository) -> set[str]:
    """Every blob id that a snapshot in the repository references.

    Files snapshots: the root ``tree``, every subtree and every file's content
    blobs (for a block stored as a delta, format 1.2, its two blobs: the base
    stays while a kept snapshot's delta needs it, whichever snapshot stored it); db
    snapshots: ``stream``, ``globals`` and, for the directory format,
    ``tree``. Shared subtrees are read once. Raises `PruneRefused` when an index
    file is damaged (``repo.index_errors``), a snapshot cannot be read or is of
    a newer format, or a tree cannot be read: what it references is unknown.
    """
    if repo.index_errors:
        names = ", ".join(f"index/{i}" for i in sorted(repo.index_errors))
        raise PruneRefused(
            f"cleanup refused: damaged index file(s) {names}: the blobs they name are "
            "unknown and could be deleted while in use; 'backup-tui repair' rebuilds the "
            "index from the packs"
        )
    used: set[str] = set()
    seen_trees: set[str] = set()
    for sid in repo.list_ids("snapshots"):
        try:
            snap = repo.load_snapshot(sid)
        except EngineError as e:
            raise PruneRefused(
                f"cleanup refused: snapshots/{sid} cannot be read ({e}); the data it uses is "
                f"unknown. 'backup-tui repair --from REPLICA' fetches it again, or 'backup-tui "
                f"forget {sid} --yes' drops it; then clean up"
            ) from None
        try:
            _snapshot_blobs(repo, snap, used, seen_trees)
        except EngineError as e:
            raise PruneRefused(
                f"cleanup refused: the data of snapshot {sid} cannot be listed ({e}); "
                "'backup-tui repair' rebuilds the index from the packs and names what is lost"
            ) from None
    return used


def _snapshot_blobs(repo: Repository, snap: dict, used: set[str], seen: set[str]) -> None:
    sid = snap["id"]
    if snap.get("version", 1) != 1:
        raise EngineError(f"snapshot format {snap.get('version')!r} is newer than this program")
    for key in ("stream", "globals"):
        ids = snap.get(key) or []
        if not isinstance(ids, list) or not all(isinstance(b, str) for b in ids):
            raise EngineError(f"snapshots/{sid}: malformed {key!r}")
        used.update(ids)
    root = snap.get("tree")
    if root is None:
        return
    if not isinstance(root, str):
        raise EngineError(f"snapshots/{sid}: malformed 'tree'")
    # Reachability only: every subtree and content id is collected whatever the node
    # type (collecting too much is safe); restore applies the name rules (walk.py).
    stack = [root]
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        used.add(tid)
        for node in repo.load_tree(tid)["nodes"]:
            if not isinstance(node, dict):
                raise EngineError(f"tree {tid}: malformed node")
            sub = node.get("subtree")
            if sub is not None:
                if not isinstance(sub, str):
                    raise EngineError(f"tree {tid}: malformed subtree")
                stack.append(sub)
            content = node.get("content") or []
            if not isinstance(content, list) or not all(isinstance(b, str) for b in content):
                raise EngineError(f"tree {tid}: malformed content list")
            # a block stored as a delta (format 1.2) needs its two blobs, not its own id
            # (which is not stored); a malformed delta list raises UnsafeEntry: refused
            used.update(stored_ids(node, f"tree {tid}") if DELTA_KEY in node else content)


# -------------------------------------------------------------------- prune


def prune(
    repo: Repository,
    dry_run: bool = False,
    repack_threshold: float = 0.5,
    on_event: EventCallback | None = None,
    *,
    job_id: str = "prune",
    lock_wait: float = LOCK_WAIT,
    unreferenced_grace: float = UNREFERENCED_GRACE,
    cancel: CancelToken | None = None,
) -> PruneReport:
    """Delete the data no snapshot uses; see the module docstring for the steps.

    repack_threshold: a pack still holding used blobs is rewritten when its unused
      bytes exceed this fraction of its size (0 repacks every pack with any unused
      blob; 1 never repacks).
    dry_run: compute and report, change nothing (takes a shared lock only).
    unreferenced_grace: seconds a pack in no index must have existed before it
      is deleted, when a writer could still own it (see the module docstring).
    cancel: honoured until the first write; after that prune runs to the end.
    Raises `PruneRefused` (nothing changed) when what is in use cannot be known,
    `LockedError` when the repository stays locked for lock_wait seconds.
    The repository's in-memory index is reloaded at the end (also on failure),
    before the lock is released.
    """
    if not 0 <= repack_threshold <= 1:
        raise ValueError(f"repack_threshold must be in [0, 1], not {repack_threshold}")
    emit = on_event or (lambda _e: None)
    cancel = cancel or CancelToken()
    report = PruneReport(dry_run=dry_run)
    lock = RepoLock(repo.backend, exclusive=not dry_run,
                    purpose="cleanup (dry run)" if dry_run else "cleanup")
    with lock.acquire(wait=lock_wait):
        # Could a live writer own unindexed packs or partial objects? Only one whose
        # lock we just judged stale without knowing it is gone (another host, ...),
        # or, in a dry run (shared lock), any other live lock.
        owners = bool(lock.removed_maybe_live) or (dry_run and any(
            not i.stale for i in list_locks(repo.backend, skip=lock.name)))
        grace = unreferenced_grace if owners else 0.0
        try:
            _prune(repo, report, repack_threshold, grace, job_id, emit, cancel)
            _reclaim_temp(repo.backend, report, STALE if owners else TEMP_MIN_AGE)
        finally:
            # still under the lock, so a backup of this process that waits for it
            # never sees the index of before the prune
            repo.load_index()
    emit(Event(job_id, "done", message=_summary(report), final=True))
    return report


def _summary(r: PruneReport) -> str:
    verb = "would free" if r.dry_run else "freed"
    return (f"{verb} {r.bytes_freed} bytes: {len(r.packs_deleted)} pack(s) deleted, "
            f"{len(r.packs_repacked)} repacked, {len(r.packs_unreferenced)} unreferenced"
            + (f", {len(r.temp_deleted)} partial object(s) ({r.temp_bytes} bytes)"
               if r.temp_deleted else "")
            + (f", {len(r.skipped)} skipped" if r.skipped else ""))


def _reclaim_temp(backend: Backend, report: PruneReport, min_age: float) -> None:
    """Partial objects (``.tmp-*``) older than min_age: removed (listed in a dry run)."""
    listing = getattr(backend, "list_temp", None)
    if not callable(listing):
        return  # a backend without partial objects (S3 puts are atomic)
    now = time.time()
    for name, size, mtime in list(listing()):
        if now - mtime < min_age:
            report.skipped.append(f"{name}: partial object only {int(now - mtime)} s old; left "
                                  "for a later cleanup (a write may be under way)")
            continue
        if not report.dry_run:
            try:
                backend.delete_temp(name)
            except (OSError, EngineError) as e:
                report.skipped.append(f"{name}: cannot remove partial object: {e}")
                continue
        report.temp_deleted.append(name)
        report.temp_bytes += size


def _prune(
    repo: Repository,
    report: PruneReport,
    threshold: float,
    grace: float,
    job_id: str,
    emit: Callable[[Event], None],
    cancel: CancelToken,
) -> None:
    backend = repo.backend
    emit(Event(job_id, "snapshots", message="listing the data in use"))
    repo.load_index()
    used = used_blobs(repo)
    report.snapshots = len(repo.list_ids("snapshots"))
    missing = [b for b in used if b not in repo.index]
    if missing:
        raise PruneRefused(
            f"cleanup refused: {len(missing)} blob(s) used by snapshots are in no index "
            f"(e.g. {sorted(missing)[0]}); an index file may be lost, and the packs it named "
            "would look like garbage. 'backup-tui repair' rebuilds the index from the packs "
            "(and names what is lost)"
        )
    report.blobs_kept = len(used)
    cancel.check()

    old_files = sorted(repo.index_files)
    packs, named_by = _read_index_files(repo, old_files)
    report.packs_total = len(packs)
    present: dict[str, int] = {}
    for info in backend.list("data/"):
        m = _PACK_NAME.match(info.name)
        if m and m.group(2).startswith(m.group(1)):
            present[m.group(2)] = info.size
        else:
            report.skipped.append(f"{info.name}: not a pack name (left alone)")

    # Sort the indexed packs. A blob counts as used only in the pack its index
    # entry points to; other copies of it (duplicates) are garbage.
    delete: list[str] = []
    repack: dict[str, list[BlobEntry]] = {}
    keep: list[str] = []
    for pid, (size, entries) in sorted(packs.items()):
        live = [e for e in entries if e.id in used and repo.index[e.id].pack_id == pid]
        unused = sum(e.length for e in entries) - sum(e.length for e in live)
        if not live:
            delete.append(pid)
        elif unused > threshold * size:
            if pid in present:
                repack[pid] = live
            else:
                keep.append(pid)
                report.skipped.append(f"{pack_name(pid)}: missing, cannot be repacked "
                                      "(run 'backup-tui verify')")
        else:
            keep.append(pid)

    now = time.time()
    unreferenced: list[str] = []
    for pid in sorted(present):
        if pid in packs:
            continue
        mtime = _object_mtime(backend, pack_name(pid))
        if grace > 0 and mtime is not None and now - mtime < grace:
            report.skipped.append(
                f"{pack_name(pid)}: in no index but only {int(now - mtime)} s old; left for a "
                "later cleanup (it may belong to a backup that is still writing)")
            continue
        unreferenced.append(pid)

    if report.dry_run:
        report.packs_deleted = delete
        report.packs_repacked = sorted(repack)
        report.packs_unreferenced = unreferenced
        report.bytes_deleted = sum(present.get(p, 0) for p in [*delete, *repack, *unreferenced])
        report.bytes_written = sum(e.length for live in repack.values() for e in live)
        report.blobs_removed = _count_removed(packs, keep, repack)
        if delete or repack:
            report.index_deleted = old_files
        return
    if not delete and not repack and not unreferenced:
        return
    cancel.check()  # the last point where stopping is harmless

    # 3. Repack: used blobs of mostly-empty packs into new packs.
    new_packs: list[tuple[str, int, list[BlobEntry]]] = []
    if repack:
        new_packs = _repack(repo, repack, keep, report, job_id, emit)
    report.packs_repacked = sorted(p for p in repack if p not in keep)
    report.bytes_written = sum(size for _pid, size, _e in new_packs)
    report.packs_written = [pid for pid, _s, _e in new_packs]

    live_packs: set[str] = set()  # named by the new index: never deleted
    protected: set[str] = set()  # named by an old index file that could not be deleted
    if delete or report.packs_repacked:
        # 4. One new index for every kept and new pack (split only when huge).
        final: list[tuple[str, int, list[BlobEntry]]] = []
        for pid in sorted(set(keep)):
            final.append((pid, packs[pid][0], packs[pid][1]))
        final += [p for p in new_packs if p[0] not in set(keep)]
        covered = {e.id for _pid, _size, entries in final for e in entries}
        if used - covered:  # cannot happen; never delete on a wrong plan
            raise EngineError(f"prune: internal error: {len(used - covered)} used blob(s) would "
                              "lose their index entry; nothing was deleted")
        emit(Event(job_id, "index", message="writing the new index"))
        report.index_written = repo.write_indexes(final)
        live_packs = {pid for pid, _s, _e in final}
        # 5. Old index files. One that cannot be deleted keeps its packs alive.
        for iid in old_files:
            if iid in report.index_written:
                continue
            if _delete(backend, f"index/{iid}", report.skipped):
                report.index_deleted.append(iid)
            else:
                protected |= {p for p, files in named_by.items() if iid in files}
        report.blobs_removed = _count_removed(packs, keep, repack)

    # 6. Packs: dropped, repacked, unreferenced.
    todo = [("packs_deleted", p) for p in delete]
    todo += [("packs_repacked", p) for p in report.packs_repacked]
    todo += [("packs_unreferenced", p) for p in unreferenced]
    done: dict[str, list[str]] = {"packs_deleted": [], "packs_repacked": [],
                                  "packs_unreferenced": []}
    for i, (what, pid) in enumerate(todo):
        name = pack_name(pid)
        if pid in live_packs:
            continue
        if pid in protected:
            report.skipped.append(f"{name}: kept, an index file that could not be deleted "
                                  "names it")
            continue
        emit(Event(job_id, "delete", items_done=i, items_total=len(todo), message=name))
        if pid not in present or _delete(backend, name, report.skipped):
            done[what].append(pid)
            report.bytes_deleted += present.get(pid, 0)
    report.packs_deleted = done["packs_deleted"]
    report.packs_unreferenced = done["packs_unreferenced"]
    # packs_repacked keeps every pack whose blobs moved, deleted or not (see skipped)


def _read_index_files(
    repo: Repository, files: list[str]
) -> tuple[dict[str, tuple[int, list[BlobEntry]]], dict[str, set[str]]]:
    """Every pack the index files name, with all its entries, and which files name it."""
    packs: dict[str, tuple[int, list[BlobEntry]]] = {}
    named_by: dict[str, set[str]] = {}
    for iid in files:
        try:
            doc = repo.load_record("index", iid)
            listed = [
                (p["id"], int(p["size"]),
                 [BlobEntry(t, bid, int(o), int(n), int(r)) for t, bid, o, n, r in p["blobs"]])
                for p in doc.get("packs", [])
            ]
        except (EngineError, KeyError, TypeError, ValueError) as e:
            raise PruneRefused(f"cleanup refused: index/{iid} cannot be read ({e})") from None
        for pid, size, entries in listed:
            named_by.setdefault(pid, set()).add(iid)
            packs.setdefault(pid, (size, entries))
    return packs, named_by


def _count_removed(packs: dict, keep: list[str], repack: dict) -> int:
    before = {e.id for _size, entries in packs.values() for e in entries}
    after = {e.id for pid in keep for e in packs[pid][1]}
    after |= {e.id for pid, live in repack.items() if pid not in keep for e in live}
    return len(before - after)


def _repack(
    repo: Repository,
    repack: dict[str, list[BlobEntry]],
    keep: list[str],
    report: PruneReport,
    job_id: str,
    emit: Callable[[Event], None],
) -> list[tuple[str, int, list[BlobEntry]]]:
    """Copy the live blobs of each pack into new packs; a pack that cannot be read
    whole and intact is moved to ``keep`` instead (and reported)."""
    builders = {DATA: PackBuilder(), TREE: PackBuilder()}
    written: list[tuple[str, int, list[BlobEntry]]] = []

    def flush(blob_type: str) -> None:
        builder = builders[blob_type]
        if not builder.entries:
            return
        entries = builder.entries
        pid, data = builder.finish(repo.keys)
        repo.backend.put(pack_name(pid), data)
        written.append((pid, len(data), entries))
        builders[blob_type] = PackBuilder()

    for i, (pid, live) in enumerate(sorted(repack.items())):
        name = pack_name(pid)
        emit(Event(job_id, "repack", items_done=i, items_total=len(repack), message=name))
        try:
            data = repo.backend.get(name)
            blobs = []
            for e in live:
                sealed = data[e.offset : e.offset + e.length]
                repo.decode_blob(sealed, e.id, name)  # authenticate and check the id
                blobs.append((e, sealed))
        except EngineError as e:
            keep.append(pid)
            report.skipped.append(f"{name}: not repacked, kept as it is: {e}")
            continue
        for e, sealed in blobs:
            blob_type = e.type if e.type in builders else DATA
            builders[blob_type].add(e.type, e.id, sealed, e.raw_length)
            if builders[blob_type].size >= PACK_TARGET:
                flush(blob_type)
    for t in (DATA, TREE):
        flush(t)
    return written


def _delete(backend: Backend, name: str, skipped: list[str]) -> bool:
    """Delete one object; a refusal (e.g. S3 Object Lock) is recorded, not raised."""
    try:
        backend.delete(name)
    except EngineError as e:
        skipped.append(f"{name}: locked or not deletable: {e}")
        return False
    return True


def _object_mtime(backend: Backend, name: str) -> float | None:
    """When the object was written, where the backend can tell; else None."""
    try:
        fn = getattr(backend, "mtime", None)
        if callable(fn):
            return float(fn(name))
        root = getattr(backend, "root", None)
        if isinstance(root, str | os.PathLike):
            return os.stat(os.path.join(root, *name.split("/"))).st_mtime
        client, key = getattr(backend, "client", None), getattr(backend, "key", None)
        bucket = getattr(backend, "bucket", None)
        if client is not None and callable(key) and isinstance(bucket, str):
            return client.head_object(Bucket=bucket, Key=key(name))["LastModified"].timestamp()
    except Exception:  # noqa: BLE001 - an unknown age is not an error
        return None
    return None


# --------------------------------------------------------------------- pins


def pin(repo: Repository, snapshot_id: str, note: str = "") -> None:
    """Pin a snapshot (full id): retention keeps it and forget refuses it.

    Writes ``pins/<id>`` = JSON ``{"time": ISO 8601 UTC, "note": note}``; pinning
    again replaces the note. Raises NotFound for an unknown snapshot.
    """
    _check_id(snapshot_id)
    with RepoLock(repo.backend, exclusive=False, purpose="pin").acquire(wait=LOCK_WAIT):
        if not repo.backend.exists(f"snapshots/{snapshot_id}"):
            raise NotFound(f"snapshot {snapshot_id} not found")
        record = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "note": note}
        repo.backend.put(f"pins/{snapshot_id}", json.dumps(record).encode())


def unpin(repo: Repository, snapshot_id: str) -> bool:
    """Remove a pin; returns whether there was one."""
    _check_id(snapshot_id)
    with RepoLock(repo.backend, exclusive=False, purpose="pin").acquire(wait=LOCK_WAIT):
        if not repo.backend.exists(f"pins/{snapshot_id}"):
            return False
        repo.backend.delete(f"pins/{snapshot_id}")
        return True


def pinned(repo: Repository) -> set[str]:
    """Ids of the pinned snapshots (names under ``pins/`` that are snapshot ids)."""
    return {i for i in repo.list_ids("pins") if _SNAPSHOT_ID.match(i)}


def pins(repo: Repository) -> dict[str, dict]:
    """Pinned id -> its record ``{"time", "note"}`` (``{}`` for an unreadable record)."""
    out: dict[str, dict] = {}
    for sid in sorted(pinned(repo)):
        try:
            rec = codec.parse_json(repo.backend.get(f"pins/{sid}"), f"pins/{sid}")
            out[sid] = rec if isinstance(rec, dict) else {}
        except (EngineError, ValueError):
            out[sid] = {}
    return out


def _check_id(snapshot_id: str) -> None:
    if not _SNAPSHOT_ID.match(snapshot_id):
        from engine.errors import UsageError

        raise UsageError(f"{snapshot_id!r} is not a full snapshot id (64 hex characters)")


__all__ = ["PruneReport", "PruneRefused", "forget", "used_blobs", "prune", "pin", "unpin",
           "pinned", "pins"]
