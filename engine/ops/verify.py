"""verify: check that snapshots can be restored.

quick: every index file and snapshot decodes and matches its name; every tree
of the selected snapshots loads and checks; every content blob is in the index;
every pack the index names exists with the size the index gives.
read_data: also read every pack the selected snapshots need in full, check its
SHA-256 against its name, parse its header, and authenticate, decompress and
hash each blob. Each problem names the object and the snapshots it affects.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from engine.catalog import Catalog
from engine.errors import EngineError, IntegrityError, NotFound
from engine.events import CancelToken, Event, EventCallback
from engine.repo.pack import MAX_PACK, pack_name, read_header
from engine.repo.repository import Repository, parse_index, sha256_hex
from engine.repo.walk import walk
from engine.sources import registry

log = logging.getLogger("backup_tui.engine")


@dataclass
class Problem:
    object: str
    message: str
    snapshots: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"object": self.object, "message": self.message, "snapshots": self.snapshots}


@dataclass
class VerifyReport:
    read_data: bool
    snapshots: list[str] = field(default_factory=list)
    packs_checked: int = 0
    blobs_checked: int = 0
    bytes_read: int = 0
    archives_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "read_data": self.read_data,
            "snapshots": self.snapshots,
            "packs_checked": self.packs_checked,
            "blobs_checked": self.blobs_checked,
            "bytes_read": self.bytes_read,
            "problems": [p.as_json() for p in self.problems],
            "notes": self.notes,
        }


def verify(
    repo: Repository,
    snapshot_ids: list[str] | None,
    read_data: bool,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    catalog: Catalog | None = None,
) -> VerifyReport:
    """catalog: given, snapshots it saw here before that are gone are problems too
    (`check_vanished`), and the ones read now are recorded as seen."""
    cancel = cancel or CancelToken()
    repo.drop_caches()
    report = VerifyReport(read_data=read_data)
    # Index files and snapshots: each must decode and match its name.
    for iid in repo.list_ids("index"):
        try:
            parse_index(repo.load_record("index", iid), f"index/{iid}")
        except EngineError as e:
            report.problems.append(Problem(f"index/{iid}", str(e)))
    all_snaps = repo.list_ids("snapshots")
    wanted = snapshot_ids if snapshot_ids is not None else all_snaps
    snaps: list[dict] = []
    for sid in wanted:
        try:
            snaps.append(repo.load_snapshot(sid))
        except EngineError as e:
            report.problems.append(Problem(f"snapshots/{sid}", str(e), [sid]))
    report.snapshots = [s["id"] for s in snaps]
    if catalog is not None:
        report.problems += check_vanished(repo, catalog, all_snaps, snaps)

    # Which packs each snapshot needs.
    pack_users: dict[str, set[str]] = defaultdict(set)
    needed_blobs: dict[str, set[str]] = defaultdict(set)  # pack -> blob ids
    for i, snap in enumerate(snaps):
        cancel.check()
        on_event(Event(job_id, "verify", items_done=i, items_total=len(snaps),
                       message=f"structure of {snap['id'][:12]}"))
        _check_structure(repo, snap, report, pack_users, needed_blobs)

    # Packs: present with the right size.
    present = {info.name: info.size for info in repo.backend.list("data/")}
    for pid, size in repo.pack_sizes.items():
        name = pack_name(pid)
        users = sorted(pack_users.get(pid, ()))
        if name not in present:
            report.problems.append(Problem(name, f"{name}: pack is missing", users))
        elif present[name] != size:
            report.problems.append(
                Problem(name, f"{name}: size {present[name]}, index says {size} (truncated?)",
                        users)
            )
    known = {pack_name(p) for p in repo.pack_sizes}
    orphans = [n for n in present if n not in known]
    if orphans:
        report.notes.append(
            f"{len(orphans)} pack(s) not in any index (left by an interrupted backup; "
            "cleanup removes them)"
        )

    if read_data:
        _read_packs(repo, pack_users, needed_blobs, present, report, job_id, on_event, cancel)
        bad = {sid for p in report.problems for sid in p.snapshots}
        for snap in snaps:
            if snap["id"] not in bad:
                _check_kind(repo, snap, report, job_id, on_event)
    on_event(Event(job_id, "done", items_done=len(snaps), items_total=len(snaps),
                   message="ok" if report.ok else f"{len(report.problems)} problem(s)",
                   final=True))
    return report


def seen_key(repo: Repository) -> str:
    """The catalog's key for what was seen in a repository: its id and where it is (a
    replica shares the id and may lag behind)."""
    return f"{repo.id} {repo.backend.location}"


def check_vanished(repo: Repository, catalog: Catalog, present: list[str],
                   loaded: list[dict]) -> list[Problem]:
    """Snapshots the catalog saw in this repository that are gone, though no forget or
    cleanup of this tool removed them; then record the ``loaded`` ones as seen."""
    key = seen_key(repo)
    here = set(present)
    problems = []
    for sid, was in sorted(catalog.seen_snapshots(key).items(), key=lambda kv: kv[1]["time"]):
        if sid in here:
            continue
        problems.append(Problem(
            f"snapshots/{sid}",
            f"snapshot {sid} (source {was['source'] or '?'}, time {was['time'] or '?'}) "
            "vanished: it was here and no forget or cleanup of this tool removed it; "
            "'backup-tui repair --from REPLICA' brings it back where a replica holds it, "
            f"'backup-tui forget {sid}' accepts the loss", [sid]))
    try:
        catalog.mark_seen(key, loaded)
    except (sqlite3.Error, EngineError):  # a reader who may not write the catalog (or a
        # full state disk): the check itself still ran
        pass
    return problems


def record_removed(repo: Repository, catalog: Catalog, ids: list[str]) -> None:
    """Snapshots this tool deleted on purpose (forget, cleanup): not 'vanished'."""
    if not ids:
        return
    try:
        catalog.mark_seen(seen_key(repo), [], removed=list(ids))
    except (sqlite3.Error, EngineError) as e:  # the removal itself is done; say so
        log.warning("cannot record the removal of %d snapshot(s) in the catalog (%s); "
                    "verify will report them as vanished", len(ids), e)


def _ids(value: object, where: str) -> list[str]:
    """A list of blob ids from a node or snapshot; IntegrityError when it is not one."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(b, str) for b in value):
        raise IntegrityError(f"{where}: malformed list of blob ids", where)
    return value


