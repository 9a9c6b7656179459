"""restore: write a files snapshot (or selected paths of it) into a target directory.

Two steps, so a wizard can show the plan before anything is written:
``plan_restore`` resolves the selection, walks every tree it touches and
rejects the snapshot as a whole if any entry is unsafe (see engine.repo.walk)
or malformed, finds the hard links among the entries, and counts files and
bytes; ``execute_restore`` then writes.

Writes never follow a symlink and never use a path longer than one name: every
entry is made by name in its open parent directory (``dir_fd``; directories
are opened with O_NOFOLLOW, files with O_NOFOLLOW), so depth and paths longer
than PATH_MAX are no obstacle and nothing can lead outside the target. An
existing entry in the way (with --force) is removed, not written through.

Resume (``resume``: a restore that stopped part way, run again into the same
target): an existing regular file with the snapshot's size whose content is
exactly the snapshot's (read piece by piece, cut at the raw lengths of the
node's blobs, each piece's keyed id compared with the node's) is kept: its
content is neither fetched nor written, its metadata is set as for a written
file (extended attributes the snapshot does not have are removed). Anything
else in the way is removed and written as with --force. The check runs where
the content would be written (worker threads, forked writers).

Blocks stored as deltas (a file node's ``delta``, format 1.2, engine/repo/blockdelta.py):
the plan checks every ``delta`` list (a malformed one writes nothing); such a file is
written a window of blocks at a time (the blobs it needs, plain blocks, delta blobs and
bases, read run by run in the order they lie in the repository), every delta rebuilt and
checked against its block's id before the window is written; resume compares the
file's pieces (cut at the lengths of the blocks, a delta's being its base's) with the
blocks' ids as for any file. Files
without ``delta`` take the plain path.

Per entry: content (holes skipped, so a sparse file stays sparse), then owner
(as root), mode, extended attributes (POSIX ACLs among them; one the target
refuses is a warning), then times.

As root from an unencrypted repository, whose content nobody authenticates, a
crafted snapshot must not hand out privileges: device nodes are skipped and
setuid/setgid bits (and ``security.capability``, file capabilities) are left
off regular files, each with a warning naming the path, unless the plan allows
them (``allow_devices``, ``allow_setid``). A directory keeps its setgid bit
(group inheritance, no privilege). Encrypted repositories (authenticated
content) and restores as another user are unchanged. Hard links: the first name of a file is
written, the others linked to it. Directory metadata is set last, deepest
first, so their mtimes stay as stored.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError, IntegrityError, UnsafeEntry, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import content_pieces, load_piece, node_deltas, rebuild, stored_ids
from engine.repo.pack import MAX_SEALED_BLOB, open_blob, pack_name
from engine.repo.repository import IndexEntry, Repository
from engine.repo.tree import hardlink_key, link_target, node_holes, node_xattrs
from engine.repo.walk import find, walk
from engine.sources.files import DirChain, entry_path

_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CAPS = b"security.capability"
_UNTRUSTED = "the repository is not encrypted, so nothing authenticates its content"
# a run of blobs read with one request: at most this many bytes and blobs
_RUN_BYTES = 4 * 1024 * 1024
_RUN_BLOBS = 256
_IOV_MAX = 1024
# From a remote backend (S3) the runs of the files to restore are read ahead as segments:
# the runs of one pack close together (gaps of blobs no file needs up to _SEG_GAP read
# through), up to _SEG_BYTES a request, _FETCHERS requests in flight, at most _AHEAD_BYTES
# read and not yet written; a run joins a segment only while the restore is at most
# _SEG_SPAN bytes further on than the segment's first run, so no segment is held long.
_SEG_BYTES = 8 * 1024 * 1024
_SEG_GAP = 1024 * 1024
_SEG_SPAN = 16 * 1024 * 1024
_AHEAD_BYTES = 32 * 1024 * 1024
_FETCHERS = 4
# Files are created, then written by forked writers, a batch at a time: the first of
# FORKED_FIRST files (the writers start early), each next one twice as many up to
# FORKED_BATCH, or FORKED_BATCH_BYTES of content; a batch is written while the next one's
# entries are made.
FORKED_FIRST = 256
FORKED_BATCH = 20_000
FORKED_BATCH_BYTES = 256 * 1024 * 1024
FORKED_AT_ONCE = 2  # batches being written at once (their writers overlap)
# What a forked writer does before writing a file: open the file the walk made (a hard
# link's first name, made before its other names link to it; or one made again by a
# resume), check it first (resume: kept when its content is already the snapshot's), or
# create it (every other file: the walk only makes the directories, so it keeps ahead of
# the writers, and the creations run on all the writers at once)
_OPEN, _CHECK, _CREATE, _PART = 0, 1, 2, 3
# a new file at least this large, of blocks of one size (a cluster's relation file), is
# written by every forked writer, each a part of its blocks (_Restorer._split)
_SPLIT_BYTES = 32 * 1024 * 1024
_REPORT_EVERY = 0.05  # seconds: a forked writer's progress lines at most this often
# a forked writer's malloc (_writer_memory): blocks up to this size from the heap (glibc's
# largest mmap threshold), and up to that much freed memory kept at its top
_WRITER_MMAP_THRESHOLD = 32 * 1024 * 1024
_WRITER_TRIM_THRESHOLD = 32 * 1024 * 1024


@dataclass
class RestorePlan:
    snapshot: dict
    target: Path
    selections: list[tuple[bytes, dict]]  # (path in snapshot, node)
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    force: bool = False
    # an existing target is accepted and files already there with the snapshot's content
    # are kept (module docstring)
    resume: bool = False
    # as root from an unencrypted repository: device nodes, setuid/setgid bits and file
    # capabilities only when allowed
    allow_devices: bool = False
    allow_setid: bool = False
    # every entry to write, in pre-order: walked again from the trees each time it is
    # iterated (plan_restore walked it once to check and count), so memory does not grow
    # with the number of files
    entries: Iterable[tuple[bytes, dict]] = field(default_factory=list, repr=False)
    # hard links: path -> the first path of the same file in this restore
    links: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    @property
    def target_label(self) -> str:
        """What the job and the audit log call this restore."""
        return f"{self.snapshot['kind']}:{self.snapshot['source']} -> {self.target}"

    def summary(self) -> dict:
        return {
            "snapshot": self.snapshot["id"],
            "target": str(self.target),
            "paths": [os.fsdecode(p) or "/" for p, _ in self.selections],
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
        }


@dataclass
class RestoreResult:
    snapshot: str
    target: str
    files: int
    bytes: int
    warnings: list[str]
    # of files/bytes: kept as they were, their content already the snapshot's (resume)
    skipped_files: int = 0
    skipped_bytes: int = 0

    def as_json(self) -> dict:
        return asdict(self)


def _check_target(target: Path, force: bool) -> None:
    """``force``: --force or --resume, either of which accepts a non-empty target."""
    if target.is_symlink():
        raise UsageError(f"restore target {target} is a symlink; give the real directory")
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"restore target {target} exists and is not a directory")
        if any(target.iterdir()) and not force:
            raise UsageError(
                f"restore target {target} is not empty (use --force to restore into it, "
                "or --resume to finish a restore that stopped part way)"
            )


def plan_restore(
    repo: Repository, snap: dict, target: str | os.PathLike[str], paths=(), force=False,
    allow_devices: bool = False, allow_setid: bool = False, resume: bool = False,
) -> RestorePlan:
    if not os.fspath(target):  # e.g. an unset shell variable: never the current directory
        raise UsageError("restore target is empty: give the directory to restore into")
    tgt = Path(os.path.abspath(target))
    _check_target(tgt, force or resume)
    selections = [find(repo, snap["tree"], p) for p in paths] if paths else [
        (b"", {"type": "dir", "subtree": snap["tree"]})
    ]
    plan = RestorePlan(snap, tgt, selections, force=force, resume=resume,
                       allow_devices=allow_devices, allow_setid=allow_setid)
    plan.entries = _Entries(repo, snap["tree"], selections)
    firsts: dict[tuple, bytes] = {}  # hard link key -> its first path

    for p, n in plan.entries:
        where = os.fsdecode(p)
        if n["type"] == "file":
            plan.files += 1
            plan.bytes += int(n.get("size", 0))
            if not isinstance(n.get("content", []), list):
                raise UnsafeEntry(f"{where}: malformed content list")
            node_holes(n, where)
            node_deltas(n, where)  # blocks stored as deltas: a malformed list writes nothing
        elif n["type"] == "dir":
            plan.dirs += 1
        node_xattrs(n, where)
        key = hardlink_key(n)
        if key is not None:
            first = firsts.setdefault(key, p)
            if first != p:
                plan.links[p] = first
    return plan


class _Entries:
    """The entries of a restore's selections in pre-order, walked from the trees each time
    they are iterated (the trees are content-addressed: every walk sees the same)."""

    def __init__(self, repo: Repository, root: str, selections: list[tuple[bytes, dict]]):
        self.repo, self.root, self.selections = repo, root, selections
        self.measured = False  # a whole walk passed the walk budget (walk.measure)

    def __iter__(self) -> Iterator[tuple[bytes, dict]]:
        # several selections may share parents or lie inside one another: then paths are
        # remembered to give each once (one selection, the usual case, needs no memory)
        seen: set[bytes] | None = set() if len(self.selections) > 1 else None
        for sel_path, node in self.selections:
            # parents of a selected path are restored as directories with their metadata
            parts = sel_path.split(b"/") if sel_path else []
            items: list[Iterable[tuple[bytes, dict]]] = [
                [find(self.repo, self.root, os.fsdecode(b"/".join(parts[:i])))
                 for i in range(1, len(parts))]]
            if sel_path:
                items.append([(sel_path, node)])
            if node["type"] == "dir":
                items.append(walk(self.repo, node["subtree"], sel_path, self.measured))
            for it in items:
                for p, n in it:
                    if seen is not None:
                        if p in seen:
                            continue
                        seen.add(p)
                    yield p, n
        self.measured = True


def _data_ranges(holes: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of a file that are not holes."""
    out, pos = [], 0
    for off, length in holes:
        if off > pos:
            out.append((pos, off))
        pos = off + length
    if pos < size:
        out.append((pos, size))
    return out


