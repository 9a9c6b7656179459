"""repair and forget: fixing a repository by hand (README.md, "Use it").

``repair`` works from the objects themselves, never from the index it replaces:

1. under an exclusive lock, read every pack whole: its SHA-256 must be its name and
   its header must open (authenticate) and parse. A pack that fails is *damaged*; its
   blobs that still open and match their ids (header rows, else the old index's rows
   for it) are *intact* and can be saved;
2. read every snapshot. One that cannot be read, or that *vanished* (the catalog
   saw it here and no forget or cleanup of this tool removed it), is fetched again
   from the replica given with ``--from`` when it holds an intact copy (SHA-256 = its
   name, the record opens; the checks of ``repository adopt``). The replica must hold
   this repository: its config opens with the password and names the same id;
3. walk every snapshot against what the packs hold (trees included) and collect the
   blobs it needs that no sound pack holds. With a replica: a damaged pack that the
   replica holds under the same name is fetched again, and every pack of the replica
   whose index names a missing blob is fetched (each checked: SHA-256 = its id, its
   header opens, each needed blob opens and matches its id) and written in place;
   then the walk is repeated (a fetched tree may name further blobs);
4. the intact blobs of the packs still damaged that a snapshot needs are copied
   (sealed bytes, id checked) into new packs, so no index names a damaged pack;
5. the index is rebuilt from the pack headers: every sound pack that an old index
   file named or that holds a blob a snapshot needs, plus the new ones. It is
   written only when it differs from the old one (or an old file is unreadable), and
   the old index files are deleted only after the new ones are stored. A sound pack
   that no old index named and no snapshot needs is left out: it may belong to a
   backup still writing (its lock gone stale), and prune removes it after its grace;
6. the lock is released and prune removes what no snapshot references (the
   damaged packs among it, once older than prune's grace for packs in no index) --
   only when nothing was lost: while a snapshot still names missing data, prune
   refuses anyway, and nothing is removed;
7. what could not be saved is reported: each snapshot that still needs missing
   blobs, with their number and the first paths they belong to; unreadable
   snapshots; damaged packs. ``forget`` them to accept the loss.

``--dry-run`` reads (the local repository and the replica) and reports; it writes
nothing, not even a lock.

``forget`` deletes snapshot records (``ops/prune.forget``, exclusive lock): pinned
ones only with ``force`` (they are unpinned first). The data goes with the next
cleanup. forget and cleanup record the removal in the catalog, so verify does not call
the snapshot vanished.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import (
    EngineError,
    IntegrityError,
    LockedError,
    NotFound,
    RepositoryError,
    UnsafeEntry,
    UsageError,
)
from engine.events import CancelToken, Event, EventCallback
from engine.ops import prune as prune_op
from engine.ops import verify as verify_op
from engine.ops.adopt import check_object, open_replica
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import stored_ids
from engine.repo.locks import RepoLock
from engine.repo.pack import DATA, TREE, BlobEntry, PackBuilder, pack_name, read_header
from engine.repo.repository import PACK_TARGET, IndexEntry, Repository, sha256_hex
from engine.storage.base import Backend

if TYPE_CHECKING:
    from engine.facade import Engine

LOCK_WAIT = 60.0
MAX_PACK = 256 * 1024 * 1024  # a pack is ~16 MiB; a larger object is not read whole
PATHS_SHOWN = 20  # per damaged snapshot
_PACK_NAME = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Lost:
    """A snapshot that still needs blobs no pack holds."""

    snapshot: str
    kind: str
    source: str
    time: str
    missing: int = 0
    paths: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"snapshot": self.snapshot, "kind": self.kind, "source": self.source,
                "time": self.time, "missing_blobs": self.missing, "paths": self.paths}


@dataclass
class RepairReport:
    dry_run: bool
    replica: str | None = None
    packs_read: int = 0
    bytes_read: int = 0
    damaged_packs: list[str] = field(default_factory=list)  # "data/..: why"
    fetched: list[str] = field(default_factory=list)  # objects (would be) fetched
    fetch_failed: list[str] = field(default_factory=list)  # "name: why"
    salvaged_blobs: int = 0  # intact blobs of damaged packs copied into new packs
    packs_written: list[str] = field(default_factory=list)
    index_rewritten: bool = False
    index_written: list[str] = field(default_factory=list)
    index_deleted: list[str] = field(default_factory=list)
    index_damaged: list[str] = field(default_factory=list)  # "index/..: why"
    packs_left_out: int = 0  # sound, in no old index, needed by no snapshot
    unreadable_snapshots: list[str] = field(default_factory=list)  # "snapshots/..: why"
    vanished: list[str] = field(default_factory=list)  # ids, not brought back
    lost: list[Lost] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why", e.g. Object Lock
    prune: dict | None = None
    prune_skipped: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Everything the snapshots need is there and readable."""
        return not (self.lost or self.unreadable_snapshots or self.vanished)

    def as_json(self) -> dict:
        return {
            "ok": self.ok, "dry_run": self.dry_run, "replica": self.replica,
            "packs_read": self.packs_read, "bytes_read": self.bytes_read,
            "damaged_packs": self.damaged_packs, "fetched": self.fetched,
            "fetch_failed": self.fetch_failed, "salvaged_blobs": self.salvaged_blobs,
            "packs_written": self.packs_written, "index_rewritten": self.index_rewritten,
            "index_written": self.index_written, "index_deleted": self.index_deleted,
            "index_damaged": self.index_damaged, "packs_left_out": self.packs_left_out,
            "unreadable_snapshots": self.unreadable_snapshots, "vanished": self.vanished,
            "lost": [x.as_json() for x in self.lost], "prune": self.prune,
            "skipped": self.skipped, "prune_skipped": self.prune_skipped,
            "seconds": round(self.seconds, 3),
        }


