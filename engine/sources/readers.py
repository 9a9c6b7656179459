"""Reader processes: the files backup's per-chunk work on every core.

One Python process runs the per-chunk pipeline (read, FastCDC, HMAC, zstd, AES-GCM,
pack) at about one core, whatever the thread count: the GIL is handed back and forth
around every call (bench/RESULTS.md). So a files backup of a local repository starts
``readers`` processes (``python -m engine.sources.readers``) that each do all of it
for the files they are given and build packs of their own, while the backup's own
process keeps what must stay in one place: the walk, the dedup decision and the
trees.

* The walk opens each changed file itself, in its open parent directory (the same
  checks as before: no symlink followed, the inode it listed), and passes the open
  descriptor to a reader (SCM_RIGHTS), so a reader never resolves a path.
* Small files travel in batches (up to ``BATCH_FILES`` files or ``BATCH_BYTES``); a
  larger file is a job of its own. At most ``QUEUE`` jobs wait per reader, which
  bounds the open descriptors and the walk's lead.
* A reader cuts and hashes a window of chunks (``WINDOW`` bytes) and asks the backup
  process which of them are new (``claim``): the answer is made under the
  BlobWriter's lock against the index and the blobs pending in this backup, so two
  readers never store the same blob. It compresses and seals the new ones and writes
  them straight into a pack file (`LocalBackend.put_streamed`): a pack is never whole
  in memory. A finished pack is named by its hash and reported (``pack``); the
  backup's commit writes the index naming it, as for its own packs.
* Crash consistency is unchanged: until the index names them, packs are unreferenced
  and prune removes them; a reader killed mid-pack leaves a ``.tmp-*`` file that prune
  reclaims. Readers die with the backup's process (PR_SET_PDEATHSIG) and on EOF.

Messages are pickled tuples, each framed by a 4-byte length, on a Unix stream
socket pair; both ends are this program.
"""

from __future__ import annotations

import array
import ctypes
import errno
import hashlib
import json
import os
import pickle
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024
LARGE = 1024 * 1024  # a file above this is a job of its own
QUEUE = 2  # jobs sent to a reader and not yet done
WINDOW = 4 * 1024 * 1024  # chunk bytes a reader holds before asking which are new
HOLE_MIN = 64 * 1024  # zero ranges shorter than this are stored as data, not as holes
_HDR = struct.Struct("<I")
_MAX_MSG = 256 * 1024 * 1024


# ------------------------------------------------------ reading (shared with files.py)
class _Range:
    """A reader over the next ``left`` bytes of a file (FastCDC over one data range)."""

    def __init__(self, f, left: int):
        self.f = f
        self.left = left

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        mv = memoryview(b)
        if len(mv) > self.left:
            mv = mv[: self.left]
        n = self.f.readinto(mv) or 0
        self.left -= n
        return n


def read_error(e: OSError) -> str:
    """How a file that could not be opened or read is named in a backup's errors."""
    if isinstance(e, FileNotFoundError):
        return "vanished during backup"
    if isinstance(e, PermissionError):
        return "permission denied"
    if e.errno == errno.ELOOP:  # opened with O_NOFOLLOW
        return "replaced by a symlink during backup"
    return e.strerror or str(e)


def one_chunk(f, length: int | None, min_chunk: int, small: bool) -> bytes | None:
    """The bytes from the file's position when they make one chunk (FastCDC never cuts
    below ``min_chunk``): ``length`` bytes (None: to the end) when ``small`` (it looked no
    bigger than one chunk) or length is at most one chunk. None, with the position where
    it was, when there is more: then they are cut as a stream."""
    if not (small or (length is not None and length <= min_chunk)):
        return None
    start = f.tell()
    want = min_chunk + 1 if length is None else length
    data = b""
    while len(data) < want:
        more = f.read(want - len(data))
        if not more:
            break
        data += more
    if len(data) <= min_chunk:
        return data
    f.seek(start)  # a whole file bigger than one chunk
    return None


