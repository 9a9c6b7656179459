"""verify: check that snapshots can be restored.

quick: every index file and snapshot decodes and matches its name; every tree
of the selected snapshots loads and checks; every content blob is in the index;
every pack the index names exists with the size the index gives. A block stored as
a delta (format 1.2, docs/FORMAT.md 5.2) needs its two blobs instead of its own
id: both in the index, data blobs of equal length, in packs that are there (a problem
naming the file otherwise).
read_data: also read every pack the selected snapshots need in full, check its
SHA-256 against its name, parse its header, and authenticate, decompress and
hash each blob; and rebuild every delta block and check it against its id. Each
problem names the object and the snapshots it affects.

Local packs are checked by forked workers, one a core, each reading a pack at a time
into a buffer it keeps. Verifying every snapshot, they start on every pack of the index
(each blob its header lists where the index places it too) before the trees are walked,
so the walk and the packs share the cores; what a pack's check found counts only for
the blobs the snapshots need, and a pack whose check does not cover them all is checked
again for them. The report is the same either way (tests/test_verify_split.py).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from engine.catalog import Catalog
from engine.errors import EngineError, IntegrityError, NotFound
from engine.events import CancelToken, Event, EventCallback
from engine.memory import keep_freed
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import content_pieces, load_piece, stored_ids
from engine.repo.pack import DATA, MAX_PACK, open_blob, pack_name, read_header
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
    # The snapshots first, then the index as it is now: a backup writes its index file
    # before its snapshot, so every snapshot listed has its blobs in the index read after
    # (one committed by a concurrent backup after the caller's read would not).
    all_snaps = repo.list_ids("snapshots")
    repo.load_index(reuse=True)
    # Index files and snapshots: each must decode and match its name.
    for iid in repo.list_ids("index"):
        try:
            parse_index(repo.load_record("index", iid), f"index/{iid}")
        except EngineError as e:
            report.problems.append(Problem(f"index/{iid}", str(e)))
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
    present = {info.name: info.size for info in repo.backend.list("data/")}
    early = None
    if (read_data and snapshot_ids is None and snaps and _use_processes(repo)
            and len(repo.pack_sizes) > 1):
        # every snapshot: nearly every pack is needed, so the workers start on every
        # pack of the index now, while this process walks the trees (_PackChecks)
        early = _PackChecks(repo, present, sorted(p for p in repo.pack_sizes
                                                  if pack_name(p) in present))
    # A walk loads every tree twice (measured first, then walked): keep them all for the
    # second time, within the cache's bytes (TREE_CACHE_BYTES), instead of 512 of them.
    cache_blobs = repo.tree_cache_blobs
    rebuilt: set[bytes] = set()  # --read-data: the delta blocks rebuilt and checked
    try:
        repo.tree_cache_blobs = max(cache_blobs, WALK_TREE_CACHE_BLOBS)
        for i, snap in enumerate(snaps):
            cancel.check()
            on_event(Event(job_id, "verify", items_done=i, items_total=len(snaps),
                           message=f"structure of {snap['id'][:12]}"))
            _check_structure(repo, snap, report, pack_users, needed_blobs, present,
                             rebuilt if read_data else None)
        repo.tree_cache_blobs = cache_blobs
        repo.drop_caches()  # the trees kept for the walk (up to TREE_CACHE_BYTES)
        _check_sizes(repo, present, pack_users, report)
        if read_data:
            _read_packs(repo, pack_users, needed_blobs, present, report, job_id, on_event,
                        cancel, early)
    finally:
        repo.tree_cache_blobs = cache_blobs
        if early is not None:
            early.close()
    if read_data:
        bad = {sid for p in report.problems for sid in p.snapshots}
        for snap in snaps:
            if snap["id"] not in bad:
                _check_kind(repo, snap, report, job_id, on_event)
    on_event(Event(job_id, "done", items_done=len(snaps), items_total=len(snaps),
                   message="ok" if report.ok else f"{len(report.problems)} problem(s)",
                   final=True))
    return report


def _check_sizes(repo: Repository, present: dict[str, int], pack_users, report) -> None:
    """Packs: present with the right size; a note for packs no index knows."""
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


def _check_structure(repo, snap, report, pack_users, needed_blobs,
                     present: dict[str, int] | None = None,
                     rebuilt: set[bytes] | None = None) -> None:
    """present: the packs listed (name -> size), for the blobs of delta blocks.
    rebuilt: given (--read-data), every block stored as a delta is also rebuilt
    and checked against its id, once for all snapshots (the set records which)."""
    sid = snap["id"]
    root = snap.get("tree")
    # each blob once, with the first place that names it: memory grows with the
    # distinct blobs, not with how often a shared subtree is reached
    blob_ids: dict[str, str] = {}
    deltas = [0]  # problems of delta blocks reported for this snapshot
    try:
        if root:
            if not isinstance(root, str):
                raise IntegrityError(f"snapshots/{sid}: malformed tree id", f"snapshots/{sid}")
            blob_ids.setdefault(root, "tree")
            for path, node in walk(repo, root):
                if node["type"] == "dir" and isinstance(node.get("subtree"), str):
                    blob_ids.setdefault(node["subtree"], "tree")  # else the walk refuses it
                where = os.fsdecode(path)
                if DELTA_KEY in node:  # format 1.2: its delta blocks' own ids are not stored
                    _check_deltas(repo, sid, where, node, report, present, rebuilt, deltas)
                    for b in stored_ids(node, where):
                        blob_ids.setdefault(b, where)
                    continue
                for b in _ids(node.get("content"), where):
                    blob_ids.setdefault(b, where)
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


MAX_DELTA_PROBLEMS = 20  # per snapshot; the blobs' own problems are reported besides


def _check_deltas(repo, sid: str, where: str, node: dict, report: VerifyReport,
                  present: dict[str, int] | None, rebuilt: set[bytes] | None,
                  count: list[int]) -> None:
    """The blocks of a file node stored as deltas (docs/FORMAT.md 5.2): their two
    blobs are in the index, data blobs, in packs that are there; with
    ``rebuilt`` (--read-data) each block is also rebuilt and checked against its id.
    Problems name the file's path (at most MAX_DELTA_PROBLEMS a snapshot)."""
    index = repo.index

    def problem(message: str) -> None:
        count[0] += 1
        if count[0] <= MAX_DELTA_PROBLEMS:
            report.problems.append(Problem(f"snapshots/{sid}", message, [sid]))

    for i, (full, delta_id, base_id) in enumerate(content_pieces(node, where)):
        if delta_id is None:
            continue
        sound = True
        for what, bid in (("delta", delta_id), ("base", base_id)):
            entry = index.get(bid)
            if entry is None:  # reported below with the path, as for any blob
                sound = False
                continue
            if entry.type != DATA:
                why = f"is a {entry.type} blob, not data"
            elif present is not None and pack_name(entry.pack_id) not in present:
                why = f"is in {pack_name(entry.pack_id)}, which is missing"
            else:
                continue
            sound = False
            problem(f"{where}: block {i} is stored as a delta whose {what} blob {bid} {why}")
        if not sound:
            continue
        if rebuilt is None:
            continue
        key = hashlib.blake2b(f"{full}{delta_id}{base_id}".encode(), digest_size=16).digest()
        if key in rebuilt:
            continue
        try:
            load_piece(repo, full, delta_id, base_id, f"{where} (block {i})")
        except EngineError as e:
            problem(f"{where}: block {i}: {e}" if not str(e).startswith(where) else str(e))
            continue
        rebuilt.add(key)


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