class _Overlay:
    """Reads of some objects go elsewhere: in a dry run, the replica's copy of what a
    real run would fetch (nothing is written here)."""

    def __init__(self, base: Backend):
        self.base = base
        self.location = base.location
        self.moved: dict[str, Backend] = {}

    def _at(self, name: str) -> Backend:
        return self.moved.get(name, self.base)

    def get(self, name: str) -> bytes:
        return self._at(name).get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._at(name).get_range(name, offset, length)


# ------------------------------------------------------------------ the engine verbs
def repair(engine: Engine, dry_run: bool, from_replica: str | None,
           on_event: EventCallback, cancel: CancelToken | None,
           lock_wait: float = LOCK_WAIT) -> RepairReport:
    remote = None
    if from_replica:
        engine.config.replica(from_replica)  # an unknown name fails here
        remote = engine.replica_backend(from_replica)
    repo = engine.repo()
    where = engine.replica_name or "local"
    with engine.job("repair", where, on_event) as job:
        seen = engine.catalog.seen_snapshots(verify_op.seen_key(repo))
        report = run_repair(repo, remote, from_replica, engine.config.password(), seen,
                            dry_run, job.id, job.emit, cancel, lock_wait)
        job.audited = not dry_run
        job.audit_target = where + (f" from {from_replica}" if from_replica else "")
        job.objects = [x.snapshot for x in report.lost]
        job.detail = summary(report)
        if not report.ok:
            job.state = job.outcome = "incomplete"
            job.error = summary(report)
    return report


def forget(engine: Engine, refs: list[str], force: bool = False) -> dict:
    """Delete the snapshot records ``refs`` name (ids, prefixes, 'latest'). A full id is
    taken as it is: a snapshot that cannot be read can be forgotten, and one that already
    vanished is accepted (its loss is recorded)."""
    repo = engine.repo()
    key = verify_op.seen_key(repo)
    seen = engine.catalog.seen_snapshots(key)
    present = set(repo.list_ids("snapshots"))
    ids: list[str] = []
    gone: list[str] = []
    for ref in refs:
        if _HEX64.match(ref) and ref in present:
            ids.append(ref)  # also one that cannot be read any more
        elif _HEX64.match(ref) and ref in seen:
            gone.append(ref)
        else:
            ids.append(engine.snapshot(ref)["id"])
    ids = list(dict.fromkeys(ids))
    pinned = sorted(set(ids) & prune_op.pinned(repo))
    if pinned and not force:
        raise UsageError(f"pinned, not forgotten: {', '.join(p[:12] for p in pinned)}; unpin "
                         "them, or forget with --force")
    target = ",".join(i[:8] for i in [*ids, *gone])
    with engine.job("forget", target, record=False) as job:
        for sid in pinned:
            prune_op.unpin(repo, sid)
        skipped: list[str] = []
        deleted = prune_op.forget(  # recorded under the lock: not 'vanished' to a reader
            repo, ids, skipped=skipped,
            on_deleted=lambda d: verify_op.record_removed(repo, engine.catalog, d)) if ids else []
        verify_op.record_removed(repo, engine.catalog, gone)
        job.objects = [*deleted, *gone]
        job.detail = "; ".join(skipped)[:500]
        if skipped:
            job.outcome = "incomplete"
    return {"forgotten": deleted, "already_gone": gone, "unpinned": pinned,
            "skipped": skipped}