class _Batch:
    """Files being written by forked writers (``_Restorer._start_forked``): read end of
    each writer's pipe -> its pid, what it reported done (bytes, files, skipped files,
    skipped bytes), the part of a line read so far; the first error reported."""

    def __init__(self, files: int, sel: Any):
        self.files = files
        self.sel = sel
        self.children: dict[int, int] = {}
        self.done: dict[int, tuple[int, int, int, int]] = {}
        self.buffers: dict[int, bytes] = {}
        self.open_ends: set[int] = set()  # writers still writing
        self.error: dict | None = None
        self.root_fd = -1
        self.split: list[tuple[bytes, dict]] = []  # files written in parts: metadata after


class _Restorer:
    def __init__(self, repo: Repository, plan: RestorePlan, job_id: str, on_event, cancel):
        self.repo = repo
        self.plan = plan
        self.root = os.fsencode(str(plan.target))
        self.job_id = job_id
        self.on_event = on_event
        self.cancel = cancel
        self.is_root = os.geteuid() == 0
        # nobody vouches for an unencrypted repository's content: as root, no privileges
        # from it unless allowed (module docstring)
        untrusted = self.is_root and not repo.keys.encrypted
        self.no_devices = untrusted and not plan.allow_devices
        self.no_setid = untrusted and not plan.allow_setid
        self.bytes_done = 0
        self.files_done = 0
        self.skipped_files = 0  # resume: kept, their content already the snapshot's
        self.skipped_bytes = 0
        self.zero_ids: dict[int, str] = {}  # resume: length -> the id of that many zeros
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        # An empty or new target holds nothing we could write through or must remove;
        # then the lstat of every path before writing it is skipped.
        self.fresh = not plan.target.exists() or not any(plan.target.iterdir())
        # Entries may get ACLs they do not have from a default ACL above them (only in
        # a target that had one, or was not empty): then those are removed again.
        self.inherit = not self.fresh
        self.sources = set(plan.links.values())  # first paths of hard-linked files
        self.made: set[bytes] = set()  # ... of those, the ones this restore made
        self.prefetch: _Prefetch | None = None  # remote backends: runs read ahead (run)
        self.resume = plan.resume

    def _warn(self, message: str) -> None:
        with self._lock:
            self.warnings.append(message)

    # ------------------------------------------------------------ entries
    def _make_dir(self, pfd: int, name: bytes) -> None:
        if self.fresh:  # the target was empty: nothing can be in the way
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
                return
            except FileExistsError:
                pass
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=pfd)
            return
        if stat.S_ISDIR(st.st_mode):
            return
        os.unlink(name, dir_fd=pfd)  # a file or symlink in the way (only with --force)
        os.mkdir(name, 0o700, dir_fd=pfd)

    def _remove_existing(self, pfd: int, name: bytes) -> None:
        if self.fresh:
            return
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)

    def _set_xattrs(self, target: int | bytes, rel: bytes, node: dict) -> None:
        """The node's extended attributes (ACLs among them); a refused one is a warning."""
        kw = {} if isinstance(target, int) else {"follow_symlinks": False}
        pairs = node_xattrs(node)
        if self.no_setid and any(n == _CAPS for n, _ in pairs):
            pairs = [(n, v) for n, v in pairs if n != _CAPS]
            self._warn(f"{os.fsdecode(rel)}: file capabilities (security.capability) not "
                       f"restored: {_UNTRUSTED}; --allow-setid restores them")
        failed: list[tuple[bytes, OSError]] = []
        for name, value in pairs:
            try:
                os.setxattr(target, name, value, **kw)
            except OSError as e:
                failed.append((name, e))
        if self.inherit and node["type"] != "symlink":
            have = {n for n, _ in pairs}
            for acl in _ACLS if node["type"] == "dir" else _ACLS[:1]:
                if acl not in have:
                    try:
                        os.removexattr(target, acl, **kw)
                    except OSError:
                        pass
        if failed:
            names = ", ".join(os.fsdecode(n) for n, _ in failed)
            why = failed[0][1].strerror or str(failed[0][1])
            self._warn(f"{os.fsdecode(rel)}: extended attribute(s) not restored ({why}): "
                       f"{names}")

    def _mode(self, rel: bytes, node: dict) -> int:
        mode = int(node.get("mode", 0o644)) & 0o7777
        if self.no_setid and node["type"] != "dir" and mode & 0o6000:
            self._warn(f"{os.fsdecode(rel)}: setuid/setgid bit(s) not restored (mode "
                       f"{mode & ~0o6000:04o} instead of {mode:04o}): {_UNTRUSTED}; "
                       "--allow-setid restores them")
            mode &= ~0o6000
        return mode

    def _meta_fd(self, fd: int, rel: bytes, node: dict) -> None:
        """Owner, mode, xattrs and times through the open file: no path look-ups."""
        try:
            if self.is_root:
                os.fchown(fd, int(node.get("uid", 0)), int(node.get("gid", 0)))
            os.fchmod(fd, self._mode(rel, node))
        except OSError as e:
            self._warn(f"{os.fsdecode(rel)}: cannot set metadata: {e.strerror}")
        self._set_xattrs(fd, rel, node)
        try:
            mt = int(node.get("mtime_ns", 0))
            os.utime(fd, ns=(mt, mt))
        except OSError as e:
            self._warn(f"{os.fsdecode(rel)}: cannot set metadata: {e.strerror}")

    def _meta_at(self, pfd: int, name: bytes, rel: bytes, node: dict) -> None:
        """The same for an entry that cannot be opened (symlink, fifo, device): by name
        in its open parent, never following a symlink."""
        try:
            if self.is_root:
                os.chown(name, int(node.get("uid", 0)), int(node.get("gid", 0)),
                         dir_fd=pfd, follow_symlinks=False)
            if node["type"] != "symlink":  # made just now by this restore: not a link
                os.chmod(name, self._mode(rel, node), dir_fd=pfd)
        except OSError as e:
            self._warn(f"{os.fsdecode(rel)}: cannot set metadata: {e.strerror}")
        if node.get("xattrs") or self.inherit:
            self._set_xattrs(entry_path(pfd, name, os.path.join(self.root, rel)), rel, node)
        try:
            mt = int(node.get("mtime_ns", 0))
            os.utime(name, ns=(mt, mt), dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            self._warn(f"{os.fsdecode(rel)}: cannot set metadata: {e.strerror}")

    def _write_file(self, fd: int, rel: bytes, node: dict) -> None:
        try:
            self.cancel.check()
            holes = node_holes(node)
            if holes:
                self._write_sparse(fd, rel, node, holes)
            else:
                self._write_content(fd, rel, node)
            self._meta_fd(fd, rel, node)
        finally:
            os.close(fd)
        with self._lock:
            self.files_done += 1

    # ------------------------------------------------------- blocks as deltas
    def _delta_windows(self, node: dict, where: str) -> Iterator[tuple[list, list]]:
        """A file with blocks stored as deltas (``delta``, engine/repo/blockdelta.py), as
        windows of consecutive blocks of at most _RUN_BYTES and _RUN_BLOBS blocks (or
        one block): ``(pieces, runs)``, ``pieces`` the window's ``(i, full_id, delta_id,
        base_id)`` (the last two None for a block stored whole), ``runs`` (``_runs``) for
        every blob the window needs (its plain blocks, delta blobs and bases), each once,
        in the order they lie in the repository: a base backup's deltas and new blocks lie
        back to back in its packs, the unchanged blocks and the bases in the older
        backup's, so a window is read with a few requests whatever the mix of blocks."""
        get = self.repo.index.get
        window: list[tuple[int, str, str | None, str | None]] = []
        where_of: dict[str, tuple[str, int]] = {}  # blob -> (pack, offset) of the window
        entry_of: dict[str, Any] = {}
        size = 0

        def cut() -> tuple[list, list]:
            ids = sorted(where_of, key=where_of.__getitem__)
            return list(window), self._runs(ids, [entry_of[b] for b in ids])

        for i, (full, delta, base) in enumerate(content_pieces(node, where)):
            need = (full,) if delta is None else (delta, base)
            entries = [get(b) if isinstance(b, str) else None for b in need]
            n = entries[-1].raw_length if entries[-1] is not None else 0  # a delta: its base's
            if window and (size + n > _RUN_BYTES or len(window) >= _RUN_BLOBS):
                yield cut()
                window, size = [], 0
                where_of, entry_of = {}, {}
            window.append((i, full, delta, base))
            size += n
            for b, e in zip(need, entries, strict=True):
                # odd blobs (not in the index) first, each alone: load_blob names them
                where_of[b] = (e.pack_id, e.offset) if e is not None else ("", -1)
                entry_of[b] = e
        if window:
            yield cut()

    def _write_deltas(self, fd: int, rel: bytes, node: dict) -> None:
        """The content of a file with blocks stored as deltas, a window at a time
        (``_delta_windows``): the window's blobs read run by run, its deltas rebuilt and
        checked against their ids (IntegrityError naming the file and the block, before
        the window is written), then one writev."""
        where = os.fsdecode(rel)
        keys = self.repo.keys
        for pieces, runs in self._delta_windows(node, where):
            self.cancel.check()
            # a block stored as a delta is checked as a whole, rebuilt, against its id
            # (which covers its delta and base): their own ids are not computed again
            unchecked = {b for _, _, d, base in pieces if d is not None for b in (d, base)}
            unchecked -= {full for _, full, d, _ in pieces if d is None}
            blobs: dict[str, bytes | memoryview] = {}
            for run in runs:
                for (blob_id, _), data in zip(run, self._load_run(run, unchecked),
                                              strict=True):
                    blobs[blob_id] = data
            out: list[bytes | memoryview] = []
            for i, full, delta, base in pieces:
                if delta is None:
                    out.append(blobs[full])
                else:
                    out.append(rebuild(keys, full, blobs[delta], blobs[base],
                                       f"{where} (block {i})"))
            _write_all(fd, out)
            with self._lock:
                self.bytes_done += sum(len(d) for d in out)

    # ------------------------------------------------------------- resume
    def _keepable(self, pfd: int, name: bytes, rel: bytes, node: dict) -> bool:
        """resume: whether the entry at ``name`` may be the node's file already (a regular
        file of its size, not linked from outside this restore): then its content is
        checked where it would be written (_keep_or_open), else it is removed."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError:
            return False
        return self._may_keep(st, rel, node)

    def _may_keep(self, st: os.stat_result, rel: bytes, node: dict) -> bool:
        # a file with other names outside this restore is replaced, as --force does: its
        # metadata is not to be set through them (a hard link the snapshot has is fine)
        return (stat.S_ISREG(st.st_mode) and st.st_size == int(node.get("size", 0))
                and (st.st_nlink == 1 or rel in self.sources))

    def _keep_or_open(self, pfd: int, name: bytes, rel: bytes, node: dict) -> int | None:
        """resume: None when the file at ``name`` has the node's content (its metadata
        then set and it is counted as kept); else whatever is there is removed and a new
        empty file made: its descriptor, to write the content into."""
        self.cancel.check()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=pfd)
        except OSError:
            fd = -1
        if fd >= 0:
            keep = False
            try:
                try:
                    keep = (self._may_keep(os.fstat(fd), rel, node)
                            and self._same_content(fd, node))
                except OSError:  # unreadable: written again, as --force would
                    keep = False
                if keep:
                    self._drop_other_xattrs(fd, node)
                    self._meta_fd(fd, rel, node)
            finally:
                os.close(fd)
            if keep:
                size = int(node.get("size", 0))
                with self._lock:
                    self.files_done += 1
                    self.bytes_done += size
                    self.skipped_files += 1
                    self.skipped_bytes += size
                return None
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        return os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)

    def _resume_write(self, pfd: int, name: bytes, rel: bytes, node: dict) -> None:
        """A worker thread's resume of one file: kept, or written. Closes ``pfd`` (a
        duplicate of the parent's descriptor, which the main thread moves on from)."""
        try:
            fd = self._keep_or_open(pfd, name, rel, node)
        finally:
            os.close(pfd)
        if fd is not None:
            self._write_file(fd, rel, node)

    def _same_content(self, fd: int, node: dict) -> bool:
        """Whether the open file's bytes are exactly the node's content: cut at the raw
        lengths of its blobs, each piece's keyed id the blob's. Read a window of pieces of
        at most _RUN_BYTES (or one blob) at a time; a piece inside one of the node's holes
        where the file has no data either is the id of that many zeros, not read."""
        size = int(node.get("size", 0))
        holes = node_holes(node)
        content = node.get("content", [])
        # a block stored as a delta has no index entry of its own id: its length is its
        # base's; its piece's id is still compared with the block's own id (content)
        deltas = node_deltas(node) if DELTA_KEY in node else None
        stored = content if not deltas else [deltas[i][1] if i in deltas else b
                                             for i, b in enumerate(content)]
        blob_id_of = self.repo.keys.blob_id
        window: list[tuple[int, int, str]] = []  # (offset, raw length, id), back to back

        def same_window() -> bool:
            self.cancel.check()
            start = window[0][0]
            buf = bytearray(window[-1][0] + window[-1][1] - start)
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                k = os.preadv(fd, [view[got:]], start + got)
                if k <= 0:
                    return False  # shorter than it was a moment ago
                got += k
            same = all(blob_id_of(view[o - start:o - start + n]) == b for o, n, b in window)
            window.clear()
            return same

        off = h = 0
        for blob_id, stored_id in zip(content, stored, strict=True):
            entry = self.repo.index.get(stored_id) if isinstance(stored_id, str) else None
            if entry is None or entry.type != "data":
                return False  # the write names the problem
            n = entry.raw_length
            if off + n > size:
                return False
            while h < len(holes) and holes[h][0] + holes[h][1] <= off:
                h += 1
            if (h < len(holes) and holes[h][0] <= off <= off + n <= sum(holes[h])
                    and self._no_data(fd, off, n)):
                if window and not same_window():
                    return False
                zid = self.zero_ids.get(n)
                if zid is None:
                    zid = self.zero_ids[n] = blob_id_of(bytes(n))
                if zid != blob_id:
                    return False
            else:
                if window and off + n - window[0][0] > _RUN_BYTES and not same_window():
                    return False
                window.append((off, n, blob_id))
            off += n
        if window and not same_window():
            return False
        return off == size

    @staticmethod
    def _no_data(fd: int, start: int, length: int) -> bool:
        """Whether the file has no data (only a hole) in [start, start + length)."""
        try:
            return os.lseek(fd, start, os.SEEK_DATA) >= start + length
        except OSError:  # ENXIO: no data from start to the end
            return True

    def _drop_other_xattrs(self, fd: int, node: dict) -> None:
        """A kept file: extended attributes the node does not have removed (a written
        file has none; the SELinux label is the file system's, kept)."""
        try:
            names = os.listxattr(fd)
        except OSError:
            return
        have = {n for n, _ in node_xattrs(node)}
        for n in names:
            b = os.fsencode(n)
            if b not in have and b != b"security.selinux":
                with contextlib.suppress(OSError):
                    os.removexattr(fd, n)

    def _runs(self, content: list, entries: list | None = None) -> list[list[tuple[Any, Any]]]:
        """A file's blobs in runs stored back to back in one pack (a backup writes a file's
        blocks in order): each run is read with one request and written with one writev.
        A blob that is odd in any way (not in the index, not data, too large) stands
        alone, for load_blob to read and to name the problem of. ``entries``: the blobs'
        index entries, when the caller looked them up already."""
        runs: list[list[tuple[Any, Any]]] = []
        run: list[tuple[Any, Any]] = []
        pack, end, size = "", 0, 0
        get = self.repo.index.get
        for k, blob_id in enumerate(content):
            if entries is not None:
                entry = entries[k]
            else:
                entry = get(blob_id) if isinstance(blob_id, str) else None
            if entry is None or entry.type != "data" or entry.length > MAX_SEALED_BLOB:
                if run:
                    runs.append(run)
                    run = []
                runs.append([(blob_id, None)])
                continue
            if run and (entry.pack_id != pack or entry.offset != end
                        or size + entry.length > _RUN_BYTES or len(run) >= _RUN_BLOBS):
                runs.append(run)
                run = []
            if not run:
                pack, size = entry.pack_id, 0
            run.append((blob_id, entry))
            end = entry.offset + entry.length
            size += entry.length
        if run:
            runs.append(run)
        return runs

    def _load_run(self, run: list[tuple[Any, Any]],
                  unchecked: set[str] | frozenset[str] = frozenset()
                  ) -> list[bytes | memoryview]:
        """The blobs of a run, each authenticated and checked against its id (those in
        ``unchecked`` only authenticated: the delta blobs and bases of blocks that are
        checked as a whole once rebuilt)."""
        first: IndexEntry | None = run[0][1]
        if first is None:  # odd in some way: load_blob names the problem
            return [self.repo.load_blob(run[0][0], "data")]
        name = pack_name(first.pack_id)
        total = sum(e.length for _, e in run)
        sealed = self.prefetch.take(first.pack_id, first.offset, total) if self.prefetch \
            else None
        if sealed is None:
            sealed = self.repo.backend.get_range(name, first.offset, total)
        if len(sealed) != total:  # truncated pack: load_blob names the blob
            return [self.repo.load_blob(b, "data") for b, _ in run]
        view = memoryview(sealed)
        keys = self.repo.keys
        out = []
        pos = 0
        for blob_id, entry in run:  # Repository.decode_blob's checks, without copies
            out.append(open_blob(keys, view[pos:pos + entry.length], blob_id, name,
                                 entry.raw_length, blob_id not in unchecked))
            pos += entry.length
        return out

    def _start_prefetch(self) -> _Prefetch | None:
        """Remote backends only: the runs of every file this restore will write (in the
        order it writes them; hard links and sparse files aside), as segments to read
        ahead. The local repository is read run by run (a pread each)."""
        from engine.storage.local import LocalBackend

        if isinstance(self.repo.backend, LocalBackend):
            return None
        pf = _Prefetch(self.repo.backend)
        for rel, node in self.plan.entries:
            if node["type"] != "file" or rel in self.plan.links or node_holes(node):
                continue
            if self.resume and self._predicted_kept(rel, node):
                continue  # the content is checked, not fetched (one found different is
                # read run by run, as without read-ahead)
            if DELTA_KEY in node:  # the runs in the order _write_deltas takes them
                runs = [run for _, window in self._delta_windows(node, os.fsdecode(rel))
                        for run in window]
            else:
                runs = self._runs(node.get("content", []))
            for run in runs:
                first = run[0][1]
                if first is not None:
                    pf.add(first.pack_id, first.offset, sum(e.length for _, e in run))
        pf.start()
        return pf

    def _predicted_kept(self, rel: bytes, node: dict) -> bool:
        """resume: whether a file may be kept (for read-ahead only: the check is later)."""
        try:
            st = os.lstat(os.path.join(self.root, rel))
        except OSError:
            return False
        return self._may_keep(st, rel, node)

    def _write_sparse(self, fd: int, rel: bytes, node: dict,
                      holes: list[tuple[int, int]]) -> None:
        """Write only the data between the holes: a blob wholly inside a hole is not even
        read, one that overlaps a hole writes its data part; then truncate to the size.
        A block stored as a delta (``delta``) is as long as its base, and rebuilt."""
        size = int(node.get("size", 0))
        data = _data_ranges(holes, size)
        deltas = node_deltas(node) if DELTA_KEY in node else {}
        off = j = 0
        for i, blob_id in enumerate(node.get("content", [])):
            pair = deltas.get(i)
            stored_id = blob_id if pair is None else pair[1]  # a delta: as long as its base
            entry = self.repo.index.get(stored_id)
            if entry is None:
                raise IntegrityError(f"blob {stored_id} is not in the index (missing data)",
                                     stored_id)
            n = entry.raw_length
            while j < len(data) and data[j][1] <= off:
                j += 1
            if j < len(data) and data[j][0] < off + n:
                blob = (self.repo.load_blob(blob_id, "data") if pair is None else
                        load_piece(self.repo, blob_id, *pair,
                                   f"{os.fsdecode(rel)} (block {i})"))
                n = len(blob)
                view = memoryview(blob)
                k = j
                while k < len(data) and data[k][0] < off + n:
                    lo, hi = max(off, data[k][0]), min(off + n, data[k][1])
                    while lo < hi:
                        lo += os.pwrite(fd, view[lo - off:hi - off], lo)
                    k += 1
            off += n
            with self._lock:
                self.bytes_done += n
        os.ftruncate(fd, size)

    def _link(self, links: DirChain, first: bytes, pfd: int, name: bytes) -> None:
        """Another name of a file already made by this restore: a hard link to it."""
        fparent, _, fname = first.rpartition(b"/")
        sfd = links.goto(fparent)
        os.link(fname, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)

    # ---------------------------------------------------------------- run
    def run(self, workers: int = 4, processes: int = 1) -> None:
        """``processes`` > 1: the files' content is written by that many forked processes
        after every entry is made (a restore of a whole data directory into an empty one
        from the local repository, where the GIL would hold the threads to one core)."""
        plan = self.plan
        deferred: list[tuple[bytes, dict, int]] = []
        deferred_bytes = 0
        batch_files = FORKED_FIRST  # grows to FORKED_BATCH: the writers start early
        running: list[_Batch] = []  # the forked writers of the batches before, oldest first
        seen = 0

        def hand_over() -> None:
            """The entries made so far to forked writers, once fewer than FORKED_AT_ONCE
            batches are being written; the walk goes on making the next batch's entries
            while they write. Batches overlap: the writers of one that finish early (a
            share is never exactly as long as the others) leave their core to the next
            batch's, instead of it waiting for the slowest."""
            nonlocal deferred, deferred_bytes, batch_files
            while len(running) >= FORKED_AT_ONCE:
                self._wait_forked(running[0], running[1:])
                running.pop(0)
            if deferred:
                running.append(self._start_forked(root_fd, deferred, processes))
                deferred, deferred_bytes = [], 0
                batch_files = min(FORKED_BATCH, batch_files * 2)

        def defer(rel: bytes, node: dict, check: int) -> None:
            nonlocal deferred_bytes
            deferred.append((rel, node, check))
            deferred_bytes += int(node.get("size", 0) or 0)
            if len(deferred) >= batch_files or deferred_bytes >= FORKED_BATCH_BYTES:
                hand_over()
        os.makedirs(self.root, exist_ok=True)
        if processes <= 1:
            self.prefetch = self._start_prefetch()
        root_fd = os.open(self.root, _DIR)
        chain, links = DirChain(root_fd), DirChain(root_fd)

        # A fresh target with forked writers: the walk makes no directory and no file
        # whose content is written; each writer makes the directories of its files as it
        # goes (_mkdir_missing), the walk those of the entries it makes itself, and the
        # last pass over the directories any left (empty ones). The walk, which the writers
        # wait for, is then only the walk, and directories are made on every core.
        lazy = processes > 1 and self.fresh
        make = _mkdir_missing  # a parent the plan did not list, or not made yet (lazy)

        try:
            if not self.inherit:
                try:
                    os.getxattr(root_fd, _ACLS[1])
                    self.inherit = True
                except OSError:
                    pass
            dirs: list[tuple[bytes, dict]] = []
            pending: set[Future] = set()
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
                try:
                    for rel, node in plan.entries:
                        self.cancel.check()
                        seen += 1
                        if running and seen % 64 == 0:
                            for batch in list(running):  # progress; an error ends it
                                self._drain_forked(batch, 0)
                                if batch.error is not None or not batch.open_ends:
                                    running.remove(batch)
                                    self._wait_forked(batch, running)
                        parent, _, name = rel.rpartition(b"/")
                        typ = node["type"]
                        if lazy:
                            if typ == "dir":
                                dirs.append((rel, node))
                                continue
                            if (typ == "file" and rel not in self.sources
                                    and rel not in plan.links):
                                defer(rel, node, _CREATE)
                                continue
                        pfd = chain.goto(parent, make)
                        if typ == "dir":
                            self._make_dir(pfd, name)
                            dirs.append((rel, node))
                            continue
                        first = plan.links.get(rel)
                        linked = first is not None and first in self.made
                        if (self.resume and typ == "file" and not linked
                                and self._keepable(pfd, name, rel, node)):
                            # maybe already there: checked where it would be written
                            if rel in self.sources:  # before its other names link to it
                                fd = self._keep_or_open(pfd, name, rel, node)
                                self.made.add(rel)
                                if fd is None:
                                    continue
                                if processes > 1:
                                    os.close(fd)
                                    defer(rel, node, _OPEN)
                                else:
                                    pending.add(pool.submit(self._write_file, fd, rel, node))
                            elif processes > 1:
                                defer(rel, node, _CHECK)
                            else:
                                pending.add(pool.submit(self._resume_write, os.dup(pfd),
                                                        name, rel, node))
                            if len(pending) >= workers * 4:
                                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                                for f in done:
                                    f.result()
                                self._progress()
                            continue
                        self._remove_existing(pfd, name)
                        if linked:
                            self._link(links, first, pfd, name)
                            if typ == "file":
                                with self._lock:
                                    self.files_done += 1
                            continue
                        if typ == "file" and processes > 1:
                            if rel in self.sources:  # other names link to it: made now
                                os.close(os.open(name, _NEW_FILE, 0o600, dir_fd=pfd))
                                defer(rel, node, _OPEN)
                            else:  # made by its writer
                                defer(rel, node, _CREATE)  # memory flat with the file count
                        elif typ == "file":
                            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
                            pending.add(pool.submit(self._write_file, fd, rel, node))
                            if len(pending) >= workers * 4:
                                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                                for f in done:
                                    f.result()
                                self._progress()
                        elif typ == "symlink":
                            os.symlink(link_target(node), name, dir_fd=pfd)
                            self._meta_at(pfd, name, rel, node)
                        elif typ == "fifo":
                            os.mkfifo(name, 0o600, dir_fd=pfd)
                            self._meta_at(pfd, name, rel, node)
                        elif typ in ("chardev", "blockdev") and self.no_devices:
                            self._warn(f"device {os.fsdecode(rel)}: skipped: {_UNTRUSTED}; "
                                       "--allow-devices restores device nodes")
                            continue
                        elif typ in ("chardev", "blockdev") and self.is_root:
                            kind = stat.S_IFCHR if typ == "chardev" else stat.S_IFBLK
                            os.mknod(name, kind | 0o600, int(node.get("rdev", 0)), dir_fd=pfd)
                            self._meta_at(pfd, name, rel, node)
                        elif typ == "socket":  # the words dump uses too
                            self._warn(f"socket {os.fsdecode(rel)}: skipped (sockets cannot "
                                       "be restored)")
                            continue
                        else:
                            self._warn(f"{os.fsdecode(rel)}: {typ} not restored")
                            continue
                        if rel in self.sources:
                            self.made.add(rel)
                    for f in pending:
                        f.result()
                    hand_over()  # the last batch to the writers
                    while running:  # and every batch waited for
                        self._wait_forked(running[0], running[1:])
                        running.pop(0)
                except BaseException:
                    self.cancel.cancel()
                    for batch in running:
                        self._stop_forked(batch)
                    raise
            # directories last, children before parents (reversed pre-order), each through
            # its own descriptor
            for rel, node in reversed(dirs):
                parent, _, name = rel.rpartition(b"/")
                pfd = chain.goto(parent, make)
                if lazy:
                    _mkdir_missing(pfd, name)
                fd = os.open(name, _DIR, dir_fd=pfd)
                try:
                    self._meta_fd(fd, rel, node)
                finally:
                    os.close(fd)
        finally:
            chain.close()
            links.close()
            os.close(root_fd)
            if self.prefetch is not None:
                self.prefetch.close()
                self.prefetch = None
        self._progress(final=True)

    def _start_forked(self, root_fd: int, files: list[tuple[bytes, dict, int]],
                      processes: int) -> _Batch:
        """Fork ``processes`` writers for the files' content and metadata (shares of about
        equal bytes, in repository order: ``_shares``); each reports its progress,
        warnings or error as JSON lines on a pipe (read by ``_drain_forked``). A file marked
        _CHECK (resume) is checked first: kept when its content is already the snapshot's,
        else made again and written."""
        import selectors

        batch = _Batch(len(files), selectors.DefaultSelector())
        batch.root_fd = root_fd
        whole: list[tuple[bytes, dict, int]] = []
        parts: list[list[tuple[bytes, dict, int]]] = []
        for item in files:
            cut = self._split(item, processes)
            if cut:
                parts.append(cut)
                batch.split.append((item[0], item[1]))
            else:
                whole.append(item)
        shares = self._shares(whole, processes)
        for cut in parts:  # part k of each file split to writer k, first
            for k, part in enumerate(cut):
                shares[k].insert(0, part)
        try:
            for share in shares:
                if not share:
                    continue
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    os.close(r)
                    self._child(root_fd, share, w)
                os.close(w)
                batch.children[r] = pid
                batch.open_ends.add(r)
                batch.done[r] = (0, 0, 0, 0)
                batch.buffers[r] = b""
                batch.sel.register(r, selectors.EVENT_READ)
        except BaseException:
            self._stop_forked(batch)
            raise
        return batch

    def _drain_forked(self, batch: _Batch, timeout: float) -> None:
        """Read what the writers reported (waiting up to ``timeout`` for a first line):
        their progress is added to this restore's counters, an error is kept."""
        import json

        events = batch.sel.select(timeout=timeout)
        for key, _ in events:
            r = key.fd
            chunk = os.read(r, 65536)
            if not chunk:
                batch.sel.unregister(r)
                batch.open_ends.discard(r)
                continue
            batch.buffers[r] += chunk
            *lines, batch.buffers[r] = batch.buffers[r].split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "error" in msg:
                    batch.error = batch.error or msg
                    continue
                now = (msg["bytes"], msg["files"], msg["skipped_files"],
                       msg["skipped_bytes"])
                before, batch.done[r] = batch.done[r], now
                with self._lock:
                    self.bytes_done += now[0] - before[0]
                    self.files_done += now[1] - before[1]
                    self.skipped_files += now[2] - before[2]
                    self.skipped_bytes += now[3] - before[3]
                    self.warnings.extend(msg["warnings"])
        if events:
            self._progress()

    def _wait_forked(self, batch: _Batch, others: list[_Batch] | tuple = ()) -> None:
        """Until the writers of ``batch`` are done; raises the error one reported, or a
        cancel (which kills them). What the writers of ``others`` (batches still being
        written) report is read meanwhile too, so none waits on a full pipe."""
        try:
            while batch.open_ends and batch.error is None and not self.cancel.cancelled:
                self._drain_forked(batch, 0.05 if others else 0.2)
                for other in others:
                    self._drain_forked(other, 0)
        finally:
            self._stop_forked(batch)
        self.cancel.check()
        error = batch.error
        if error is not None:
            if error["kind"] == "IntegrityError":
                raise IntegrityError(error["error"], error.get("object", ""))
            if error["kind"] == "OSError":
                raise OSError(error.get("errno") or 0, error["error"])
            raise EngineError(error["error"])
        if sum(d[1] for d in batch.done.values()) != batch.files:
            raise EngineError(f"restore into {self.plan.target}: a writer process ended "
                              "before its files were written")
        self._finish_split(batch)

    @staticmethod
    def _stop_forked(batch: _Batch) -> None:
        """Kill the writers still writing (a cancel, an error), reap them all."""
        import signal

        for r, pid in batch.children.items():
            if r in batch.open_ends:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                os.close(r)
        batch.children.clear()
        batch.open_ends.clear()
        batch.sel.close()

    def _split(self, item: tuple[bytes, dict, int],
               processes: int) -> list[tuple[bytes, dict, int]] | None:
        """A new file of at least _SPLIT_BYTES cut into ``processes`` parts of consecutive
        blocks, each written by its own writer at its offset (a cluster's 1 GB table file
        is otherwise one writer's work while the others idle). Only a file whose blocks
        all have one size but the last (``size`` says so, its first and last blocks give
        the sizes), so every part's offset is known without reading its blocks; a writer
        checks that its part came out exactly that long (a crafted snapshot whose blocks
        differ fails the restore, never writes a wrong file). None: written whole."""
        rel, node, check = item
        size = int(node.get("size", 0) or 0)
        content = node.get("content") or []
        n = len(content)
        if (check != _CREATE or size < _SPLIT_BYTES or n < 4 * processes or node_holes(node)
                or rel in self.sources or rel in self.plan.links):
            return None
        deltas = node_deltas(node, os.fsdecode(rel)) if DELTA_KEY in node else {}

        def length(i: int) -> int:
            bid = deltas[i][1] if i in deltas else content[i]
            e = self.repo.index.get(bid) if isinstance(bid, str) else None
            return e.raw_length if e is not None else -1

        block, last = length(0), length(n - 1)
        if block <= 0 or not 0 < last <= block or size != block * (n - 1) + last:
            return None
        cuts = [n * k // processes for k in range(processes + 1)]
        out = []
        for k in range(processes):
            a, b = cuts[k], cuts[k + 1]
            part = {**node, "content": content[a:b], "size": (b - a) * block if b < n
                    else size - a * block}
            part.pop(DELTA_KEY, None)
            mine = [[i - a, *deltas[i]] for i in range(a, b) if i in deltas]
            if mine:
                part[DELTA_KEY] = mine
            part["_part"] = (a * block, k == 0)
            out.append((rel, part, _PART))
        return out

    def _write_content(self, fd: int, rel: bytes, node: dict) -> None:
        """A file's blocks from where ``fd`` stands: run by run, or a window at a time
        where some are stored as deltas."""
        if DELTA_KEY in node:
            self._write_deltas(fd, rel, node)
            return
        for run in self._runs(node.get("content", [])):
            datas = self._load_run(run)
            _write_all(fd, datas)
            with self._lock:
                self.bytes_done += sum(len(d) for d in datas)

    def _write_part(self, fd: int, rel: bytes, node: dict) -> None:
        """A writer's part of a file split by _split: its blocks at its offset, checked to
        be exactly the part's length; the file's metadata comes after every part
        (_finish_split), and its first part counts it."""
        offset, first = node["_part"]
        try:
            self.cancel.check()
            os.lseek(fd, offset, os.SEEK_SET)
            before = self.bytes_done
            self._write_content(fd, rel, node)
            if self.bytes_done - before != int(node["size"]):
                raise IntegrityError(
                    f"{os.fsdecode(rel)}: the blocks from offset {offset} add up to "
                    f"{self.bytes_done - before} bytes, not {node['size']}: its blocks are "
                    "not of one size (a damaged or crafted snapshot)", "")
        finally:
            os.close(fd)
        if first:
            self.files_done += 1

    def _finish_split(self, batch: _Batch) -> None:
        """The metadata of the files a batch wrote in parts, once every part is written."""
        if not batch.split:
            return
        chain = DirChain(batch.root_fd)
        for rel, node in batch.split:
            parent, _, name = rel.rpartition(b"/")
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=chain.goto(parent, _mkdir_missing))
            try:
                self._meta_fd(fd, rel, node)
            finally:
                os.close(fd)

    def _shares(self, files: list[tuple[bytes, dict, int]],
                processes: int) -> list[list[tuple[bytes, dict, int]]]:
        """The files in the order their content lies in the repository (pack, then offset
        of the first blob), cut into ``processes`` consecutive shares of about equal bytes:
        each writer then reads its packs front to back, so a cold page cache is filled by
        the kernel's read-ahead instead of a seek for every file."""
        get = self.repo.index.get

        def where(item: tuple[bytes, dict, int]) -> tuple[str, int]:
            content = item[1].get("content") or []
            if content and DELTA_KEY in item[1]:  # block 0 may be stored as a delta
                content = [next(stored_ids(item[1]), None)]
            entry = get(content[0]) if content and isinstance(content[0], str) else None
            return (entry.pack_id, entry.offset) if entry is not None else ("", 0)

        ordered = sorted(files, key=where)
        # a file's cost: its bytes and a block's worth for opening and its metadata
        sizes = [int(item[1].get("size", 0) or 0) + 4096 for item in ordered]
        total = sum(sizes)
        shares: list[list[tuple[bytes, dict, int]]] = [[] for _ in range(processes)]
        i, done = 0, 0
        for item, size in zip(ordered, sizes, strict=True):
            # the next share once this one has its part of the bytes (and files are left)
            while i < processes - 1 and done >= total * (i + 1) / processes:
                i += 1
            shares[i].append(item)
            done += size
        return shares

    def _child(self, root_fd: int, share: list[tuple[bytes, dict, int]], w: int) -> None:
        """A forked writer: its share of files, then exit. What it has done so far goes to
        the parent as a JSON line after a file once _REPORT_EVERY has passed since the
        last line (not after every one: thousands of small files would cost as many
        lines, wake-ups of the parent and parses there), and after its last file."""
        import json
        import time

        code = 0
        try:
            _writer_memory()
            self.bytes_done = self.files_done = self.skipped_files = self.skipped_bytes = 0
            self.warnings = []
            chain = DirChain(root_fd)
            last = len(share) - 1
            reported = time.monotonic()
            for i, (rel, node, check) in enumerate(share):
                parent, _, name = rel.rpartition(b"/")
                pfd = chain.goto(parent, _mkdir_missing)
                if check == _CHECK:  # resume: kept (None), or made again
                    fd = self._keep_or_open(pfd, name, rel, node)
                elif check == _CREATE:
                    fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
                elif check == _PART:  # made by whichever part comes first, never truncated
                    self._write_part(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                                             | os.O_CLOEXEC, 0o600, dir_fd=pfd), rel, node)
                    fd = None
                else:
                    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                if fd is not None:
                    self._write_file(fd, rel, node)
                now = time.monotonic()
                if i < last and now - reported < _REPORT_EVERY:
                    continue
                reported = now
                line = {"bytes": self.bytes_done, "files": self.files_done,
                        "skipped_files": self.skipped_files,
                        "skipped_bytes": self.skipped_bytes, "warnings": self.warnings}
                self.warnings = []
                _write_all(w, [json.dumps(line).encode() + b"\n"])
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            code = 1
            kind = ("IntegrityError" if isinstance(e, IntegrityError)
                    else "OSError" if isinstance(e, OSError) else "EngineError")
            text = str(e) if isinstance(e, EngineError) else (
                e.strerror or str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}")
            msg = {"error": text, "kind": kind, "object": getattr(e, "object_name", ""),
                   "errno": getattr(e, "errno", None)}
            with contextlib.suppress(Exception):
                _write_all(w, [json.dumps(msg).encode() + b"\n"])
        finally:
            os._exit(code)

    def _progress(self, final: bool = False) -> None:
        self.on_event(
            Event(
                self.job_id,
                "restore",
                bytes_done=self.bytes_done,
                bytes_total=self.plan.bytes,
                items_done=self.files_done,
                items_total=self.plan.files,
                message=str(self.plan.target),
                final=final,
            )
        )