def _check_structure(repo, snap, report, pack_users, needed_blobs) -> None:
    sid = snap["id"]
    root = snap.get("tree")
    # each blob once, with the first place that names it: memory grows with the
    # distinct blobs, not with how often a shared subtree is reached
    blob_ids: dict[str, str] = {}
    try:
        if root:
            if not isinstance(root, str):
                raise IntegrityError(f"snapshots/{sid}: malformed tree id", f"snapshots/{sid}")
            blob_ids.setdefault(root, "tree")
            for path, node in walk(repo, root):
                if node["type"] == "dir" and isinstance(node.get("subtree"), str):
                    blob_ids.setdefault(node["subtree"], "tree")  # else the walk refuses it
                for b in _ids(node.get("content"), os.fsdecode(path)):
                    blob_ids.setdefault(b, os.fsdecode(path))
        for key in ("stream", "globals"):
            for b in _ids(snap.get(key), f"snapshots/{sid}"):
                blob_ids.setdefault(b, key)
    except EngineError as e:
        obj = getattr(e, "object_name", "") or f"snapshots/{sid}"
        entry = repo.index.get(obj)
        if entry is not None:
            obj = pack_name(entry.pack_id)
        report.problems.append(Problem(obj, str(e), [sid]))
    missing = 0
    for b, where in blob_ids.items():
        entry = repo.index.get(b)
        if entry is None:
            missing += 1
            if missing <= 20:
                report.problems.append(
                    Problem(f"blob {b}", f"blob {b} ({where}) is not in the index", [sid])
                )
            continue
        pack_users[entry.pack_id].add(sid)
        needed_blobs[entry.pack_id].add(b)


def _check_kind(repo: Repository, snap: dict, report: VerifyReport, job_id: str,
                on_event: EventCallback) -> None:
    """The check a snapshot's own kind adds (a database archive's table of contents)."""
    try:
        cls = registry.kind(snap.get("kind", ""))
    except EngineError:
        return
    on_event(Event(job_id, "archive", message=f"{cls.label} check of {snap['id'][:12]}"))
    check = cls.verify_snapshot(repo, snap)
    if check is None:
        return
    name = f"snapshots/{snap['id']}"
    report.problems += [Problem(name, p, [snap["id"]]) for p in check.problems]
    report.notes += check.notes
    if check.checked:
        report.archives_checked += 1