def summary(r: RepairReport) -> str:
    verb = "would " if r.dry_run else ""
    parts = [f"{r.packs_read} pack(s) read", f"{len(r.damaged_packs)} damaged"]
    if r.fetched:
        parts.append(f"{verb}fetch {len(r.fetched)} object(s)" if r.dry_run
                     else f"{len(r.fetched)} object(s) fetched")
    if r.salvaged_blobs:
        parts.append(f"{r.salvaged_blobs} intact blob(s) {verb}saved")
    if r.index_rewritten:
        parts.append(f"index {verb}rebuilt")
    if r.lost:
        parts.append(f"{len(r.lost)} snapshot(s) need missing data")
    if r.unreadable_snapshots:
        parts.append(f"{len(r.unreadable_snapshots)} snapshot(s) unreadable")
    if r.vanished:
        parts.append(f"{len(r.vanished)} snapshot(s) vanished")
    return ", ".join(parts)


# ------------------------------------------------------------------ the repair
def run_repair(repo: Repository, remote: Backend | None, replica: str | None,
               password: str | None, seen: dict[str, dict], dry_run: bool, job_id: str,
               on_event: EventCallback, cancel: CancelToken | None = None,
               lock_wait: float = LOCK_WAIT) -> RepairReport:
    cancel = cancel or CancelToken()
    start = time.monotonic()
    report = RepairReport(dry_run=dry_run, replica=replica)
    rrepo = _open_remote(repo, remote, password) if remote is not None else None
    if dry_run:
        _repair(repo, rrepo, seen, report, job_id, on_event, cancel)
        report.prune_skipped = (
            "a real run then removes what no snapshot references (prune)" if report.ok else
            "a real run removes nothing: snapshots still need missing data")
    else:
        with RepoLock(repo.backend, exclusive=True, purpose="repair").acquire(wait=lock_wait):
            try:
                _repair(repo, rrepo, seen, report, job_id, on_event, cancel)
            finally:
                repo.load_index()
        _prune(repo, report, job_id, on_event, lock_wait)
    report.seconds = time.monotonic() - start
    on_event(Event(job_id, "done", message=summary(report), final=True))
    return report


def _open_remote(repo: Repository, remote: Backend, password: str | None) -> Repository:
    """The replica as a repository (config MAC checked; adopt's checks), with its index."""
    _raw, opened, _mem = open_replica(remote, password)
    if opened.id != repo.id:
        raise RepositoryError(f"{remote.location}: holds another repository (id {opened.id}, "
                              f"this one is {repo.id}); nothing to repair from there")
    rrepo = Repository(remote, opened.config, opened.keys)
    rrepo.load_index()
    return rrepo


def _prune(repo: Repository, report: RepairReport, job_id: str, on_event: EventCallback,
           lock_wait: float) -> None:
    if not report.ok:
        report.prune_skipped = ("nothing removed: snapshots still need missing data (forget "
                                "them, or repair --from a replica that holds it, then run "
                                "cleanup)")
        return
    try:
        report.prune = prune_op.prune(repo, on_event=on_event, job_id=job_id,
                                      lock_wait=lock_wait).as_json()
    except (prune_op.PruneRefused, LockedError) as e:  # the repair itself is done
        report.prune_skipped = f"not cleaned up: {e}"


