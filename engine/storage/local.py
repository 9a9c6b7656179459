"""LocalBackend: a repository in a directory on a local file system.

Writes go to a hidden temporary file in the target folder, are fsynced, renamed
into place, and the folder is fsynced, so a crash leaves either the old state
or the new one (docs/FORMAT.md). Hidden files are never listed.
"""

from __future__ import annotations

import collections
import errno
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.errors import EngineError, NotFound, RepositoryError
from engine.storage.base import ObjectInfo


class LocalBackend:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.location = str(self.root)
        self._fds = threading.local()  # per thread: a few open pack files (see get_range)
        self._shared: bool | None = None

    def shared(self) -> bool:
        """The shared layout (README, "WAL archiving"): the repository folder has the
        setgid bit, so its group (say ``backup``, holding ``postgres`` for wal-push) owns
        what is written in it. Then files are written 0660 and the folders made here
        02770 whatever the umask; otherwise files are 0600 and folders follow the umask."""
        if self._shared is None:
            try:
                self._shared = bool(os.stat(self.root).st_mode & stat.S_ISGID)
            except OSError:
                self._shared = False
        return self._shared

    def _make_folder(self, folder: Path) -> None:
        if not self.shared() or folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            return
        missing = []
        p = folder
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o770)
            except FileExistsError:
                continue
            os.chmod(d, 0o2770)  # made here: group-writable for the other writers

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise RepositoryError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except _MISSING:
            raise NotFound(f"{self.location}: object {name} not found") from None
        except OSError as e:
            raise RepositoryError(f"cannot read {path}: {e.strerror}") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        path = self._path(name)
        if name.startswith("data/"):
            # Packs are immutable: keep a few open per thread and pread from them, instead
            # of an open/seek/read/close per blob (a restore reads thousands of blobs).
            try:
                return os.pread(self._open_pack(name, path), length, offset)
            except _MISSING:
                raise NotFound(f"{self.location}: object {name} not found") from None
            except OSError as e:
                raise RepositoryError(f"cannot read {path}: {e.strerror}") from None
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except _MISSING:
            raise NotFound(f"{self.location}: object {name} not found") from None
        except OSError as e:
            raise RepositoryError(f"cannot read {path}: {e.strerror}") from None

    def _open_pack(self, name: str, path) -> int:
        cache = getattr(self._fds, "cache", None)
        if cache is None:
            cache = self._fds.cache = _FdCache()
        cached = cache.pop(name, None)
        if cached is not None:
            # Reuse the open file only while the name still refers to it: a put (here or in
            # another process) renames a new file over it, a prune unlinks it.
            fd, opened = cached
            try:
                current = os.stat(path)
            except OSError:
                current = None
            if current is not None and os.path.samestat(current, opened):
                cache[name] = cached
                return fd
            os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, "not a file", str(path))
        cache[name] = (fd, opened)
        while len(cache) > 8:
            _, (old, _) = cache.popitem(last=False)
            os.close(old)
        return fd

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        folder = path.parent
        tmp = folder / f"{_TEMP}{secrets.token_hex(8)}"
        try:
            self._make_folder(folder)
        except (FileExistsError, NotADirectoryError):
            raise RepositoryError(f"cannot write {path}: {folder} is not a directory") from None
        except OSError as e:
            raise EngineError(f"cannot create {folder}: {e.strerror}") from None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if self.shared():
                    os.fchmod(fd, 0o660)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            if e.errno == errno.ENOSPC:
                raise EngineError(f"disk full writing {path}: no space left on device") from None
            raise EngineError(f"cannot write {path}: {e.strerror}") from None
        _fsync_dir(folder)

    def put_streamed(self, folder: str) -> StreamedPut:
        """An object written piece by piece and named at the end (a pack written as its
        blobs are sealed, so it is never whole in memory): ``write`` parts, then
        ``finish(name)`` fsyncs it and renames it into place with the guarantees of
        `put`; ``abort()`` removes it. Until then it is a ``.tmp-*`` file in ``folder``,
        which prune reclaims if the writer dies."""
        where = self._path(folder)
        try:
            self._make_folder(where)
        except OSError as e:
            raise EngineError(f"cannot create {where}: {e.strerror}") from None
        return StreamedPut(self, where)

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(name))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.location}: object {name} not found") from None
        if not stat.S_ISREG(st.st_mode):  # a folder of other names is no object
            raise NotFound(f"{self.location}: object {name} not found")
        return ObjectInfo(name, st.st_size)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix names, then filter by the rest.
        base, _, _ = prefix.rpartition("/")
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for fn in filenames:
                if fn.startswith("."):
                    continue
                name = rel + fn
                if name.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(dirpath, fn)).st_size
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(name, size)

    def list_temp(self) -> Iterator[tuple[str, int, float]]:
        """Partial objects (``.tmp-*``, see `put`) as (name, size, mtime): what a writer
        killed mid-write left behind. Prune reclaims them (engine/ops/prune.py)."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for fn in filenames:
                if not fn.startswith(_TEMP):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, fn))
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield rel + fn, st.st_size, st.st_mtime

    def delete_temp(self, name: str) -> None:
        """Remove one partial object named by `list_temp` (nothing else)."""
        folder, _, fn = name.rpartition("/")
        if not fn.startswith(_TEMP):
            raise RepositoryError(f"invalid temporary object name {name!r}")
        path = (self._path(folder) if folder else self.root) / fn  # _path checks the folder
        try:
            path.unlink()
        except _MISSING:
            pass

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except _MISSING:
            pass


class StreamedPut:
    """See `LocalBackend.put_streamed`."""

    def __init__(self, backend: LocalBackend, folder: Path):
        self.backend = backend
        self.folder = folder
        self.tmp = folder / f"{_TEMP}{secrets.token_hex(8)}"
        self.size = 0
        try:
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                          | os.O_CLOEXEC, 0o600)
            if backend.shared():
                os.fchmod(self.fd, 0o660)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> EngineError:
        self.abort()
        if e.errno == errno.ENOSPC:
            return EngineError(f"disk full writing {self.tmp}: no space left on device")
        return EngineError(f"cannot write {self.tmp}: {e.strerror}")

    def write(self, *parts: bytes | memoryview) -> None:
        assert self.fd is not None
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                    self.size += n
        except OSError as e:
            raise self._error(e) from None

    def finish(self, name: str) -> None:
        path = self.backend._path(name)
        try:
            assert self.fd is not None
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            self.backend._make_folder(path.parent)
            os.replace(self.tmp, path)
        except OSError as e:
            raise self._error(e) from None
        _fsync_dir(path.parent)
        if path.parent != self.folder:
            _fsync_dir(self.folder)

    def abort(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            self.tmp.unlink()
        except OSError:
            pass


_TEMP = ".tmp-"  # prefix of a partial object being written (put)

# What the OS says for a name that is no object: absent, below a file, or a folder.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class _FdCache(collections.OrderedDict):
    """Open pack files of one thread; closed when the thread ends (its locals are freed)."""

    def __del__(self) -> None:
        for fd, _ in self.values():
            try:
                os.close(fd)
            except OSError:
                pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