# A pack's check: (bytes read, the pack's own problems, its blobs' check). The last is
# None when the pack was not read (missing, unreadable, larger than any pack); for the
# blobs asked for, (blobs checked, the first problem or None); for every blob of the
# header, (the 32-byte ids of those that passed, joined in id order, {blob id: problem}
# of those that did not).
PackCheck = tuple[int, list[str], "tuple[int, str | None] | tuple[bytes, dict[str, str]] | None"]


def _check_pack(repo, pid: str, wanted: set[str] | None, present: dict[str, int],
                ahead: str | None = None, reuse: bool = False) -> PackCheck:
    """Read one pack whole and check it: its SHA-256 against its name, its header, and
    blobs, each authenticated, decoded and hashed against its id where the index places
    it.

    wanted: the blobs to check, in id order up to the first problem, each compared with
    the header too. None: every blob the header lists where the index places it too,
    to the end (verify started before it knew which blobs it needs: `_outcome` takes
    what it needs, and the pack is checked again, for its blobs, when one is not there).
    ahead: a pack to have the kernel read in the background (a forked worker's next
    pack, roughly). reuse: read into this process's buffer (a forked worker's own)."""
    name = pack_name(pid)
    if name not in present:
        return 0, [], None  # already reported as missing
    if present[name] > MAX_PACK:  # never read it whole
        return 0, [f"{name}: {present[name]} bytes, larger than any pack"], None
    data = _read_into_buffer(repo.backend, name) if reuse else None
    if data is None:
        try:
            data = memoryview(repo.backend.get(name))
        except NotFound:
            return 0, [], None
        except EngineError as e:  # unreadable: report it and go on with the other packs
            return 0, [f"{name}: {e}"], None
    if ahead is not None:
        _prefetch(repo.backend, ahead)
    problems = []
    if sha256_hex(data) != pid:
        problems.append(f"{name}: content does not match its name (corrupt)")
    try:
        entries = {e.id: e for e in read_header(repo.keys, data, pid)}
    except IntegrityError as e:
        problems.append(str(e))
        entries = {}
    index, keys = repo.index, repo.keys

    def check(bid: str, offset: int, length: int, raw_length: int) -> str | None:
        try:
            sealed = data[offset : offset + length]
            if len(sealed) != length:
                raise IntegrityError(f"{name}: blob {bid[:16]}: the pack ends before offset "
                                     f"{offset}+{length} (truncated?)", name)
            # Repository.decode_blob's checks and errors, without copying the blob
            open_blob(keys, sealed, bid, name, raw_length)
        except IntegrityError as e:
            return str(e)
        return None

    if wanted is not None:
        checked = 0
        for bid in sorted(wanted):
            idx = index[bid]
            bad = check(bid, idx.offset, idx.length, idx.raw_length)
            if bad is not None:
                return len(data), problems, (checked, bad)
            checked += 1
            h = entries.get(bid)
            if entries and (h is None or h.offset != idx.offset or h.length != idx.length):
                return len(data), problems, (checked, f"{name}: header disagrees with the "
                                                      f"index for blob {bid[:16]}")
        return len(data), problems, (checked, None)
    passed: list[str] = []
    failed: dict[str, str] = {}
    for bid in sorted(entries):
        h, idx = entries[bid], index.get(bid)
        if idx is None or idx.pack_id != pid or (idx.offset, idx.length, idx.raw_length) != (
                h.offset, h.length, h.raw_length):
            continue  # the index has it elsewhere: checked there, or again with ``wanted``
        bad = check(bid, idx.offset, idx.length, idx.raw_length)
        if bad is None:
            passed.append(bid)
        else:
            failed[bid] = bad
    return len(data), problems, (bytes.fromhex("".join(passed)), failed)