class _Scan:
    """What the packs here hold."""

    def __init__(self) -> None:
        self.sound: dict[str, tuple[int, list[BlobEntry]]] = {}  # pid -> (size, header rows)
        self.damaged: dict[str, list[BlobEntry]] = {}  # pid -> its intact rows
        self.extra: dict[str, tuple[int, list[BlobEntry]]] = {}  # fetched or written here


def _repair(repo: Repository, rrepo: Repository | None, seen: dict[str, dict],
            report: RepairReport, job_id: str, on_event: EventCallback,
            cancel: CancelToken) -> None:
    backend = repo.backend
    old_packs, old_ok = _old_index(repo, report)
    scan = _scan_packs(repo, old_packs, report, job_id, on_event, cancel)
    overlay = _Overlay(backend)
    remote_packs = ({o.name for o in rrepo.backend.list("data/")} if rrepo is not None
                    else set())

    # Snapshots: unreadable or vanished ones, from the replica where it has them.
    snaps: dict[str, dict] = {}
    present = repo.list_ids("snapshots")
    broken: dict[str, str] = {}
    for sid in present:
        try:
            snaps[sid] = repo.load_snapshot(sid)
        except EngineError as e:
            broken[sid] = str(e)
    vanished = [sid for sid in seen if sid not in set(present)]
    for sid in [*broken, *vanished]:
        snap = _fetch_snapshot(repo, rrepo, sid, overlay, report) if rrepo else None
        if snap is not None:
            snaps[sid] = snap
        elif sid in broken:
            report.unreadable_snapshots.append(f"snapshots/{sid}: {broken[sid]}")
        else:
            report.vanished.append(sid)
    cancel.check()

    # Damaged packs the replica holds under the same name: fetched again in place.
    tried: set[str] = set()  # replica packs fetched or refused: each is read once
    if rrepo is not None:
        for pid in sorted(scan.damaged):
            if pack_name(pid) in remote_packs:
                tried.add(pid)
                got = _fetch_pack(repo, rrepo, pid, None, overlay, report)
                if got is not None:
                    del scan.damaged[pid]
                    scan.sound[pid] = got

    # What the snapshots need that no sound pack holds; fetch it, walk again.
    while True:
        cancel.check()
        view = _view(repo, overlay, scan)
        lost = _walk(view, snaps)
        if rrepo is None:
            break
        missing = {b for entry in lost.values() for b in entry[1]}
        wanted = {rrepo.index[b].pack_id for b in missing if b in rrepo.index} - tried
        if not wanted:
            break
        for pid in sorted(wanted):
            tried.add(pid)
            need = {b for b in missing if b in rrepo.index and rrepo.index[b].pack_id == pid}
            got = _fetch_pack(repo, rrepo, pid, need, overlay, report)
            if got is not None:
                scan.damaged.pop(pid, None)
                scan.extra[pid] = got

    # Intact blobs of packs still damaged that a snapshot needs: into new packs.
    needed = _needed(view, snaps)
    _salvage(repo, scan, needed, report, job_id, on_event)

    # The index: every sound pack named before or needed now, and the new packs.
    final: dict[str, tuple[int, list[BlobEntry]]] = {}
    for pid, (size, rows) in sorted(scan.sound.items()):
        if pid in old_packs or any(e.id in needed for e in rows):
            final[pid] = (size, rows)
        else:
            report.packs_left_out += 1
    for pid, got in scan.extra.items():
        final[pid] = got
    new_form = {pid: frozenset(e.as_list().__repr__() for e in rows)
                for pid, (_s, rows) in final.items()}
    old_form = {pid: frozenset(e.as_list().__repr__() for e in rows)
                for pid, (_s, rows) in old_packs.items()}
    if new_form != old_form or not old_ok:
        report.index_rewritten = True
        if not report.dry_run:
            on_event(Event(job_id, "index", message="writing the rebuilt index"))
            # sound packs first, fetched and salvaged ones last (a later entry wins)
            order = [(pid, s, rows) for pid, (s, rows) in final.items()
                     if pid not in scan.extra]
            order += [(pid, s, rows) for pid, (s, rows) in scan.extra.items()]
            written = repo.write_indexes(order)
            report.index_written = written
            for iid in sorted(repo.list_ids("index")):  # only now that the new one is stored
                if iid not in written and prune_op._delete(backend, f"index/{iid}",
                                                           report.skipped):
                    report.index_deleted.append(iid)

    # What could not be saved (salvaging moved blobs, it made none available).
    for sid, (snap, missing, paths) in sorted(lost.items()):
        report.lost.append(Lost(sid, str(snap.get("kind", "")), str(snap.get("source", "")),
                                str(snap.get("time", "")), len(missing), paths))