def find_holes(fd: int, size: int) -> list[list[int]]:
    """Zero ranges ``[offset, length]`` of at least HOLE_MIN bytes, by SEEK_DATA/SEEK_HOLE
    (never reading the file); [] when the file system cannot tell."""
    holes: list[list[int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no data after pos, a hole to the end
                    raise
                data = size
            data = min(data, size)
            if data - pos >= HOLE_MIN:
                holes.append([pos, data - pos])
            if data >= size:
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
    except OSError:
        return []
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return holes



# ------------------------------------------------------------------ framing
def _send(sock: socket.socket, msg: object, fds: list[int] | None = None) -> None:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    data = _HDR.pack(len(body)) + body
    if fds:
        n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", fds).tobytes())])
        if n < len(data):
            sock.sendall(data[n:])
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _recv(sock: socket.socket, with_fds: bool = False) -> tuple[object, list[int]] | None:
    """One message and the descriptors sent with it; None at EOF."""
    fds: list[int] = []
    head = b""
    while len(head) < _HDR.size:
        if with_fds:
            data, anc, _flags, _addr = sock.recvmsg(
                _HDR.size - len(head), socket.CMSG_SPACE(BATCH_FILES * 4 + 16))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                    fds.extend(arr)
        else:
            data = sock.recv(_HDR.size - len(head))
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        head += data
    (size,) = _HDR.unpack(head)
    if size > _MAX_MSG:
        raise RuntimeError(f"reader message of {size} bytes")
    body = _recv_exact(sock, size)
    if body is None:
        for fd in fds:
            os.close(fd)
        return None
    return pickle.loads(body), fds


# ------------------------------------------------------------ the backup side
@dataclass
class _File:
    fd: int
    listed: tuple[int, int, int]  # inode, size, mtime as the walk saw them
    size: int
    future: Future
    label: bytes


@dataclass
class _Reader:
    index: int
    proc: subprocess.Popen
    sock: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[int, list[_File]] = field(default_factory=dict)
    flushed: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class ReaderPool:
    """The backup process's end: hands files to reader processes and answers them.

    ``on_read(n, label)`` is called (from a receiving thread) as a reader reads n more
    bytes, ``label`` naming the file it is reading (the one given to `submit`); the reader
    waits for the call to return.
    `submit` takes ownership of the descriptor and returns a Future of the file's
    result: ``{"content", "size", "holes", "errors": [(message, read, stored)]}``.
    """

    def __init__(self, repo, writer, count: int, on_read: Callable[[int], None]):
        from engine.storage.local import LocalBackend

        if not isinstance(repo.backend, LocalBackend):
            raise ValueError("reader processes write packs into a local repository only")
        self.repo = repo
        self.writer = writer
        self.on_read = on_read
        self.readers: list[_Reader] = []
        self.batch: list[_File] = []
        self.batch_bytes = 0
        self.cond = threading.Condition()
        self.failure: BaseException | None = None
        self.closed = False
        self._job_ids = 0
        min_chunk, avg, mx, seed = repo.chunker_params()
        init = {
            "master": repo.keys.master_key(),
            "level": repo.compression_level,
            "chunker": (min_chunk, avg, mx, seed),
            "root": str(repo.backend.root),
            "pack_target": _pack_target(),
        }
        env = dict(os.environ)
        env.pop("BACKUP_TUI_PASSWORD", None)  # readers get the key itself, over the socket
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            for i in range(count):
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "engine.sources.readers", str(theirs.fileno()),
                         str(os.getpid())],
                        pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
                finally:
                    theirs.close()
                reader = _Reader(i, proc, mine)
                _send(mine, ("init", init))
                reader.thread = threading.Thread(target=self._serve, args=(reader,),
                                                 name=f"reader-{i}", daemon=True)
                self.readers.append(reader)
                reader.thread.start()
        except BaseException:
            self.close()
            raise

    # -- the walk's calls
    def submit(self, fd: int, st: os.stat_result, label: bytes) -> Future:
        """Read the open file ``fd`` that the walk listed as ``st``."""
        fut: Future = Future()
        size = st.st_size
        self.batch.append(_File(fd, (st.st_ino, size, st.st_mtime_ns), size, fut, label))
        self.batch_bytes += size
        if size > LARGE or len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.kick()
        return fut

    def kick(self) -> None:
        """Send the files gathered so far (the walk is about to wait for one of them)."""
        if not self.batch:
            return
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        try:
            with self.cond:
                while True:
                    self._raise_failure()
                    free = [r for r in self.readers if len(r.jobs) < QUEUE]
                    if free:
                        reader = min(free, key=lambda r: len(r.jobs))
                        break
                    self.cond.wait()
                self._job_ids += 1
                job = self._job_ids
                reader.jobs[job] = batch
            self._send_to(reader, ("job", job, [f.listed for f in batch]),
                          [f.fd for f in batch])
        except BaseException as e:
            for f in batch:
                if not f.future.done():
                    f.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            for f in batch:
                os.close(f.fd)

    def finish(self) -> None:
        """Every reader's last pack written and handed to the BlobWriter."""
        self.kick()
        for r in self.readers:
            self._send_to(r, ("flush",))
        for r in self.readers:
            while not r.flushed.wait(0.5):
                with self.cond:
                    self._raise_failure()
        with self.cond:
            self._raise_failure()

    def close(self, kill: bool = False) -> None:
        """Stop the readers (``kill``: at once, a backup failing or cancelled; a pack a
        reader was writing stays a ``.tmp-*`` file for prune)."""
        self.closed = True
        for f in self.batch:
            os.close(f.fd)
            if not f.future.done():
                f.future.cancel()
        self.batch = []
        for r in self.readers:
            if kill:
                r.proc.kill()
                continue
            try:
                with r.send_lock:
                    _send(r.sock, ("stop",))
            except OSError:
                pass
        for r in self.readers:
            try:
                r.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            r.sock.close()
            if r.thread is not None:
                r.thread.join(timeout=5)

    def _send_to(self, r: _Reader, msg: object, fds: list[int] | None = None) -> None:
        try:
            with r.send_lock:
                _send(r.sock, msg, fds)
        except OSError:
            try:
                code = r.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            with self.cond:
                if self.failure is None:
                    self.failure = _reader_died(r.index, code)
                raise self.failure from None

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- each reader's receiving thread
    def _serve(self, r: _Reader) -> None:
        try:
            while True:
                try:
                    got = _recv(r.sock)
                except OSError:  # reset: the reader died with messages unread
                    got = None
                if got is None:
                    if self.closed:
                        return
                    try:
                        code = r.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        code = None
                    raise _reader_died(r.index, code)
                msg, _ = got
                kind = msg[0]
                if kind == "claim":
                    _, ids, nread = msg
                    if nread:
                        with self.cond:  # a reader works on its jobs in order
                            files = r.jobs[min(r.jobs)] if r.jobs else None
                        self.on_read(nread, files[-1].label if files else b"")
                    self._send_to(r, ("claimed", self._claim(ids)))
                elif kind == "pack":
                    self._pack(*msg[1:])
                elif kind == "done":
                    _, job, results, nread = msg
                    with self.cond:
                        files = r.jobs.pop(job)
                        self.cond.notify_all()
                    if nread:
                        self.on_read(nread, files[-1].label)
                    for f, res in zip(files, results, strict=True):
                        f.future.set_result(res)
                elif kind == "flushed":
                    r.flushed.set()
                elif kind == "fatal":
                    raise _exception(msg[1], msg[2])
        except BaseException as e:
            if self.closed:
                return
            with self.cond:
                if self.failure is None:
                    self.failure = e
                pending = [f for files in r.jobs.values() for f in files]
                r.jobs.clear()
                self.cond.notify_all()
            for f in pending:
                if not f.future.done():
                    f.future.set_exception(self.failure)
            r.flushed.set()

    def _claim(self, ids: list[str]) -> bytes:
        w = self.writer
        out = bytearray(len(ids))
        with w._lock:
            for i, bid in enumerate(ids):
                if bid in w.pending or self.repo.has_blob(bid):
                    continue
                w.pending.add(bid)
                out[i] = 1
        return bytes(out)

    def _pack(self, pid: str, size: int, rows: list[list]) -> None:
        from engine.repo.pack import BlobEntry

        entries = [BlobEntry(*row) for row in rows]
        w = self.writer
        with w._lock:
            w.add_written((pid, size, entries))
            w.added_bytes += sum(e.length for e in entries)
            w.added_raw += sum(e.raw_length for e in entries)
            w.new_blobs += len(entries)


def _pack_target() -> int:
    from engine.repo.repository import PACK_TARGET

    return PACK_TARGET


def _reader_died(index: int, code: int | None) -> BaseException:
    from engine.errors import EngineError

    how = ("is still running" if code is None else
           f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
    return EngineError(f"reader process {index} ended in the middle of the backup (it {how})")


def _exception(pickled: bytes | None, text: str) -> BaseException:
    from engine.errors import EngineError

    if pickled is not None:
        try:
            e = pickle.loads(pickled)
            if isinstance(e, BaseException):
                return e
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return EngineError(text)


def reader_processes(repo) -> int:
    """How many reader processes a files backup of ``repo`` uses (and forked writers a
    files restore): ``BACKUP_TUI_READERS`` if set (0: read and write in this process, with
    threads), else one per core (at most 4), for a repository in a local directory
    (readers write their packs there themselves; writers read packs with pread)."""
    from engine.errors import EngineError
    from engine.storage.local import LocalBackend

    if not isinstance(repo.backend, LocalBackend):
        return 0
    want = os.environ.get("BACKUP_TUI_READERS", "").strip()
    if want:
        try:
            return max(0, min(16, int(want)))
        except ValueError:
            raise EngineError(f"BACKUP_TUI_READERS={want!r}: not a whole number of reader "
                              "processes (0 reads in the backup's own process)") from None
    return default_count()


def default_count() -> int:
    """Reader processes for a backup: one per core the process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# -------------------------------------------------------------- the reader side
class _Worker:
    def __init__(self, sock: socket.socket, init: dict):
        import pyfastcdc

        from engine.repo.crypto import Keys
        from engine.storage.local import LocalBackend

        self.sock = sock
        self.keys = Keys(init["master"])
        self.level = init["level"]
        self.min_chunk, avg, mx, seed = init["chunker"]
        self.max_chunk = mx
        self.cdc = pyfastcdc.FastCDC(avg, min_size=self.min_chunk, max_size=mx, seed=seed)
        self.backend = LocalBackend(init["root"])
        self.pack_target = init["pack_target"]
        self.queue: deque = deque()  # messages that came while waiting for a claim answer
        self.window: list[tuple[str, bytes]] = []
        self.window_bytes = 0
        self.nread = 0
        self.zero_ids: dict[int, str] = {}
        self.pack = None  # StreamedPut
        self.pack_hash = None
        self.rows: list[list] = []

    # -- messages
    def next_message(self, queued: bool = True) -> tuple[object, list[int]]:
        """The next message: one that came earlier and was kept (``queued``), else the
        socket's next."""
        if queued and self.queue:
            return self.queue.popleft()
        got = _recv(self.sock, with_fds=True)
        if got is None:
            raise SystemExit(0)  # the backup process is gone
        return got

    def run(self) -> None:
        while True:
            msg, fds = self.next_message()
            kind = msg[0]
            if kind == "job":
                _, job, files = msg
                results = [self.read_file(fd, *listed)
                           for fd, listed in zip(fds, files, strict=True)]
                self.claim_window()
                nread, self.nread = self.nread, 0
                _send(self.sock, ("done", job, results, nread))
            elif kind == "flush":
                self.claim_window()
                self.finish_pack()
                _send(self.sock, ("flushed",))
            elif kind == "stop":
                self.abort_pack()
                return

    # -- reading one file (engine/sources/files.py `_read`, on a passed descriptor)
    def read_file(self, fd: int, ino: int, listed_size: int, listed_mtime: int) -> dict:
        errors: list[tuple[str, int | None, str | None]] = []
        try:
            with open(fd, "rb", buffering=0, closefd=True) as f:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode) or fst.st_ino != ino:
                    return {"errors": [("vanished during backup", None, None)]}
                holes = find_holes(fd, fst.st_size) if fst.st_blocks * 512 < fst.st_size else []
                content: list[str] = []
                if not holes:
                    size = self.read_data(f, None, content, small=fst.st_size <= self.min_chunk)
                else:
                    size = pos = 0
                    for start, length in [*holes, [fst.st_size, 0]]:
                        if start > pos:
                            n = self.read_data(f, start - pos, content)
                            size += n
                            if n < start - pos:
                                break
                        if length:
                            content += self.zeros(length)
                            size += length
                            f.seek(start + length)
                        pos = start + length
                end = os.fstat(fd)
                if (end.st_size != size or end.st_mtime_ns != listed_mtime
                        or size != listed_size):
                    errors.append((f"changed while being read (size {listed_size} -> "
                                   f"{end.st_size}); stored the {size} bytes read", size, None))
                return {"content": content, "size": size, "errors": errors,
                        "holes": [h for h in holes if h[0] + h[1] <= size]}
        except OSError as e:
            return {"errors": [(read_error(e), None, None)]}

    def read_data(self, f, length: int | None, content: list[str], small: bool = False) -> int:
        data = one_chunk(f, length, self.min_chunk, small)
        if data is not None:
            if data:
                content.append(self.add(data))
            self.nread += len(data)
            return len(data)
        size = 0
        for chunk in self.cdc.cut_stream(f if length is None else _Range(f, length)):
            content.append(self.add(bytes(chunk.data)))
            size += chunk.length
            self.nread += chunk.length
        return size

    def zeros(self, length: int) -> list[str]:
        full, tail = divmod(length, self.max_chunk)
        ids = [self.zero_blob(self.max_chunk)] * full
        if tail:
            ids.append(self.zero_blob(tail))
        return ids

    def zero_blob(self, n: int) -> str:
        bid = self.zero_ids.get(n)
        if bid is None:
            bid = self.zero_ids[n] = self.add(bytes(n))
        return bid

    # -- claims and packs
    def add(self, data: bytes) -> str:
        bid = self.keys.blob_id(data)
        self.window.append((bid, data))
        self.window_bytes += len(data)
        if self.window_bytes >= WINDOW:
            self.claim_window()
        return bid

    def claim_window(self) -> None:
        if not self.window:
            return
        window, self.window, self.window_bytes = self.window, [], 0
        seen: dict[str, bytes] = {}
        for bid, data in window:
            seen.setdefault(bid, data)
        ids = list(seen)
        nread, self.nread = self.nread, 0
        _send(self.sock, ("claim", ids, nread))
        while True:
            msg, fds = self.next_message(queued=False)
            if msg[0] == "claimed":
                break
            self.queue.append((msg, fds))  # a job sent meanwhile: after this one
        for bid, new in zip(ids, msg[1], strict=True):
            if new:
                self.store(bid, seen[bid])

    def store(self, bid: str, data: bytes) -> None:
        from engine.repo import codec

        sealed = self.keys.seal(codec.encode(data, self.level))
        if self.pack is None:
            self.pack = self.backend.put_streamed("data")
            self.pack_hash = hashlib.sha256()
            self.rows = []
        self.rows.append(["data", bid, self.pack.size, len(sealed), len(data)])
        self.pack.write(sealed)
        self.pack_hash.update(sealed)
        if self.pack.size >= self.pack_target:
            self.finish_pack()

    def finish_pack(self) -> None:
        from engine.repo import codec
        from engine.repo.pack import pack_name

        if self.pack is None:
            return
        header = json.dumps(self.rows, separators=(",", ":")).encode()
        sealed = self.keys.seal(codec.encode(header, 3))
        tail = struct.pack("<I", len(sealed))
        self.pack.write(sealed, tail)
        self.pack_hash.update(sealed)
        self.pack_hash.update(tail)
        pid = self.pack_hash.hexdigest()
        self.pack.finish(pack_name(pid))
        size = self.pack.size
        self.pack = None
        _send(self.sock, ("pack", pid, size, self.rows))
        self.rows = []

    def abort_pack(self) -> None:
        if self.pack is not None:
            self.pack.abort()
            self.pack = None


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: list[str]) -> int:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the backup process decides (Ctrl-C)
    sock = socket.socket(fileno=fd)
    got = _recv(sock)
    if got is None:
        return 0
    worker = None
    try:
        worker = _Worker(sock, got[0][1])
        worker.run()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - everything goes back to the backup
        if worker is not None:
            worker.abort_pack()
        try:
            blob = pickle.dumps(e)
        except Exception:  # noqa: BLE001
            blob = None
        text = str(e) if getattr(e, "args", None) else traceback.format_exc()
        try:
            _send(sock, ("fatal", blob, text))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and all(a.isdigit() for a in sys.argv[1:]):
        sys.exit(main(sys.argv[1:]))
    print("engine.sources.readers is started by a files backup, not by hand", file=sys.stderr)
    sys.exit(2)