def _outcome(result: PackCheck, needed: set[str]) -> tuple[int, int, list[str]] | None:
    """(bytes read, blobs checked, problems) of a pack whose ``needed`` blobs are to be
    checked in id order up to the first problem; None when ``result`` (of every blob of
    the header) did not check one of them where the index places it."""
    nbytes, problems, blobs = result
    if blobs is None:
        return nbytes, 0, list(problems)
    first, second = blobs
    if isinstance(first, int):  # the blobs asked for
        return nbytes, first, [*problems, second] if second is not None else list(problems)
    passed = {first[i : i + 32].hex() for i in range(0, len(first), 32)}
    problems = list(problems)
    checked = 0
    for bid in sorted(needed):
        bad = second.get(bid)
        if bad is not None:
            problems.append(bad)
            break
        if bid not in passed:
            return None
        checked += 1
    return nbytes, checked, problems


_BUFFER = bytearray()  # a forked worker's pack buffer, reused from pack to pack


def _read_into_buffer(backend, name: str) -> memoryview | None:
    """A local pack read whole into this process's reused buffer (no fresh mapping, and
    its page faults, for every pack); None when that cannot be done (an error, a pack
    that grew while read): then the backend reads it and names any error."""
    global _BUFFER
    try:
        with open(backend._path(name), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_PACK:
                return None
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if len(_BUFFER) < size + 1:
                _BUFFER = bytearray(size + 1 + (1 << 20))  # a new one: views of the
                # old one may live on in a traceback
            view = memoryview(_BUFFER)
            n = 0
            while n <= size:  # one byte past the size, to see the end
                got = f.readinto(view[n : size + 1])
                if not got:
                    break
                n += got
            if n != size:
                return None
            return view[:n]
    except (OSError, EngineError):
        return None


def _prefetch(backend, name: str) -> None:
    """Have the kernel read a local pack in the background (a hint; errors ignored)."""
    from engine.storage.local import LocalBackend

    if not isinstance(backend, LocalBackend) or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(backend._path(name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except (OSError, EngineError):
        pass


# What a forked verify worker checks with: the repository (keys, index, backend) and the
# packs present. Handed over by fork itself (a fork context's initargs are not pickled),
# so nothing of the repository is sent to the workers.
_FORKED: tuple | None = None
WALK_TREE_CACHE_BLOBS = 1 << 20  # trees kept during the structure walk (bytes bound it)
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
    # What the parent left is never scanned by this process's collector (nor its pages
    # copied by the scan), and blob buffers (decrypted, decompressed: up to megabytes)
    # come from the heap and stay there when freed, for the next blob, instead of going
    # back to the system and coming back as page faults. (The trim threshold alone
    # does not do it: setting it fixes glibc's mmap threshold at 128 KiB, so every larger
    # buffer was a fresh mapping.)
    gc.freeze()
    keep_freed(32 * 1024 * 1024, 256 * 1024 * 1024)  # glibc's largest mmap threshold


def _check_forked(pid: str, wanted, ahead: str | None) -> PackCheck:
    repo, present = _FORKED
    return _check_pack(repo, pid, wanted, present, ahead, reuse=True)


def _use_processes(repo) -> bool:
    """Local packs are checked by forked processes, one a core: hashing the pack, the
    blob HMACs, AES-GCM and zstd of one pack hold the GIL long enough that threads use
    little more than one core (bench/RESULTS.md). A remote backend's client must not be
    shared with a forked child: threads there, several requests in flight."""
    from engine.storage.local import LocalBackend

    return isinstance(repo.backend, LocalBackend) and _cores() > 1 and hasattr(os, "fork")


class _PackChecks:
    """Packs checked on a pool (`_check_pack`): forked processes, one a core, for a local
    repository, else threads; the biggest packs first, so the workers end together."""

    def __init__(self, repo, present: dict[str, int], packs: list[str],
                 wanted: dict[str, set[str]] | None = None,
                 cancel: CancelToken | None = None) -> None:
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.present = present
        if _use_processes(repo) and len(packs) > 1:
            import multiprocessing

            self.workers = min(_cores(), MAX_PROCESSES, len(packs))
            self.pool = ProcessPoolExecutor(max_workers=self.workers,
                                            mp_context=multiprocessing.get_context("fork"),
                                            initializer=_init_forked, initargs=(repo, present))
            self.check = _check_forked
        else:
            self.workers = REMOTE_WORKERS if not _use_processes(repo) else 2
            self.pool = ThreadPoolExecutor(max_workers=self.workers,
                                           thread_name_prefix="verify")

            def check(pid: str, wanted, ahead) -> PackCheck:
                if cancel is not None and cancel.cancelled:
                    return 0, [], None
                return _check_pack(repo, pid, wanted, present)

            self.check = check
        self.futures: dict[str, object] = {}
        self.submit(packs, wanted)

    def submit(self, packs: list[str], wanted: dict[str, set[str]] | None) -> None:
        order = sorted(packs, key=lambda p: -self.present.get(pack_name(p), 0))
        for i, pid in enumerate(order):
            ahead = order[i + self.workers] if i + self.workers < len(order) else None
            self.futures[pid] = self.pool.submit(
                self.check, pid, None if wanted is None else wanted[pid],
                None if ahead is None else pack_name(ahead))

    def result(self, pid: str) -> PackCheck | None:
        fut = self.futures.pop(pid, None)
        return None if fut is None else fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _read_packs(repo, pack_users, needed_blobs, present, report, job_id, on_event, cancel,
                early: _PackChecks | None = None) -> None:
    """Every pack the snapshots need, read whole and checked (_check_pack); results are
    taken in the order of the packs, so the report is the same however they are read.
    early: checks of every pack started before the needed blobs were known; a pack whose
    check there does not cover them all is checked again with them."""
    packs = sorted(pack_users)
    total = sum(repo.pack_sizes.get(p, 0) for p in packs)
    checks = early
    try:
        if not packs:
            return
        if checks is None:
            checks = _PackChecks(repo, present, packs, needed_blobs, cancel)
        for i, pid in enumerate(packs):
            cancel.check()
            needed = needed_blobs[pid]
            result = checks.result(pid)
            outcome = None if result is None else _outcome(result, needed)
            if outcome is None:
                checks.submit([pid], {pid: needed})
                outcome = _outcome(checks.result(pid), needed)
            cancel.check()
            nbytes, checked, problems = outcome
            users = sorted(pack_users[pid])
            if nbytes:
                report.packs_checked += 1
            report.bytes_read += nbytes
            report.blobs_checked += checked
            report.problems.extend(Problem(pack_name(pid), p, users) for p in problems)
            on_event(Event(job_id, "read-data", bytes_done=report.bytes_read, bytes_total=total,
                           items_done=i + 1, items_total=len(packs), message=pack_name(pid)))
    finally:
        if checks is not None:
            checks.close()