def _old_index(repo: Repository, report: RepairReport
               ) -> tuple[dict[str, tuple[int, list[BlobEntry]]], bool]:
    """Every pack the readable index files name, with its rows; and whether all read."""
    packs: dict[str, tuple[int, list[BlobEntry]]] = {}
    ok = True
    for iid in repo.list_ids("index"):
        try:
            doc = repo.load_record("index", iid)
            listed = [(str(p["id"]), int(p["size"]),
                       [BlobEntry(str(t), str(b), int(o), int(n), int(r))
                        for t, b, o, n, r in p["blobs"]])
                      for p in doc.get("packs", [])]
        except (EngineError, KeyError, TypeError, ValueError, AttributeError) as e:
            report.index_damaged.append(f"index/{iid}: {e}")
            ok = False
            continue
        for pid, size, rows in listed:
            if pid in packs:
                merged = {e.id: e for e in packs[pid][1]}
                merged.update({e.id: e for e in rows})
                rows = list(merged.values())
            packs[pid] = (size, rows)
    return packs, ok


def _scan_packs(repo: Repository, old_packs: dict, report: RepairReport, job_id: str,
                on_event: EventCallback, cancel: CancelToken) -> _Scan:
    scan = _Scan()
    listed = []
    for info in repo.backend.list("data/"):
        m = _PACK_NAME.match(info.name)
        if m and m.group(2).startswith(m.group(1)):
            listed.append((m.group(2), info.size))
    total = sum(s for _p, s in listed)
    for i, (pid, size) in enumerate(sorted(listed)):
        cancel.check()
        name = pack_name(pid)
        on_event(Event(job_id, "read packs", bytes_done=report.bytes_read, bytes_total=total,
                       items_done=i, items_total=len(listed), message=name))
        if size > MAX_PACK:
            report.damaged_packs.append(f"{name}: {size} bytes, too large for a pack")
            scan.damaged[pid] = []
            continue
        try:
            data = repo.backend.get(name)
        except NotFound:
            continue  # gone meanwhile
        report.packs_read += 1
        report.bytes_read += len(data)
        why = None
        rows: list[BlobEntry] | None = None
        try:
            rows = read_header(repo.keys, data, pid)
        except EngineError as e:
            why = f"header does not open: {e}"
        if sha256_hex(data) != pid:
            why = "content does not match its name" + (f"; {why}" if why else "")
        if why is None and rows is not None:
            scan.sound[pid] = (len(data), rows)
            continue
        candidates = rows if rows is not None else old_packs.get(pid, (0, []))[1]
        intact = [e for e in candidates if _blob_ok(repo, data, e, name)]
        scan.damaged[pid] = intact
        report.damaged_packs.append(
            f"{name}: {why}; {len(intact)} of {len(candidates)} known blob(s) intact")
    return scan


def _blob_ok(repo: Repository, data: bytes, e: BlobEntry, name: str) -> bool:
    if e.offset < 0 or e.length <= 0 or e.offset + e.length > len(data):
        return False
    try:
        repo.decode_blob(data[e.offset : e.offset + e.length], e.id, name)
    except EngineError:
        return False
    return True


def _fetch_snapshot(repo: Repository, rrepo: Repository, sid: str, overlay: _Overlay,
                    report: RepairReport) -> dict | None:
    name = f"snapshots/{sid}"
    try:
        data = rrepo.backend.get(name)
    except NotFound:
        return None
    except EngineError as e:
        report.fetch_failed.append(f"{name}: {e}")
        return None
    why = check_object(repo.keys, name, data)
    if why is not None:
        report.fetch_failed.append(f"{name}: the replica's copy is damaged too: {why}")
        return None
    if report.dry_run:
        overlay.moved[name] = rrepo.backend
    else:
        repo.backend.put(name, data)
    report.fetched.append(name)
    try:
        return rrepo.load_snapshot(sid)
    except EngineError as e:  # e.g. not a snapshot record at all
        report.fetch_failed.append(f"{name}: {e}")
        return None


