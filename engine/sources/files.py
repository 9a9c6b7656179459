"""The files source: walk a fileset's paths into tree blobs.

The snapshot's root tree mirrors the absolute paths (``/srv/app`` is stored as
``srv`` -> ``app``), like tar and restic, so several paths never collide.
Unchanged files (same type, size, mtime, ctime and inode as in the parent
snapshot) reuse the parent's content list without being read. Files that
cannot be read, vanish, or change while read are listed in ``errors``; the
backup goes on with the rest and the snapshot says it is incomplete; each
error entry says what was stored of its path (``stored``: "not read at all",
"read up to N bytes", ...; ``read``: the bytes stored of a file read in part).

Besides content and the usual metadata, a node keeps (docs/FORMAT.md, 5.1)
hard links (``links``, ``dev``), extended attributes with POSIX ACLs
(``xattrs``) and the holes of sparse files (``holes``: found with
SEEK_DATA/SEEK_HOLE, stored as zero blobs, never read). The walk is iterative
and works on directory descriptors (`DirChain`): every entry is listed, stat'ed,
opened or read by name in its open parent, so neither depth (up to
``MAX_DEPTH``, which restore accepts too) nor paths longer than PATH_MAX stop it.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import itertools
import operator
import os
import pwd
import resource
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyfastcdc

from engine.errors import EngineError
from engine.events import CancelToken
from engine.memory import tune_malloc
from engine.repo import codec
from engine.repo.repository import DATA, TREE, BlobWriter, Repository
from engine.repo.tree import MAX_DEPTH, encode_tree, encode_xattrs, name_fields, node_name
from engine.sources.readers import (
    ReaderPool,
    _Range,
    find_holes,
    one_chunk,
    read_error,
    reader_processes,
)

if TYPE_CHECKING:
    from engine.sources.fileset import FilesetConfig

READERS = 2  # reader threads per backup
# threads listing directories ahead of the walk (0: list in the walk itself); one: a
# second only took the GIL from the walk more often (cold no-change bench: more CPU)
LISTERS = 1
PENDING_DIRS = 64  # walked directories waiting for their files' readers, at most
PENDING_NODES = 8192  # and the entries they hold (memory: not the whole tree's)
LIST_AHEAD = 8  # subdirectories of the current directory listed ahead by the listers
PREFETCH_PATH_MAX = 3072  # deeper paths are listed by the walk itself (no path look-up)
# Listing ahead pays while listings wait for the disk; with the metadata cached the lister
# threads only take the GIL from the walk (on the 1 GiB bench tree, 10k directories, a
# warm no-change backup used about a quarter less CPU listing in the walk itself). So
# the listers stop once LIST_QUIET listings in a row read nothing from the disk (the
# thread's ru_inblock), and start again when a listing the walk makes itself reads from
# the disk or waits more than LIST_SLOW seconds beyond its CPU time (a network file
# system: no block reads).
LIST_QUIET = 64
LIST_SLOW = 0.002
LIST_PROBE = 8  # with the listers stopped, one listing in this many is measured (the calls
# that measure it cost ~5% of a warm no-change walk)
# A process of its own (engine/sources/warm.py) reads the directories up to WARM_AHEAD
# ahead of the walk into the kernel's caches, several at a time, while the walk waits
# for one at a time (0: none); the walk tells it how far it got every WARM_EVERY.
WARM_AHEAD = 1024
WARM_EVERY = 128
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)

_first = operator.itemgetter(0)
S_ISDIR = stat.S_ISDIR
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ = 1024 * 1024
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)
_HAS_PROC_FD = os.path.isdir("/proc/self/fd")
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def entry_path(dir_fd: int, name: bytes, full: bytes) -> bytes:
    """A short path to ``name`` in the open directory ``dir_fd``, for the calls that take no
    ``dir_fd`` (the xattr calls): ``/proc/self/fd/N/name``, whose last component is not
    followed when the call does not follow symlinks. Without /proc: the full path."""
    if _HAS_PROC_FD:
        return b"/proc/self/fd/%d/%s" % (dir_fd, name)
    return full


def child_path(path: bytes, name: bytes) -> bytes:
    """``os.path.join(path, name)`` for an absolute directory path and one name (no
    ``/`` in it), without its checks: the walk makes one per entry."""
    return path + name if path[-1:] == b"/" else path + b"/" + name


def read_xattrs(target: int | bytes) -> list[list[str]] | OSError:
    """Extended attributes (POSIX ACLs among them) of an open fd or a path (not followed)
    as stored in a node: ``[[name_b64, value_b64], ...]``; [] when there are none or the
    file system has none; the error when they cannot be read."""
    kw = {} if isinstance(target, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(target, **kw)
        if not names:
            return []
        pairs = []
        for n in names:
            raw = os.fsencode(n)
            try:
                pairs.append((raw, os.getxattr(target, raw, **kw)))
            except OSError as e:
                if e.errno != errno.ENODATA:  # removed since listed
                    raise
    except OSError as e:
        return [] if e.errno in _NO_XATTRS else e
    return encode_xattrs(pairs)


Listing = list[tuple[bytes, "os.stat_result | OSError", "list[list[str]] | OSError"]]


def list_dir(fd: int, where: bytes) -> Listing:
    """An open directory's entries, sorted by name, each with its lstat and its extended
    attributes (or the error of either)."""
    names = [n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(fd)]  # os.fsencode
    names.sort()
    out: Listing = []
    append = out.append
    lstat = os.stat
    via = b"/proc/self/fd/%d/" % fd if _HAS_PROC_FD else None
    for name in names:
        try:
            st = lstat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as err:
            append((name, err, []))
            continue
        append((name, st, read_xattrs(via + name if via is not None
                                      else child_path(where, name))))
    return out


def _blocks_read() -> int:
    """Blocks this thread has read from disks so far (-1: not known here)."""
    if _RUSAGE_THREAD is None:
        return -1
    return resource.getrusage(_RUSAGE_THREAD).ru_inblock


def _list_path(path: bytes) -> tuple[tuple[int, int], Listing, int]:
    """A lister thread's look-ahead: (dev, inode) of the directory at path, its listing,
    and the number of blocks read from the disk for it (-1: not known). The walk uses the
    listing only when the directory it opens itself is the same one."""
    b0 = _blocks_read()
    fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        listing = list_dir(fd, path)
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino), listing, _blocks_read() - b0 if b0 >= 0 else -1


class DirChain:
    """Open directories from a base down to the current one, each opened by name in its
    parent (so paths longer than PATH_MAX work) and never through a symlink unless asked.

    At most ``keep`` are held open: on a deeper chain the upper ones are closed and, on
    the way back up, reopened through ``..`` of the child and checked to be the same
    directory (device and inode), so depth costs no file descriptors."""

    def __init__(self, base_fd: int, keep: int = 64):
        self.base_fd = base_fd
        self.keep = keep
        self.rel = b""  # the current directory's path below the base
        self.fds: list[int] = []  # -1: closed for now
        self.ids: list[tuple[int, int]] = []

    def fd(self) -> int:
        return self.fds[-1] if self.fds else self.base_fd

    def push(self, name: bytes, follow: bool = False) -> os.stat_result:
        """Open ``name`` in the current directory and make it the current one."""
        fd = os.open(name, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=self.fd())
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self.rel = self.rel + b"/" + name if self.fds else name
        self.fds.append(fd)
        self.ids.append((st.st_dev, st.st_ino))
        i = len(self.fds) - 1 - self.keep
        if i >= 0 and self.fds[i] >= 0:
            os.close(self.fds[i])
            self.fds[i] = -1
        return st

    def pop(self) -> None:
        fd = self.fds.pop()
        self.ids.pop()
        self.rel = self.rel.rpartition(b"/")[0] if self.fds else b""
        try:
            if self.fds and self.fds[-1] < 0:
                up = os.open(b"..", _DIR_FLAGS, dir_fd=fd)
                st = os.fstat(up)
                if (st.st_dev, st.st_ino) != self.ids[-1]:
                    os.close(up)
                    raise OSError(errno.ESTALE, "directory moved during the walk",
                                  os.fsdecode(self.rel))
                self.fds[-1] = up
        finally:
            os.close(fd)

    def goto(self, rel: bytes, make=None) -> int:
        """Make ``rel`` (a path of names below the base, b"" for the base) the current
        directory; returns its fd. A missing directory on the way is made by
        ``make(parent_fd, name)`` if given. Up to the common ancestor, then down: a walk
        in tree order costs one push or pop per step, whatever the depth."""
        while self.fds and rel != self.rel and not rel.startswith(self.rel + b"/"):
            self.pop()
        if rel != self.rel:
            for name in (rel[len(self.rel) + 1:] if self.fds else rel).split(b"/"):
                try:
                    self.push(name)
                except FileNotFoundError:
                    if make is None:
                        raise
                    make(self.fd(), name)
                    self.push(name)
        return self.fd()

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)
        self.fds.clear()
        self.ids.clear()
        self.rel = b""


class Excluder:
    """Exclude patterns: ``*.tmp`` matches a name anywhere, ``cache/`` only
    directories, a pattern with ``/`` inside matches the absolute path."""

    def __init__(self, patterns: tuple[str, ...]):
        self.names: list[tuple[str, bool]] = []
        self.paths: list[tuple[str, bool]] = []
        for p in patterns:
            dir_only = p.endswith("/")
            p = p.rstrip("/")
            (self.paths if "/" in p else self.names).append((p, dir_only))

    def excluded(self, path: bytes, name: bytes, is_dir: bool) -> bool:
        if not self.names and not self.paths:
            return False
        n = os.fsdecode(name)
        for pat, dir_only in self.names:
            if (is_dir or not dir_only) and fnmatch.fnmatchcase(n, pat):
                return True
        if self.paths:
            full = os.fsdecode(path)
            for pat, dir_only in self.paths:
                if (is_dir or not dir_only) and (
                    fnmatch.fnmatchcase(full, pat) or fnmatch.fnmatchcase(full, "*/" + pat)
                ):
                    return True
        return False


@dataclass
class FilesStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0  # size of the source
    unchanged_files: int = 0
    bytes_read: int = 0
    errors: list[dict] = field(default_factory=list)
    # bytes read so far of each file being read (by reader thread), for smooth progress
    inflight: dict[int, int] = field(default_factory=dict)
    # bytes reader processes read of files not yet done (engine/sources/readers.py)
    in_readers: int = 0

    @property
    def partial(self) -> int:
        return sum(self.inflight.values()) + max(0, self.in_readers)


def scan(fileset: FilesetConfig, cancel: CancelToken | None = None) -> tuple[int, int]:
    """Count files and bytes to back up, for progress totals. Errors are ignored here."""
    ex = Excluder(fileset.exclude)
    files = total = 0
    stack = [os.fsencode(p) for p in fileset.paths]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            files += 1
            total += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            if cancel:
                cancel.check()
            try:
                with os.scandir(path) as it:
                    for e in it:
                        try:
                            is_dir = e.is_dir(follow_symlinks=False)
                        except OSError:
                            continue
                        if not ex.excluded(e.path, e.name, is_dir):
                            stack.append(e.path)
            except OSError:
                continue
    return files, total


class _Names:
    """Cached uid/gid -> name lookups."""

    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = ""
        return self.users[uid]

    def group(self, gid: int) -> str:
        if gid not in self.groups:
            try:
                self.groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self.groups[gid] = ""
        return self.groups[gid]


def _type_of(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


Progress = Callable[[FilesStats, str], None]



@dataclass
class _Frame:
    """A directory being walked: its entries so far and its subdirectories still to walk."""

    path: bytes  # absolute path, for messages and excludes
    depth: int  # 0 for "/", the depth of its tree in the snapshot
    node: dict | None  # its node in the parent's tree (None for the root)
    parent: dict[bytes, dict]  # the parent snapshot's nodes of this directory
    parent_tree: str | None  # their tree, None if none or it could not be loaded
    # (name, its node, or a file being read whose node comes later), in no particular order
    nodes: list = field(default_factory=list)
    # (name, lstat, xattrs or None, parent snapshot's node, trie of configured paths or None)
    subdirs: deque = field(default_factory=deque)
    listed: int = 0  # the first subdirs already handed to the listers (_list_ahead)


@dataclass
class _InReader:
    """A file handed to a reader process: its node, completed when the reader is done."""

    node: dict
    path: bytes
    future: Future


class FilesBackup:
    def __init__(
        self,
        repo: Repository,
        writer: BlobWriter,
        fileset: FilesetConfig,
        parent_tree: str | None,
        progress: Progress,
        cancel: CancelToken | None = None,
        readers: int | None = None,
        processes: int | None = None,
    ):
        self.repo = repo
        self.writer = writer
        self.fileset = fileset
        self.parent_tree = parent_tree
        self.progress = progress
        self.cancel = cancel or CancelToken()
        self.ex = Excluder(fileset.exclude)
        self.names = _Names()
        self.stats = FilesStats()
        self.min_chunk, self._avg, self._max, self._seed = repo.chunker_params()
        self._local = threading.local()
        self._lock = threading.RLock()  # stats, errors, progress: shared with reader threads
        self.readers = readers or READERS
        # reader processes (engine/sources/readers.py): started at the first file to read
        self.processes = reader_processes(repo) if processes is None else processes
        self._procs: ReaderPool | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lister: ThreadPoolExecutor | None = None
        self._listings: dict[bytes, Future] = {}  # directory -> its listing, made ahead
        self._ahead_on = True  # list ahead (see LIST_QUIET)
        self._quiet = 0  # listings in a row that read nothing from the disk
        self._unprobed = 0  # listings made by the walk, not measured, since the last one
        self._last_progress = 0.0
        self._root_dev: int | None = None
        self._chain: DirChain | None = None
        self._zero_ids: dict[int, str] = {}  # length -> id of the blob of that many zeros
        self._empty_tree: str | None = None
        self._waiting = 0  # entries of walked directories whose trees are not written yet
        self._warm: subprocess.Popen | None = None  # engine/sources/warm.py

    @property
    def cdc(self) -> pyfastcdc.FastCDC:
        """One chunker per reader thread (a FastCDC object is not thread-safe)."""
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = pyfastcdc.FastCDC(
                self._avg, min_size=self.min_chunk, max_size=self._max, seed=self._seed)
        return cdc

    # ------------------------------------------------------------------ helpers
    def _tick(self, path: bytes, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress > 0.1:
            with self._lock:
                self._last_progress = now
                self.progress(self.stats, os.fsdecode(path))

    def _error(self, path: bytes, message: str, read: int | None = None,
               stored: str | None = None) -> None:
        """An error entry of the snapshot, saying what was stored of the path: ``stored``
        in words ("not read at all", "read up to N bytes", ...) and ``read``, the number
        of content bytes stored, for a file stored in part."""
        entry: dict = {"path": os.fsdecode(path), "error": message}
        if read is not None:
            entry["read"] = read
        entry["stored"] = stored or (
            "not read at all" if read is None else f"read up to {read} bytes")
        with self._lock:
            self.stats.errors.append(entry)

    def _xattrs(self, path: bytes, xattrs: list | OSError | None) -> list:
        if isinstance(xattrs, OSError):
            if not isinstance(xattrs, FileNotFoundError):  # vanished: reported where it matters
                self._error(path, f"cannot read extended attributes: {xattrs.strerror}",
                            stored="stored without its extended attributes")
            return []
        return xattrs or []

    def _meta(self, name: bytes, st: os.stat_result, typ: str, xattrs: list) -> dict:
        node = name_fields("name", name)
        node.update(
            type=typ,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=self.names.user(st.st_uid),
            group=self.names.group(st.st_gid),
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
            size=st.st_size if typ == "file" else 0,
        )
        if typ != "dir" and st.st_nlink > 1:  # a hard link: same dev and inode, one file
            node["links"] = st.st_nlink
            node["dev"] = st.st_dev
        if xattrs:
            node["xattrs"] = xattrs
        return node

    def _parent_children(self, tree_id: str | None) -> dict[bytes, dict] | None:
        """The parent snapshot's nodes of a directory by name; None when it has no tree
        there or the tree cannot be read (a damaged parent only costs re-reading)."""
        if not tree_id:
            return None
        try:
            tree = self.repo.load_tree(tree_id)
            return {node_name(n): n for n in tree["nodes"]}
        except EngineError:
            return None

    def _empty(self) -> str:
        if self._empty_tree is None:
            self._empty_tree = self.writer.save(TREE, encode_tree([]))
        return self._empty_tree

    # ------------------------------------------------------------------- walk
    def run(self) -> str:
        """Back up all paths; returns the root tree id.

        Files are read by a few reader threads (I/O overlaps, which matters on cold
        caches and network disks) while this thread walks; a directory's tree is
        written once all its files are in. Reader threads share the BlobWriter.
        The walk is iterative and works on directory file descriptors (every entry is
        opened or looked at by name in its open parent), so neither depth nor paths
        longer than PATH_MAX stop it."""
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="read")
        self._lister = (ThreadPoolExecutor(LISTERS, thread_name_prefix="list")
                        if LISTERS else None)
        root_fd = os.open(b"/", _DIR_FLAGS)
        self._chain = DirChain(root_fd)
        self._warm = self._start_warm()
        ok = False
        try:
            tree = self._run()
            if self._procs is not None:
                self._procs.finish()  # their last packs, before the skeleton's commit
            ok = True
            return tree
        except BaseException:
            self.cancel.cancel()
            raise
        finally:
            self._stop_warm()
            if self._procs is not None:
                self._procs.close(kill=not ok)
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._lister is not None:
                self._lister.shutdown(wait=True, cancel_futures=True)
            self._chain.close()
            os.close(root_fd)

    def _start_warm(self) -> subprocess.Popen | None:
        """The process reading directories ahead of the walk (engine/sources/warm.py);
        None if none (WARM_AHEAD 0, or it could not be started: it is only a help)."""
        if not WARM_AHEAD:
            return None
        args = [sys.executable, "-I", "-S", os.path.join(os.path.dirname(__file__), "warm.py"),
                str(os.getpid()), str(WARM_AHEAD), "1" if self.fileset.one_file_system else "0",
                *(os.path.normpath(p) for p in self.fileset.paths)]
        if self.fileset.exclude:
            args += ["--", *self.fileset.exclude]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd="/")
        except OSError:
            return None
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)  # a full pipe never stops the walk
        return proc

    def _tell_warm(self) -> None:
        """Tell the warm process how many directories the walk has walked."""
        assert self._warm is not None and self._warm.stdin is not None
        try:
            os.write(self._warm.stdin.fileno(), b"%d\n" % self.stats.dirs)
        except OSError:  # it has ended (all read, or the cache was warm): no more news
            self._stop_warm()

    def _stop_warm(self) -> None:
        proc, self._warm = self._warm, None
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=10)  # a read stuck on a hung network mount: not the backup's end
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _run(self) -> str:
        assert self._chain is not None
        trie: dict = {}
        for p in self.fileset.paths:
            parts = [c for c in os.fsencode(os.path.normpath(p)).split(b"/") if c]
            if not os.path.lexists(p):
                raise EngineError(f"fileset {self.fileset.name!r}: path {p} does not exist")
            node = trie
            for c in parts:
                node = node.setdefault(c, {})
            node[None] = True  # marks a configured path: everything below is taken
        if None in trie:  # "/" itself
            self.stats.dirs += 1
            root = self._frame(b"/", 0, None, self.parent_tree, None,
                               self._listing(b"/", self._chain.fd(), None, None))
        else:
            root = self._frame(b"/", 0, None, self.parent_tree, trie)
        stack = [root]
        # Walked directories whose trees are still to write, children before parents. With
        # reader processes the walk goes on while their files are read, and a tree is
        # written once its files are in (the parent's node gets its subtree id then,
        # before the parent's own turn).
        done: deque[_Frame] = deque()
        while True:
            f = stack[-1]
            if f.subdirs:
                child = self._descend(f, *f.subdirs.popleft())
                if child is not None:
                    stack.append(child)
                continue
            stack.pop()
            done.append(f)
            self._waiting += len(f.nodes)
            if not stack:
                return self._finish_done(done, until_empty=True)
            self._chain.pop()
            assert f.node is not None
            stack[-1].nodes.append((f.path.rpartition(b"/")[2], f.node))
            self._finish_done(done)

    def _finish_done(self, done: deque[_Frame], until_empty: bool = False) -> str:
        """Write the trees of walked directories at the head of ``done`` whose files are all
        read; wait for the head while more than PENDING_DIRS wait, or more than PENDING_NODES
        entries (or ``until_empty``).
        Returns the last tree id written."""
        tree_id = ""
        while done:
            head = done[0]
            if not (until_empty or len(done) > PENDING_DIRS or self._waiting > PENDING_NODES
                    or self._files_in(head)):
                break
            done.popleft()
            self._waiting -= len(head.nodes)
            tree_id = self._finish(head)
            if head.node is not None:
                head.node["subtree"] = tree_id
        return tree_id

    @staticmethod
    def _files_in(f: _Frame) -> bool:
        """Whether every file of f is read (its tree can be written without waiting)."""
        return all(not isinstance(n, _InReader) or n.future.done() for _, n in f.nodes)

    def _frame(self, path: bytes, depth: int, node: dict | None, parent_tree: str | None,
               trie: dict | None, listing: Listing | None = None) -> _Frame:
        """Start walking the current directory of the chain: read its files (in parallel)
        and queue its subdirectories. ``trie``: a directory on the way to configured
        paths, of which only the named children are taken; else ``listing`` is all."""
        self.cancel.check()
        assert self._chain is not None
        fd = self._chain.fd()
        parent = self._parent_children(parent_tree)
        # parent_tree: kept only if it could be loaded (so it is in the index, and _finish
        # may reuse it without asking)
        f = _Frame(path, depth, node, parent or {}, parent_tree if parent is not None else None)
        if trie is not None:
            for name in sorted(k for k in trie if k is not None):
                child = child_path(path, name)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    self._error(child, e.strerror or str(e))
                    continue
                prev = f.parent.get(name)
                sub = trie[name]
                if None not in sub:  # on the way: a directory, even through a symlink
                    f.subdirs.append((name, st, None, prev, sub))
                elif stat.S_ISDIR(st.st_mode):
                    f.subdirs.append((name, st, None, prev, None))
                else:
                    xattrs = read_xattrs(entry_path(fd, name, child))
                    f.nodes.append((name, self._entry(fd, name, child, st, xattrs, prev)))
            if not self.processes:
                f.nodes = self._resolve(f.nodes)
            return f
        # This directory's files first (read in parallel), then its subdirectories, so
        # the walk never runs far ahead of the readers; the subdirectories are listed
        # ahead by lister threads meanwhile.
        pre = path if path[-1:] == b"/" else path + b"/"
        parent = f.parent
        nodes, subdirs = f.nodes, f.subdirs
        excluded = self.ex.excluded if self.ex.names or self.ex.paths else None
        for name, est, xattrs in listing or ():
            epath = pre + name
            if isinstance(est, OSError):
                self._error(epath, "vanished during backup" if isinstance(
                    est, FileNotFoundError) else est.strerror or str(est))
                continue
            is_dir = S_ISDIR(est.st_mode)
            if excluded is not None and excluded(epath, name, is_dir):
                continue
            if is_dir:
                subdirs.append((name, est, xattrs, parent.get(name), None))
                continue
            nodes.append((name, self._entry(fd, name, epath, est, xattrs, parent.get(name))))
        if not self.processes:  # reader processes: the walk goes on, resolved at _finish
            f.nodes = self._resolve(f.nodes)
        self._list_ahead(f)
        return f

    def _list_ahead(self, f: _Frame) -> None:
        """Have the lister threads list the next LIST_AHEAD subdirectories of f (not all of
        them: a directory of many subdirectories would hold all their listings at once).
        ``f.listed`` of them, at the front, were handed over already."""
        if (self._lister is None or not self._ahead_on or f.listed >= LIST_AHEAD
                or f.listed >= len(f.subdirs)):
            return
        for name, _st, _x, _prev, trie in list(
                itertools.islice(f.subdirs, f.listed, LIST_AHEAD)):
            path = child_path(f.path, name)
            if trie is None and path not in self._listings and len(path) <= PREFETCH_PATH_MAX:
                self._listings[path] = self._lister.submit(_list_path, path)
        f.listed = min(LIST_AHEAD, len(f.subdirs))

    def _descend(self, f: _Frame, name: bytes, st: os.stat_result, xattrs, prev: dict | None,
                 trie: dict | None) -> _Frame | None:
        """Open a subdirectory of f (making it the chain's current one) and start it."""
        assert self._chain is not None
        path = child_path(f.path, name)
        ahead = self._listings.pop(path, None)
        if f.listed:
            f.listed -= 1  # this one was at the front of f.subdirs
        self._list_ahead(f)
        if f.depth + 1 > MAX_DEPTH:
            self._error(path, f"nested more than {MAX_DEPTH} directories deep (the limit "
                              "of a snapshot), not backed up")
            return None
        if trie is None and self.fileset.one_file_system and self._root_dev not in (
                None, st.st_dev):
            node = self._meta(name, st, "dir", self._xattrs(path, xattrs))
            node["subtree"] = self._empty()
            f.nodes.append((name, node))
            return None
        if trie is None and self._root_dev is None:
            self._root_dev = st.st_dev
        try:
            fst = self._chain.push(name, follow=trie is not None)
        except FileNotFoundError:
            self._error(path, "vanished during backup")
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._error(path, "replaced by a symlink during backup")
                return None
            if e.errno == errno.ENOTDIR:
                self._error(path, "not a directory" if trie is not None
                            else "replaced during backup")
                return None
            # could not be opened (permissions): kept as an empty directory
            self._error(path, f"cannot list directory: {e.strerror}",
                        stored="not read at all (an empty directory)")
            node = self._meta(name, st, "dir", self._xattrs(path, xattrs))
            node["subtree"] = self._empty()
            f.nodes.append((name, node))
            self.stats.dirs += 1
            return None
        fd = self._chain.fd()
        if xattrs is None:
            xattrs = read_xattrs(fd)
        node = self._meta(name, fst, "dir", self._xattrs(path, xattrs))
        self.stats.dirs += 1
        if self._warm is not None and not self.stats.dirs % WARM_EVERY:
            self._tell_warm()
        prev_tree = prev.get("subtree") if prev and prev.get("type") == "dir" else None
        if trie is not None:
            return self._frame(path, f.depth + 1, node, prev_tree, trie)
        return self._frame(path, f.depth + 1, node, prev_tree, None,
                           self._listing(path, fd, fst, ahead))

    def _listing(self, path: bytes, fd: int, st: os.stat_result | None,
                 ahead: Future | None) -> Listing:
        """The open directory's listing: the one made ahead if it is of this directory."""
        if ahead is not None and st is not None:
            try:
                ident, listing, blocks = ahead.result()
                self._listed(blocks != 0)
                if ident == (st.st_dev, st.st_ino):
                    return listing
            except OSError:
                pass
        try:
            if self._lister is None or (not self._ahead_on
                                        and self._unprobed < LIST_PROBE - 1):
                self._unprobed += 1
                return list_dir(fd, path)
            self._unprobed = 0
            b0, t0, c0 = _blocks_read(), time.monotonic(), time.thread_time()
            listing = list_dir(fd, path)
            self._listed(_blocks_read() != b0 or (
                time.monotonic() - t0 - (time.thread_time() - c0) > LIST_SLOW))
            return listing
        except FileNotFoundError:
            self._error(path, "vanished during backup")
        except OSError as e:
            self._error(path, f"cannot list directory: {e.strerror}",
                        stored="not read at all (an empty directory)")
        return []

    def _listed(self, slow: bool) -> None:
        """Count a listing that read from the disk (``slow``) or not; list ahead or not
        from now on (LIST_QUIET)."""
        if slow:
            self._quiet = 0
            self._ahead_on = True
        else:
            self._quiet += 1
            if self._quiet >= LIST_QUIET:
                self._ahead_on = False

    def _finish(self, f: _Frame) -> str:
        pairs = self._resolve(f.nodes)
        pairs.sort(key=_first)  # by name (bytes): the order of a tree's nodes
        parent = f.parent
        if f.parent_tree and len(pairs) == len(parent) and all(
                n is (p := parent.get(name)) or n == p for name, n in pairs):
            return f.parent_tree  # unchanged directory: its tree blob is already stored
        nodes = [n for _, n in pairs]
        body = encode_tree(nodes)
        if len(body) > codec.MAX_RAW:  # no reader would accept it (docs/FORMAT.md 11.1)
            self._error(f.path, f"directory of {len(nodes)} entries: its tree ({len(body)} "
                        f"bytes) is larger than the {codec.MAX_RAW} bytes a tree blob may "
                        "hold in this format version",
                        stored="not stored (an empty directory); split it or exclude it")
            body = encode_tree([])
        return self.writer.save(TREE, body)

    def _resolve(self, nodes: list) -> list[tuple[bytes, dict]]:
        """(name, node) pairs: wait for the files being read; drop those that could not be."""
        out = []
        for pair in nodes:
            n = pair[1]
            if type(n) is dict:
                out.append(pair)
                continue
            if isinstance(n, _InReader):
                if self._procs is not None:
                    self._procs.kick()
                n = self._from_reader(n)
            elif isinstance(n, Future):
                n = n.result()
            if n is not None:
                out.append((pair[0], n))
        return out

    def _entry(self, fd: int, name: bytes, path: bytes, st: os.stat_result, xattrs,
               prev: dict | None) -> dict | Future | None:
        """The node of a non-directory ``name`` in the open directory ``fd``."""
        typ = _type_of(st.st_mode)
        if typ is None:
            self._error(path, "unsupported file type, skipped")
            return None
        node = self._meta(name, st, typ, self._xattrs(path, xattrs))
        if typ == "file":
            return self._file(fd, name, path, node, st, prev)
        if typ == "symlink":
            try:
                node.update(name_fields("target", os.readlink(name, dir_fd=fd)))
            except OSError as e:
                self._error(path, f"cannot read link: {e.strerror}")
                return None
        elif typ in ("chardev", "blockdev"):
            node["rdev"] = st.st_rdev
        return node

    # ------------------------------------------------------------------- files
    def _file(
        self, fd: int, name: bytes, path: bytes, node: dict, st: os.stat_result,
        prev: dict | None
    ) -> dict | Future | None:
        """An unchanged file's node at once; a changed one is read by a reader thread."""
        if (
            prev is not None
            and prev.get("type") == "file"
            and prev.get("size") == st.st_size
            and prev.get("mtime_ns") == st.st_mtime_ns
            and prev.get("ctime_ns") == st.st_ctime_ns
            and prev.get("inode") == st.st_ino
            and all(map(self.repo.index.__contains__, prev.get("content", ())))  # has_blob
        ):
            node["content"] = prev["content"]
            if prev.get("holes"):
                node["holes"] = prev["holes"]
            with self._lock:
                self.stats.files += 1
                self.stats.unchanged_files += 1
                self.stats.bytes += st.st_size
            self._tick(path)
            return node
        with self._lock:
            self.stats.files += 1
        if self.processes:
            return self._to_reader(fd, name, path, node, st)
        assert self._pool is not None
        return self._pool.submit(self._read_file, fd, name, path, node, st)

    def _to_reader(self, dir_fd: int, name: bytes, path: bytes, node: dict,
                   st: os.stat_result) -> _InReader | None:
        """Open the file here, in its open parent, and hand the descriptor to a reader
        process (engine/sources/readers.py)."""
        self.cancel.check()
        try:
            try:
                fd = os.open(name, _OPEN_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
            except PermissionError:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            self._error(path, read_error(e))
            return None
        if self._procs is None:
            # this process now only walks, claims and writes trees and index rows: small
            # objects for hours, between which freed large blocks must not stay on the heap
            tune_malloc()
            try:
                self._procs = ReaderPool(self.repo, self.writer, self.processes,
                                         self._read_some)
            except BaseException:
                os.close(fd)
                raise
        return _InReader(node, path, self._procs.submit(fd, st, path))

    def _read_some(self, n: int, path: bytes) -> None:
        with self._lock:
            self.stats.bytes_read += n
            self.stats.in_readers += n
        self._tick(path)

    def _from_reader(self, r: _InReader) -> dict | None:
        res = r.future.result()
        for message, read, stored in res["errors"]:
            self._error(r.path, message, read, stored)
        if "content" not in res:
            return None
        node = r.node
        node["content"] = res["content"]
        node["size"] = res["size"]
        if res["holes"]:
            node["holes"] = res["holes"]
        with self._lock:
            self.stats.bytes += res["size"]
            self.stats.in_readers -= res["size"] - sum(h[1] for h in res["holes"])
        self._tick(r.path)
        return node

    def _read_file(self, fd: int, name: bytes, path: bytes, node: dict,
                   st: os.stat_result) -> dict | None:
        self.cancel.check()
        me = threading.get_ident()
        try:
            content, size, holes = self._read(fd, name, path, st)
        except OSError as e:
            self._error(path, read_error(e))
            return None
        finally:
            with self._lock:
                self.stats.inflight.pop(me, None)
        node["content"] = content
        node["size"] = size
        if holes:
            node["holes"] = holes
        with self._lock:
            self.stats.bytes += size
        return node

    def _read(self, dir_fd: int, name: bytes, path: bytes,
              st: os.stat_result) -> tuple[list[str], int, list[list[int]]]:
        try:
            fd = os.open(name, _OPEN_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        with open(fd, "rb", buffering=0, closefd=True) as f:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.st_ino:
                raise FileNotFoundError(errno.ENOENT, "replaced during backup")
            # fewer blocks than bytes: there may be holes (or compression); ask the fs
            holes = find_holes(fd, fst.st_size) if fst.st_blocks * 512 < fst.st_size else []
            content: list[str] = []
            if not holes:
                size = self._read_data(f, path, None, content, 0,
                                       small=fst.st_size <= self.min_chunk)
            else:
                size = pos = 0
                for start, length in [*holes, [fst.st_size, 0]]:
                    if start > pos:  # the data up to this hole
                        n = self._read_data(f, path, start - pos, content, size)
                        size += n
                        if n < start - pos:  # the file shrank: stop at its end
                            break
                    if length:  # a hole: zero blobs, never read
                        content += self._zeros(length)
                        size += length
                        f.seek(start + length)
                    pos = start + length
            self._after_read(path, fd, st, size)
            return content, size, [h for h in holes if h[0] + h[1] <= size]

    def _read_data(self, f, path: bytes, length: int | None, content: list[str],
                   done: int, small: bool = False) -> int:
        """Cut ``length`` bytes from the file's position (None: all to its end; ``small``:
        it looked no bigger than one chunk) into blobs appended to content; returns the
        number of bytes read."""
        me = threading.get_ident()
        data = one_chunk(f, length, self.min_chunk, small)
        if data is not None:
            if data:
                content.append(self.writer.save(DATA, data))
            with self._lock:
                self.stats.bytes_read += len(data)
            return len(data)
        size = 0
        for chunk in self.cdc.cut_stream(f if length is None else _Range(f, length)):
            content.append(self.writer.save(DATA, chunk.data))
            size += chunk.length
            with self._lock:
                self.stats.bytes_read += chunk.length
                self.stats.inflight[me] = done + size
            self._tick(path)
            self.cancel.check()
        return size

    def _zeros(self, length: int) -> list[str]:
        """Blob ids covering ``length`` zero bytes: chunk-maximum zero blobs and a tail,
        so a hole costs at most two blobs in the repository and nothing is read."""
        full, tail = divmod(length, self._max)
        ids = [self._zero_blob(self._max)] * full
        if tail:
            ids.append(self._zero_blob(tail))
        return ids

    def _zero_blob(self, n: int) -> str:
        with self._lock:
            bid = self._zero_ids.get(n)
        if bid is None:
            bid = self.writer.save(DATA, bytes(n))
            with self._lock:
                self._zero_ids[n] = bid
        return bid

    def _after_read(self, path: bytes, fd: int, st: os.stat_result, size: int) -> None:
        end = os.fstat(fd)
        if end.st_size != size or end.st_mtime_ns != st.st_mtime_ns or size != st.st_size:
            self._error(
                path,
                f"changed while being read (size {st.st_size} -> {end.st_size}); "
                f"stored the {size} bytes read",
                read=size,
            )
        self._tick(path)