class _Segment:
    __slots__ = ("name", "start", "end", "pos", "uses", "future", "done")

    def __init__(self, name: str, start: int, end: int, pos: int):
        self.name, self.start, self.end, self.pos = name, start, end, pos
        self.uses = 0  # runs still to be taken from it
        self.future: Future | None = None  # its read, once started
        self.done = False  # every run taken (or the restore ended): nothing more to read


class _Prefetch:
    """Reads the runs of a restore ahead from a remote backend, a segment (a range of
    one pack covering several runs) per request, several requests at once, in the
    order the restore writes, with at most _AHEAD_BYTES read and not yet taken.

    ``add`` each run in the restore's order, ``start``, then ``take`` each run's bytes
    (None: read it yourself). A run whose segment is not read yet (the budget is spent
    on earlier segments), or whose read failed, gives None: the restore reads that run
    alone, as it would without read-ahead, so a failure is reported as it was and
    nothing ever waits for a read that is not under way."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.segments: list[_Segment] = []
        self.open: dict[str, _Segment] = {}  # pack -> its segment runs may still join
        self.runs: dict[tuple[str, int, int], list[_Segment]] = {}  # run -> its segments
        self.pos = 0  # bytes of the runs added so far
        self.next = 0  # the next segment to read
        self.held = 0  # bytes of the segments read or being read, not yet all taken
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.closed = False

    def add(self, pack_id: str, offset: int, length: int) -> None:
        end = offset + length
        seg = self.open.get(pack_id)
        if (seg is None or self.pos - seg.pos > _SEG_SPAN
                or offset > seg.end + _SEG_GAP or end < seg.start - _SEG_GAP
                or max(end, seg.end) - min(offset, seg.start) > _SEG_BYTES):
            seg = _Segment(pack_name(pack_id), offset, end, self.pos)
            self.segments.append(seg)
            self.open[pack_id] = seg
        else:
            seg.start, seg.end = min(offset, seg.start), max(end, seg.end)
        seg.uses += 1
        self.runs.setdefault((pack_id, offset, length), []).append(seg)
        self.pos += length

    def start(self) -> None:
        self.open.clear()
        if self.segments:
            self.pool = ThreadPoolExecutor(max_workers=_FETCHERS, thread_name_prefix="prefetch")
            with self.lock:
                self._pump()

    def _pump(self) -> None:
        """Start the reads of the next segments while they fit the budget (lock held)."""
        while self.next < len(self.segments) and not self.closed:
            seg = self.segments[self.next]
            if seg.done:
                self.next += 1
                continue
            size = seg.end - seg.start
            if self.held and self.held + size > _AHEAD_BYTES:
                return
            self.held += size
            seg.future = self.pool.submit(self.backend.get_range, seg.name, seg.start, size)
            self.next += 1

    def take(self, pack_id: str, offset: int, length: int) -> bytes | memoryview | None:
        """The bytes of one run, or None when the caller is to read them itself."""
        with self.lock:
            segs = self.runs.get((pack_id, offset, length))
            if not segs:
                return None
            seg = segs.pop(0)
            future = seg.future
        data = None
        if future is not None:
            try:
                whole = future.result()
            except Exception:  # noqa: BLE001 - read again alone, which reports it
                whole = None
            if whole is not None and len(whole) >= offset - seg.start + length:
                data = memoryview(whole)[offset - seg.start:offset - seg.start + length]
        with self.lock:
            seg.uses -= 1
            if seg.uses == 0 and not seg.done:
                seg.done = True
                if seg.future is not None:
                    seg.future = None
                    self.held -= seg.end - seg.start
                    self._pump()
        return data

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for seg in self.segments:
                seg.future = None
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _mkdir_missing(pfd: int, name: bytes) -> None:
    """A directory made (as the walk makes one: 0700 until its metadata is set last),
    unless it was made meanwhile (by another writer, or the walk)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=pfd)