def _fetch_pack(repo: Repository, rrepo: Repository, pid: str, need: set[str] | None,
                overlay: _Overlay, report: RepairReport
                ) -> tuple[int, list[BlobEntry]] | None:
    """The replica's pack ``pid``, checked whole (need: these blobs must open in it)."""
    name = pack_name(pid)
    try:
        data = rrepo.backend.get(name)
    except EngineError as e:
        report.fetch_failed.append(f"{name}: {e}")
        return None
    why = check_object(repo.keys, name, data)
    rows: list[BlobEntry] = []
    if why is None:
        try:
            rows = read_header(repo.keys, data, pid)
        except EngineError as e:
            why = str(e)
    if why is None:
        by_id = {e.id: e for e in rows}
        bad = [b for b in sorted(need or ()) if b not in by_id
               or not _blob_ok(repo, data, by_id[b], name)]
        if bad:
            why = f"blob {bad[0][:16]} does not check"
    if why is not None:
        report.fetch_failed.append(f"{name}: the replica's copy is damaged: {why}")
        return None
    if report.dry_run:
        overlay.moved[name] = rrepo.backend
    else:
        repo.backend.put(name, data)
    report.fetched.append(name)
    return len(data), rows


def _view(repo: Repository, overlay: _Overlay, scan: _Scan) -> Repository:
    """A repository reading through the overlay whose index is every checked blob the
    packs hold (the intact ones of damaged packs included)."""
    view = Repository(overlay, repo.config, repo.keys)  # type: ignore[arg-type]
    groups = [*scan.damaged.items(), *((p, rows) for p, (_s, rows) in scan.sound.items()),
              *((p, rows) for p, (_s, rows) in scan.extra.items())]
    for pid, rows in groups:
        for e in rows:  # pack_sizes stays empty: trees are read by range, not cached
            view.index[e.id] = IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
    return view


def _walk(view: Repository, snaps: dict[str, dict]) -> dict[str, tuple[dict, set[str], list]]:
    """Snapshot id -> (record, missing blob ids, first paths affected) for each snapshot
    that needs a blob ``view`` cannot give."""
    out: dict[str, tuple[dict, set[str], list]] = {}
    memo: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}
    for sid, snap in snaps.items():
        missing: set[str] = set()
        paths: list[str] = []
        for key in ("stream", "globals"):
            ids = snap.get(key) or []
            lacking = [b for b in (ids if isinstance(ids, list) else [])
                       if isinstance(b, str) and b not in view.index]
            if lacking:
                missing.update(lacking)
                paths.append(key)
        root = snap.get("tree")
        if isinstance(root, str):
            m, p = _tree_needs(view, root, memo)
            missing |= m
            paths += p
        if missing:
            out[sid] = (snap, missing, paths[:PATHS_SHOWN])
    return out


_NONE: frozenset[str] = frozenset()


def _tree_needs(view: Repository, root: str,
                memo: dict[str, tuple[frozenset[str], tuple[str, ...]]]
                ) -> tuple[frozenset[str], list[str]]:
    """Missing blobs below tree ``root`` (itself included) and the first paths they
    belong to. Each tree is read once for all snapshots (``memo``: tree id -> its
    missing blobs and paths relative to it), so shared subtrees cost nothing more; a
    tree that contains itself is not followed into."""
    pending: dict[str, list] = {}  # read, its subtrees not all done yet
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        tid, expanded = stack.pop()
        if not expanded:
            if tid in memo or tid in pending:
                continue
            try:
                nodes = [n for n in view.load_tree(tid)["nodes"] if isinstance(n, dict)]
            except EngineError:
                memo[tid] = (frozenset({tid}), ("(directory)",))
                continue
            pending[tid] = nodes
            stack.append((tid, True))
            stack += [(n["subtree"], False) for n in nodes if isinstance(n.get("subtree"), str)]
            continue
        parts: list[frozenset[str]] = []  # a chain of directories shares one set
        paths: list[str] = []
        for node in pending.pop(tid):
            name = str(node.get("name") or node.get("name_b64") or "?")
            lacking = [b for b in _node_blobs(node) if b not in view.index]
            if lacking:
                parts.append(frozenset(lacking))
                paths.append(name)
            sub = memo.get(node.get("subtree")) if isinstance(node.get("subtree"), str) else None
            if sub is not None and sub[0]:
                parts.append(sub[0])
                paths += [f"{name}/" if p == "(directory)" else f"{name}/{p}"
                          for p in sub[1][:PATHS_SHOWN]]
        missing = parts[0] if len(parts) == 1 else frozenset().union(*parts) if parts else _NONE
        memo[tid] = (missing, tuple(paths[:PATHS_SHOWN]))
    m, p = memo.get(root, (_NONE, ()))
    return m, ["/" + x if x != "(directory)" else "/" for x in p]


