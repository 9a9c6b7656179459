"""The files source: walk a fileset's paths into tree blobs.

The snapshot's root tree mirrors the absolute paths (``/srv/app`` is stored as
``srv`` -> ``app``), like tar and restic, so several paths never collide.
Unchanged files (same type, size, mtime, ctime and inode as in the parent
snapshot) reuse the parent's content list without being read. Files that
cannot be read, vanish, or change while read are listed in ``errors``; the
backup goes on with the rest and the snapshot says it is incomplete.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import os
import pwd
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyfastcdc

from engine.errors import EngineError
from engine.events import CancelToken
from engine.repo.repository import DATA, TREE, BlobWriter, Repository
from engine.repo.tree import encode_tree, name_fields, node_name

if TYPE_CHECKING:
    from engine.sources.fileset import FilesetConfig

READERS = 2  # reader threads per backup
LISTERS = 2  # threads listing directories ahead of the walk (0: list in the walk itself)


def _list_dir(path: bytes) -> list[tuple[bytes, bytes, os.stat_result | OSError]]:
    """A directory's entries, sorted by name, each with its lstat (or the error)."""
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    out: list[tuple[bytes, bytes, os.stat_result | OSError]] = []
    for e in entries:
        try:
            out.append((e.name, e.path, e.stat(follow_symlinks=False)))
        except OSError as err:
            out.append((e.name, e.path, err))
    return out
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = 1024 * 1024


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

    @property
    def partial(self) -> int:
        return sum(self.inflight.values())


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
        self._pool: ThreadPoolExecutor | None = None
        self._lister: ThreadPoolExecutor | None = None
        self._listings: dict[bytes, Future] = {}  # directory -> its listing, made ahead
        self._last_progress = 0.0
        self._root_dev: int | None = None

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

    def _error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.stats.errors.append({"path": os.fsdecode(path), "error": message})

    def _meta(self, name: bytes, st: os.stat_result, typ: str) -> dict:
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
        return node

    def _parent_children(self, tree_id: str | None) -> dict[bytes, dict]:
        if not tree_id:
            return {}
        try:
            tree = self.repo.load_tree(tree_id)
            return {node_name(n): n for n in tree["nodes"]}
        except EngineError:
            return {}  # a damaged parent only costs re-reading

    # ------------------------------------------------------------------- walk
    def run(self) -> str:
        """Back up all paths; returns the root tree id.

        Files are read by a few reader threads (I/O overlaps, which matters on cold
        caches and network disks) while this thread walks; a directory's tree is
        written once all its files are in. Reader threads share the BlobWriter."""
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="read")
        self._lister = (ThreadPoolExecutor(LISTERS, thread_name_prefix="list")
                        if LISTERS else None)
        try:
            return self._run()
        except BaseException:
            self.cancel.cancel()
            raise
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._lister is not None:
                self._lister.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> str:
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
            return self._dir(b"/", os.lstat(b"/"), self.parent_tree)
        return self._virtual(b"/", trie, self.parent_tree)

    def _virtual(self, path: bytes, trie: dict, parent_tree: str | None) -> str:
        """A directory on the way to configured paths: only the named children."""
        parent = self._parent_children(parent_tree)
        nodes = []
        for name in sorted(k for k in trie if k is not None):
            child = os.path.join(path, name)
            try:
                st = os.lstat(child)
            except OSError as e:
                self._error(child, e.strerror or str(e))
                continue
            prev = parent.get(name)
            if None in trie[name]:
                node = self._entry(child, name, st, prev)
            else:
                node = self._meta(name, st, "dir")
                node["subtree"] = self._virtual(
                    child, trie[name], prev.get("subtree") if prev else None
                )
                self.stats.dirs += 1
            if node is not None:
                nodes.append(node)
        return self.writer.save(TREE, encode_tree(self._resolve(nodes)))

    @staticmethod
    def _resolve(nodes: list) -> list[dict]:
        """Wait for the files being read; drop those that could not be."""
        out = []
        for n in nodes:
            if isinstance(n, Future):
                n = n.result()
            if n is not None:
                out.append(n)
        return out

    def _entry(
        self, path: bytes, name: bytes, st: os.stat_result, prev: dict | None
    ) -> dict | None:
        typ = _type_of(st.st_mode)
        if typ is None:
            self._error(path, "unsupported file type, skipped")
            return None
        node = self._meta(name, st, typ)
        if typ == "file":
            return self._file(path, node, st, prev)
        if typ == "dir":
            if self.fileset.one_file_system and self._root_dev not in (None, st.st_dev):
                node["subtree"] = self.writer.save(TREE, encode_tree([]))
                return node
            if self._root_dev is None:
                self._root_dev = st.st_dev
            prev_tree = prev.get("subtree") if prev and prev.get("type") == "dir" else None
            node["subtree"] = self._dir(path, st, prev_tree)
            return node
        if typ == "symlink":
            try:
                node.update(name_fields("target", os.readlink(path)))
            except OSError as e:
                self._error(path, f"cannot read link: {e.strerror}")
                return None
        elif typ in ("chardev", "blockdev"):
            node["rdev"] = st.st_rdev
        return node

    def _dir(self, path: bytes, st: os.stat_result, parent_tree: str | None) -> str:
        self.cancel.check()
        self.stats.dirs += 1
        parent = self._parent_children(parent_tree)
        prefetched = self._listings.pop(path, None)
        try:
            entries = prefetched.result() if prefetched is not None else _list_dir(path)
        except FileNotFoundError:
            self._error(path, "vanished during backup")
            entries = []
        except OSError as e:
            self._error(path, f"cannot list directory: {e.strerror}")
            entries = []
        # This directory's files first (read in parallel), then its subdirectories, so
        # the walk never runs far ahead of the readers; the subdirectories are listed
        # ahead by lister threads meanwhile.
        nodes: list = []
        subdirs = []
        for name, epath, est in entries:
            if isinstance(est, FileNotFoundError):
                self._error(epath, "vanished during backup")
                continue
            if isinstance(est, OSError):
                self._error(epath, est.strerror or str(est))
                continue
            if self.ex.excluded(epath, name, stat.S_ISDIR(est.st_mode)):
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append((name, epath, est))
                if self._lister is not None:
                    self._listings[epath] = self._lister.submit(_list_dir, epath)
                continue
            node = self._entry(epath, name, est, parent.get(name))
            if node is not None:
                nodes.append(node)
        nodes = self._resolve(nodes)
        for name, epath, est in subdirs:
            node = self._entry(epath, name, est, parent.get(name))
            if node is not None:
                nodes.append(node)
        nodes.sort(key=node_name)
        if parent_tree and self.repo.has_blob(parent_tree) and len(nodes) == len(parent) and all(
            n == parent.get(node_name(n)) for n in nodes
        ):
            return parent_tree  # unchanged directory: its tree blob is already stored
        return self.writer.save(TREE, encode_tree(nodes))

    # ------------------------------------------------------------------- files
    def _file(
        self, path: bytes, node: dict, st: os.stat_result, prev: dict | None
    ) -> dict | Future | None:
        """An unchanged file's node at once; a changed one is read by a reader thread."""
        with self._lock:
            self.stats.files += 1
        if (
            prev is not None
            and prev.get("type") == "file"
            and prev.get("size") == st.st_size
            and prev.get("mtime_ns") == st.st_mtime_ns
            and prev.get("ctime_ns") == st.st_ctime_ns
            and prev.get("inode") == st.st_ino
            and all(self.repo.has_blob(b) for b in prev.get("content", []))
        ):
            node["content"] = prev["content"]
            with self._lock:
                self.stats.unchanged_files += 1
                self.stats.bytes += st.st_size
            self._tick(path)
            return node
        assert self._pool is not None
        return self._pool.submit(self._read_file, path, node, st)

    def _read_file(self, path: bytes, node: dict, st: os.stat_result) -> dict | None:
        self.cancel.check()
        me = threading.get_ident()
        try:
            content, size = self._read(path, st)
        except FileNotFoundError:
            self._error(path, "vanished during backup")
            return None
        except PermissionError:
            self._error(path, "permission denied")
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._error(path, "replaced by a symlink during backup")
            else:
                self._error(path, e.strerror or str(e))
            return None
        finally:
            with self._lock:
                self.stats.inflight.pop(me, None)
        node["content"] = content
        node["size"] = size
        with self._lock:
            self.stats.bytes += size
        return node

    def _read(self, path: bytes, st: os.stat_result) -> tuple[list[str], int]:
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_NOATIME)
        except PermissionError:
            fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb", buffering=0, closefd=True) as f:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.st_ino:
                raise FileNotFoundError(errno.ENOENT, "replaced during backup")
            content: list[str] = []
            size = 0
            if fst.st_size <= self.min_chunk:
                # FastCDC never cuts below min_size: a small file is one chunk.
                data = f.read(self.min_chunk + 1)
                if len(data) <= self.min_chunk:
                    if data:
                        content.append(self.writer.save(DATA, data))
                    size = len(data)
                    with self._lock:
                        self.stats.bytes_read += size
                    self._after_read(path, fd, st, size)
                    return content, size
                f.seek(0)
            for chunk in self.cdc.cut_stream(f):
                content.append(self.writer.save(DATA, chunk.data))
                size += chunk.length
                with self._lock:
                    self.stats.bytes_read += chunk.length
                    self.stats.inflight[threading.get_ident()] = size
                self._tick(path)
                self.cancel.check()
            self._after_read(path, fd, st, size)
            return content, size

    def _after_read(self, path: bytes, fd: int, st: os.stat_result, size: int) -> None:
        end = os.fstat(fd)
        if end.st_size != size or end.st_mtime_ns != st.st_mtime_ns or size != st.st_size:
            self._error(
                path,
                f"changed while being read (size {st.st_size} -> {end.st_size}); "
                f"stored the {size} bytes read",
            )
        self._tick(path)