def _writer_memory() -> None:
    """A forked writer's memory: what the parent left is never scanned by its collector
    (nor its pages copied by the scan), and its megabyte-sized buffers (a run read, each
    blob decrypted and decompressed) come from the heap and stay there when freed, for
    the next run, instead of a fresh mapping each and a page fault for every 4 KiB of it
    (0.3 million faults for a 1 GiB restore)."""
    import gc

    from engine.memory import keep_freed

    gc.freeze()
    keep_freed(_WRITER_MMAP_THRESHOLD, _WRITER_TRIM_THRESHOLD)


def _write_all(fd: int, datas: list[bytes | memoryview]) -> None:
    """All of ``datas`` written at the file position, with as few writev calls as can."""
    views = [memoryview(d) for d in datas if d]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _incomplete_warnings(plan: RestorePlan) -> list[str]:
    """What the snapshot's backup could not store, path by path, as far as this restore
    is concerned: "not read at all", "read up to N bytes", ..."""
    snap = plan.snapshot
    total = int(snap.get("errors_total", 0) or 0)
    errors = [e for e in snap.get("errors") or [] if isinstance(e, dict)]
    sels = [p for p, _ in plan.selections]

    def concerned(path: object) -> bool:
        rel = os.fsencode(str(path)).lstrip(b"/")
        return any(not s or rel == s or rel.startswith(s + b"/") or s.startswith(rel + b"/")
                   for s in sels)

    shown = [e for e in errors if concerned(e.get("path", ""))]
    head = (f"snapshot {snap['id'][:8]} is incomplete: {total} path(s) could not be fully "
            "backed up then (see 'backup-tui show')")
    if any(sels):
        head += f"; {len(shown)} of them in what is restored"
    out = [head]
    for e in shown:
        error = str(e.get("error", ""))
        stored = e.get("stored")
        if not isinstance(stored, str):  # a snapshot of an older version
            stored = "" if "stored the" in error else "not read at all"
        out.append(f"{e.get('path')}: {stored} ({error})" if stored
                   else f"{e.get('path')}: {error}")
    if total > len(errors):
        out.append(f"... and {total - len(errors)} more not listed in the snapshot")
    return out


def execute_restore(
    repo: Repository,
    plan: RestorePlan,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
    processes: int = 1,
) -> RestoreResult:
    """``processes`` > 1: forked writers (_Restorer.run), for the local repository only
    (a forked child must not share an S3 client's connections)."""
    from engine.storage.local import LocalBackend

    if not isinstance(repo.backend, LocalBackend):
        processes = 1
    _check_target(plan.target, plan.force or plan.resume)
    r = _Restorer(repo, plan, job_id, on_event, cancel or CancelToken())
    try:
        r.run(processes=processes)
    except OSError as e:
        raise EngineError(f"restore into {plan.target} failed: {e}") from None
    if plan.snapshot.get("incomplete"):
        r.warnings[:0] = _incomplete_warnings(plan)
    return RestoreResult(plan.snapshot["id"], str(plan.target), r.files_done, r.bytes_done,
                         r.warnings, r.skipped_files, r.skipped_bytes)