def _needed(view: Repository, snaps: dict[str, dict]) -> set[str]:
    """Every blob id the snapshots reference that the view can reach."""
    used: set[str] = set()
    seen: set[str] = set()
    for snap in snaps.values():
        for key in ("stream", "globals"):
            ids = snap.get(key) or []
            used.update(b for b in (ids if isinstance(ids, list) else []) if isinstance(b, str))
        root = snap.get("tree")
        stack = [root] if isinstance(root, str) else []
        while stack:
            tid = stack.pop()
            if tid in seen:
                continue
            seen.add(tid)
            used.add(tid)
            try:
                nodes = view.load_tree(tid)["nodes"]
            except EngineError:
                continue
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                if isinstance(node.get("subtree"), str):
                    stack.append(node["subtree"])
                used.update(_node_blobs(node, extra=True))
    return used


def _node_blobs(node: dict, extra: bool = False) -> list[str]:
    """The data blobs a file node needs stored (`blockdelta.stored_ids`): a block stored
    as a delta (format 1.2) needs its two blobs, and is missing when either is.
    Lenient, as the rest of the walk: a malformed content list counts as empty; with a
    malformed ``delta`` list the content ids count (restore refuses such a node anyway).
    extra: also the content ids of delta blocks, should they be stored (collecting too
    much is safe where what is kept is asked)."""
    content = node.get("content") or []
    if not isinstance(content, list):
        return []
    if DELTA_KEY not in node:
        return [b for b in content if isinstance(b, str)]
    try:
        ids = list(stored_ids(node))
    except UnsafeEntry:
        ids = []
    if extra or not ids:
        ids += content
    return [b for b in ids if isinstance(b, str)]


def _salvage(repo: Repository, scan: _Scan, needed: set[str], report: RepairReport,
             job_id: str, on_event: EventCallback) -> None:
    """Copy the needed intact blobs of damaged packs (held nowhere sound) into new packs."""
    have = {e.id for _s, rows in [*scan.sound.values(), *scan.extra.values()] for e in rows}
    builders = {DATA: PackBuilder(), TREE: PackBuilder()}
    todo = [(pid, e) for pid, rows in sorted(scan.damaged.items()) for e in rows
            if e.id in needed and e.id not in have]
    if not todo:
        return

    def flush(kind: str) -> None:
        b = builders[kind]
        if not b.entries:
            return
        rows = b.entries
        pid, data = b.finish(repo.keys)
        repo.backend.put(pack_name(pid), data)
        scan.extra[pid] = (len(data), rows)
        report.packs_written.append(pid)
        builders[kind] = PackBuilder()

    on_event(Event(job_id, "salvage", message=f"saving {len(todo)} intact blob(s)"))
    done: set[str] = set()
    for pid, e in todo:
        if e.id in done:
            continue
        done.add(e.id)
        report.salvaged_blobs += 1
        if report.dry_run:
            continue
        sealed = repo.backend.get_range(pack_name(pid), e.offset, e.length)
        try:
            repo.decode_blob(sealed, e.id, pack_name(pid))  # still intact: checked again
        except IntegrityError:
            report.salvaged_blobs -= 1
            continue
        kind = e.type if e.type in builders else DATA
        builders[kind].add(e.type, e.id, sealed, e.raw_length)
        if builders[kind].size >= PACK_TARGET:
            flush(kind)
    for kind in (DATA, TREE):
        flush(kind)


__all__ = ["RepairReport", "Lost", "repair", "forget", "run_repair", "summary"]