def _check_pack(repo, pid, users, needed, present) -> tuple[int, int, list[Problem]]:
    """Read one pack whole and check it: (bytes read, blobs checked, problems)."""
    name = pack_name(pid)
    if name not in present:
        return 0, 0, []  # already reported as missing
    if present[name] > MAX_PACK:  # never read it whole
        return 0, 0, [Problem(name, f"{name}: {present[name]} bytes, larger than any pack",
                              users)]
    try:
        data = repo.backend.get(name)
    except NotFound:
        return 0, 0, []
    except EngineError as e:  # unreadable: report it and go on with the other packs
        return 0, 0, [Problem(name, f"{name}: {e}", users)]
    problems = []
    if sha256_hex(data) != pid:
        problems.append(Problem(name, f"{name}: content does not match its name (corrupt)",
                                users))
    try:
        entries = {e.id: e for e in read_header(repo.keys, data, pid)}
    except IntegrityError as e:
        problems.append(Problem(name, str(e), users))
        entries = {}
    checked = 0
    for bid in sorted(needed):
        idx = repo.index[bid]
        try:
            sealed = data[idx.offset : idx.offset + idx.length]
            if len(sealed) != idx.length:
                raise IntegrityError(f"{name}: blob {bid[:16]}: the pack ends before offset "
                                     f"{idx.offset}+{idx.length} (truncated?)", name)
            repo.decode_blob(sealed, bid, name, idx.raw_length)
            checked += 1
        except IntegrityError as e:
            problems.append(Problem(name, str(e), users))
            break
        h = entries.get(bid)
        if entries and (h is None or h.offset != idx.offset or h.length != idx.length):
            problems.append(Problem(name, f"{name}: header disagrees with the index for blob "
                                          f"{bid[:16]}", users))
            break
    return len(data), checked, problems


# What a forked verify worker checks: the repository (keys, index, backend), the packs'
# users and blobs. Handed over by fork itself (a fork context's initargs are not
# pickled), so nothing of the repository is sent to the workers.
_FORKED: tuple | None = None
REMOTE_WORKERS = 2  # packs read at once from a remote backend (S3): requests in flight
MAX_PROCESSES = 8  # each holds a whole pack and its blobs: memory grows with the workers


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _init_forked(*state) -> None:
    global _FORKED
    _FORKED = state


def _check_forked(pid: str) -> tuple[int, int, list[Problem]]:
    repo, pack_users, needed_blobs, present = _FORKED
    return _check_pack(repo, pid, sorted(pack_users[pid]), needed_blobs[pid], present)


def _use_processes(repo) -> bool:
    """Local packs are checked by forked processes, one a core: hashing the pack, the
    blob HMACs, AES-GCM and zstd of one pack hold the GIL long enough that threads use
    little more than one core (bench/RESULTS.md). A remote backend's client must not be
    shared with a forked child: threads there, several requests in flight."""
    from engine.storage.local import LocalBackend

    return isinstance(repo.backend, LocalBackend) and _cores() > 1 and hasattr(os, "fork")


def _read_packs(repo, pack_users, needed_blobs, present, report, job_id, on_event, cancel) -> None:
    """Every pack the snapshots need, read whole and checked (_check_pack); results are
    taken in the order of the packs, so the report is the same however they are read."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    packs = sorted(pack_users)
    total = sum(repo.pack_sizes.get(p, 0) for p in packs)
    if not packs:
        return
    if _use_processes(repo) and len(packs) > 1:
        import multiprocessing

        workers = min(_cores(), MAX_PROCESSES, len(packs))
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_forked,
                                   initargs=(repo, pack_users, needed_blobs, present))
        check = _check_forked
    else:
        workers = REMOTE_WORKERS if not _use_processes(repo) else 2
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")

        def check(pid: str) -> tuple[int, int, list[Problem]]:
            if cancel.cancelled:
                return 0, 0, []
            return _check_pack(repo, pid, sorted(pack_users[pid]), needed_blobs[pid], present)

    try:
        # at most two packs a worker submitted ahead: memory stays bounded by the workers
        futures: dict[int, object] = {}
        ahead = workers * 2
        nxt = 0
        for i in range(len(packs)):
            while nxt < len(packs) and nxt < i + ahead:
                futures[nxt] = pool.submit(check, packs[nxt])
                nxt += 1
            cancel.check()
            nbytes, checked, problems = futures.pop(i).result()
            cancel.check()
            if nbytes:
                report.packs_checked += 1
            report.bytes_read += nbytes
            report.blobs_checked += checked
            report.problems.extend(problems)
            on_event(Event(job_id, "read-data", bytes_done=report.bytes_read, bytes_total=total,
                           items_done=i + 1, items_total=len(packs), message=pack_name(packs[i])))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
