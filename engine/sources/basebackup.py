"""The cluster source's data path: pg_basebackup's tar stream into tree blobs.

``pg_basebackup -D - -Ft -X fetch`` writes one tar archive to a pipe: the data
directory, then the WAL the backup needs (``pg_wal/``), then the
``backup_manifest``. It is read here as a stream, 512-byte headers and the
data after them, never staged on disk and never held whole in memory. Each
member becomes a node of the same tree format as a files snapshot
(``engine/repo/tree.py``), so dump, verify, prune and replication need nothing
of their own:

- *relation files* (``base/<db oid>/<relfilenode>[_fsm|_vm|_init][.N]``, the
  same under ``global/`` and ``pg_tblspc/``) are cut into fixed blocks of the
  configured size, a multiple of PostgreSQL's 8 KiB page, so a page changed
  since the last backup costs one block and every other block dedups;
- every other file (WAL segments, the manifest, ``pg_xact``, ...) is cut by the
  repository's content-defined chunker, like any file.

A directory's tree blob is written as soon as the stream has left it
(pg_basebackup sends directories depth first), so memory holds the open
directories only; the few it comes back to (``pg_wal/``, the root) are small
and kept. A tree blob must stay below the reader's limit (64 MiB of JSON, some
900,000 block ids), so a database directory larger than ``BLOCKS_PER_DIR``
blocks gets larger blocks (doubled until it fits; see ``block_size_for``).
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyfastcdc

from engine.errors import Cancelled, EngineError
from engine.events import CancelToken
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import make_delta, node_deltas
from engine.repo.repository import DATA, TREE, BlobWriter, Repository
from engine.repo.tree import MAX_DEPTH, encode_tree, name_fields

BLOCK = 512
BLOCKS_PER_DIR = 400_000  # block ids one directory's tree may list (~27 MB of JSON)
KEEP_CLOSED = 4096  # nodes of a closed directory kept, should the stream come back to it
MAX_META = 1024 * 1024  # a GNU long name or a pax header larger than this is refused
MAX_MANIFEST = 64 * 1024 * 1024  # a manifest larger than this is stored, not parsed
READ = 1024 * 1024
PIPE_SIZE = 1024 * 1024
INFLIGHT_BYTES = 4 * 1024 * 1024  # blocks of relation files sealing at once (not files')
JUDGE_AHEAD = 64  # blocks being hashed and compared with the parent's at once
# what one directory's tree blob may grow to with delta entries (each ~150 bytes of JSON
# beside the ~70 of a block id); the reader refuses a tree over 64 MiB
DIR_TREE_BUDGET = 40 * 1024 * 1024

_RELATION = re.compile(rb"\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?")
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def is_relation(path: bytes) -> bool:
    """Whether a path of the data directory is a relation file (cut into blocks)."""
    parts = path.split(b"/")
    if not _RELATION.fullmatch(parts[-1]):
        return False
    top = parts[0]
    return ((top == b"base" and len(parts) == 3) or (top == b"global" and len(parts) == 2)
            or (top == b"pg_tblspc" and len(parts) >= 4))


def relation_dir(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


# ------------------------------------------------------------------- WAL names
def parse_lsn(text: str) -> int:
    """``"0/2000028"`` -> 33554472; EngineError for anything else."""
    if not isinstance(text, str) or not _LSN.match(text.strip()):
        raise EngineError(f"not a WAL location: {text!r}"[:200])
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


# ------------------------------------------------------------------ tar stream
@dataclass
class Member:
    name: bytes  # relative path, no leading "./", no trailing "/"
    type: str  # "file", "dir", "symlink"
    mode: int
    uid: int
    gid: int
    user: str
    group: str
    mtime_ns: int
    size: int
    linkname: bytes = b""


def _read_exact(f, n: int) -> bytes:
    parts, left = [], n
    while left:
        data = f.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise EngineError("pg_basebackup's tar stream has a malformed pax header") from None
        record = data[space + 1:pos + length - 1]  # without the length and the newline
        key, _, value = record.partition(b"=")
        out[key] = value
        pos += length
    return out


class TarStream:
    """Members of a tar archive read from a pipe, in order, without seeking.

    Handles what pg_basebackup writes (ustar) and, should a name ever be long,
    GNU long names and pax headers. ``read_data`` must consume a member's data
    before ``next`` is called again (``next`` skips what is left)."""

    def __init__(self, f):
        self.f = f
        self.left = 0  # data bytes of the current member not yet read
        self.pad = 0
        self.ended = False  # the end-of-archive blocks were read
        self.bytes = 0  # member data bytes read so far

    def _skip(self, n: int) -> None:
        while n:
            data = self.f.read(min(n, READ))
            if not data:
                raise EngineError("pg_basebackup's tar stream ended in the middle of a member")
            n -= len(data)

    def _meta(self, size: int) -> bytes:
        if size > MAX_META:
            raise EngineError(f"pg_basebackup's tar stream has a {size}-byte header record")
        data = _read_exact(self.f, size)
        if len(data) != size:
            raise EngineError("pg_basebackup's tar stream ended in the middle of a header")
        self._skip(-size % BLOCK)
        return data

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        if self.left or self.pad:
            self._skip(self.left + self.pad)
            self.left = self.pad = 0
        long_name = long_link = None
        pax: dict[bytes, bytes] = {}
        while True:
            buf = _read_exact(self.f, BLOCK)
            if len(buf) < BLOCK:
                raise EngineError("pg_basebackup's tar stream ended before its end marker")
            if buf == bytes(BLOCK):
                self.ended = True
                return None
            try:
                info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise EngineError(f"pg_basebackup's tar stream has a bad header: {e}") from None
            t = info.type
            if t == tarfile.GNUTYPE_LONGNAME:
                long_name = self._meta(info.size).rstrip(b"\0")
                continue
            if t == tarfile.GNUTYPE_LONGLINK:
                long_link = self._meta(info.size).rstrip(b"\0")
                continue
            if t == tarfile.XHDTYPE:
                pax.update(_parse_pax(self._meta(info.size)))
                continue
            if t == tarfile.XGLTYPE:
                self._meta(info.size)
                continue
            break
        name = long_name or pax.get(b"path") or info.name.encode("utf-8", "surrogateescape")
        link = long_link or pax.get(b"linkpath") or info.linkname.encode("utf-8",
                                                                       "surrogateescape")
        size = int(pax[b"size"]) if b"size" in pax else info.size
        mtime = float(pax[b"mtime"]) if b"mtime" in pax else info.mtime
        while name.startswith(b"./"):
            name = name[2:]
        name = name.rstrip(b"/")
        if t in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            kind = "file"
        elif t == tarfile.DIRTYPE:
            kind = "dir"
        elif t == tarfile.SYMTYPE:
            kind = "symlink"
        else:
            raise EngineError(f"pg_basebackup's tar stream has member {name!r} of type {t!r}, "
                              "which a data directory does not hold")
        parts = name.split(b"/")
        if name in (b"", b".") and kind == "dir":
            kind = "root"
        elif not name or any(p in (b"", b".", b"..") for p in parts) or b"\0" in name:
            raise EngineError(f"pg_basebackup's tar stream has an unsafe name {name!r}")
        if kind == "file":
            self.left, self.pad = size, -size % BLOCK
        return Member(name, kind, info.mode & 0o7777, info.uid, info.gid, info.uname,
                      info.gname, int(mtime * 1_000_000_000), size if kind == "file" else 0,
                      link)

    def readinto(self, b) -> int:
        """Read the current member's data (at most what is left of it)."""
        if self.left <= 0:
            return 0
        mv = memoryview(b)
        if len(mv) > self.left:
            mv = mv[:self.left]
        n = self.f.readinto(mv) or 0
        if n == 0:
            raise EngineError("pg_basebackup's tar stream ended in the middle of a member")
        self.left -= n
        self.bytes += n
        return n

    def read_block(self, buf: bytearray) -> memoryview:
        """Up to len(buf) bytes of the current member, fewer only at its end."""
        mv = memoryview(buf)
        want = min(len(buf), self.left)
        got = 0
        while got < want:
            got += self.readinto(mv[got:want])
        return mv[:got]


# ------------------------------------------------------------------ the trees
def _ancestor(a: bytes, path: bytes) -> bool:
    return a == b"" or path == a or path.startswith(a + b"/")


class TreeBuilder:
    """Tree blobs from members that arrive directory by directory (depth first)."""

    def __init__(self, writer: BlobWriter):
        self.writer = writer
        self.open: list[tuple[bytes, dict[bytes, dict]]] = [(b"", {})]
        self.closed: dict[bytes, dict[bytes, dict] | None] = {}
        self.dirs = 0
        self.files = 0
        self._now = time.time_ns()
        self._empty: str | None = None

    def _save(self, entries: dict[bytes, dict]) -> str:
        nodes = [entries[k] for k in sorted(entries)]
        for node in nodes:
            if node["type"] == "dir" and "subtree" not in node:  # never entered: empty
                if self._empty is None:
                    self._empty = self.writer.save(TREE, encode_tree([]))
                node["subtree"] = self._empty
        return self.writer.save(TREE, encode_tree(nodes))

    def _close(self) -> None:
        path, entries = self.open.pop()
        tree = self._save(entries)
        parent = self.open[-1][1]
        parent[path.rpartition(b"/")[2]]["subtree"] = tree
        self.closed[path] = entries if len(entries) <= KEEP_CLOSED else None

    def _goto(self, target: bytes, like: Member) -> dict[bytes, dict]:
        while not _ancestor(self.open[-1][0], target):
            self._close()
        top = self.open[-1][0]
        if top != target:
            rest = target[len(top) + 1:] if top else target
            for comp in rest.split(b"/"):
                path = top + b"/" + comp if top else comp
                entries = self.open[-1][1]
                node = entries.get(comp)
                if node is None:  # a directory the stream did not list before its content
                    node = entries[comp] = self._dir_node(comp, like, 0o700)
                    self.dirs += 1
                if node["type"] != "dir":
                    raise EngineError(f"pg_basebackup's tar stream has {path!r} both as a "
                                      "file and as a directory")
                if len(self.open) > MAX_DEPTH:
                    raise EngineError(f"pg_basebackup's tar stream nests too deep at {path!r}")
                if path in self.closed:
                    kept = self.closed.pop(path)
                    if kept is None:
                        raise EngineError(
                            f"pg_basebackup's tar stream came back to the large directory "
                            f"{path.decode(errors='replace')} after leaving it; not supported")
                    node.pop("subtree", None)
                    self.open.append((path, kept))
                else:
                    self.open.append((path, {}))
                top = path
        return self.open[-1][1]

    def _dir_node(self, name: bytes, m: Member, mode: int | None = None) -> dict:
        node = name_fields("name", name)
        mtime = m.mtime_ns if mode is None else self._now
        node.update(type="dir", mode=m.mode if mode is None else mode, uid=m.uid, gid=m.gid,
                    user=m.user, group=m.group, mtime_ns=mtime, ctime_ns=mtime, inode=0,
                    size=0)
        return node

    def add(self, m: Member, content: list[str] | None = None,
            deltas: list[list] | None = None) -> None:
        parent, _, name = m.name.rpartition(b"/")
        entries = self._goto(parent, m)
        if m.type == "dir":
            old = entries.get(name)
            if old is not None and old["type"] == "dir":  # made before: take its metadata
                subtree = old.get("subtree")
                old.update(self._dir_node(name, m))
                if subtree:
                    old["subtree"] = subtree
            else:
                entries[name] = self._dir_node(name, m)
                self.dirs += 1
            return
        node = name_fields("name", name)
        node.update(type=m.type, mode=m.mode, uid=m.uid, gid=m.gid, user=m.user,
                    group=m.group, mtime_ns=m.mtime_ns, ctime_ns=m.mtime_ns, inode=0,
                    size=m.size)
        if m.type == "file":
            node["content"] = content or []
            if deltas:
                node[DELTA_KEY] = deltas
            self.files += 1
        else:
            node.update(name_fields("target", m.linkname))
        entries[name] = node

    def finish(self) -> str:
        while len(self.open) > 1:
            self._close()
        return self._save(self.open[0][1])


# ------------------------------------------------------------- pg_basebackup
@dataclass
class StreamResult:
    tree: str
    bytes: int  # member data bytes (the size of the data directory as sent)
    files: int
    dirs: int
    label: str  # backup_label
    manifest_wal: list[dict] = field(default_factory=list)  # its WAL-Ranges
    end_lsn: str = ""  # pg_basebackup --verbose: "write-ahead log end point"
    wal_seg_size: int = 0  # size of a WAL segment file seen in pg_wal/
    block_sizes: dict[str, int] = field(default_factory=dict)  # directories not at the default
    deltas: int = 0  # blocks stored as a delta against the parent's block


def block_size_for(default: int, dir_bytes: int) -> int:
    """The block size for a directory of relation files: the configured one, doubled
    while the directory would need more than BLOCKS_PER_DIR blocks."""
    size = default
    while dir_bytes // size > BLOCKS_PER_DIR and size < 4 * 1024 * 1024:
        size *= 2
    return size


def explain_failure(name: str, rc: int, stderr: str, user: str) -> str:
    """One line for a pg_basebackup that failed: the cause in words, its own words after."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    first = (errors or lines or ["no message"])[0]
    first = re.sub(r"^pg_basebackup: (error: )?", "", first)
    low = stderr.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        why = f"authentication failed for user {user!r}"
    elif "pg_hba.conf" in low and "replication" in low:
        why = (f"the server does not accept replication connections from user {user!r} "
               "(pg_hba.conf needs a 'replication' line for it)")
    elif "superuser or replication role" in low or "permission denied to start" in low:
        why = f"user {user!r} may not take base backups (needs the REPLICATION attribute)"
    elif "max_wal_senders" in low or "too many clients" in low or \
            "exceeds max_wal_senders" in low:
        why = "no free WAL sender on the server (raise max_wal_senders)"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low:
        why = "server unreachable (is it running, and are host and port right?)"
    elif "single tablespace to stdout" in low:
        why = ("the cluster has tablespaces, which a tar stream to a pipe cannot carry "
               "(not supported yet)")
    else:
        why = first
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    return (f"cluster {name!r}: pg_basebackup {how}: {why} [{first[:300]}]; "
            "no snapshot was written")


class ParentBlocks:
    """The relation files of the parent base backup, so a block that changed since can be
    stored as a delta against the parent's block (engine/repo/blockdelta.py, format 1.2).

    The stream visits the data directory depth first, so one directory's tree is held at
    a time (and the trees on the way to it). A parent that cannot be read is no parent:
    the blocks are stored whole, as in a first backup."""

    def __init__(self, repo: Repository, snap: dict):
        self.repo = repo
        self.default = int(snap.get("block_size") or 0)
        sizes = snap.get("block_sizes")
        self.sizes = sizes if isinstance(sizes, dict) else {}
        root = snap.get("tree")
        self._trees: dict[bytes, str | None] = {b"": root if isinstance(root, str) else None}
        self._dir: bytes | None = None
        self._nodes: dict[bytes, dict] = {}

    def block_size(self, directory: bytes) -> int:
        v = self.sizes.get(directory.decode(errors="replace"), self.default)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    def _children(self, directory: bytes) -> dict[bytes, dict]:
        from engine.repo.walk import children

        tid = self._tree_of(directory)
        if tid is None:
            return {}
        try:
            return dict(children(self.repo, tid, directory.decode(errors="replace")))
        except EngineError:
            return {}

    def _tree_of(self, directory: bytes) -> str | None:
        if directory in self._trees:
            return self._trees[directory]
        up, _, name = directory.rpartition(b"/")
        tid = None
        if self._tree_of(up) is not None:
            node = (self._nodes if self._dir == up else self._children(up)).get(name)
            if node is not None and node.get("type") == "dir" and isinstance(
                    node.get("subtree"), str):
                tid = node["subtree"]
        if len(self._trees) > 4096:
            self._trees = {b"": self._trees[b""]}
        self._trees[directory] = tid
        return tid

    def file(self, path: bytes, block_size: int) -> tuple[list, dict[int, tuple[str, str]]]:
        """(content, delta entries) of the parent's file at ``path`` when it was cut into
        blocks of ``block_size``; ([], {}) otherwise."""
        directory, _, name = path.rpartition(b"/")
        if self.block_size(directory) != block_size:
            return [], {}
        if directory != self._dir:
            self._nodes = self._children(directory)
            self._dir = directory
        node = self._nodes.get(name)
        if node is None or node.get("type") != "file":
            return [], {}
        content = node.get("content")
        if not isinstance(content, list):
            return [], {}
        try:
            return content, node_deltas(node, path.decode(errors="replace"))
        except EngineError:
            return [], {}

    def delta(self, block: memoryview, base_id: object) -> bytes | None:
        """The delta of ``block`` against the parent's block ``base_id`` when it is far
        smaller than the block, else None."""
        # Opened (authenticated where encrypted) but its id not computed again: a reader
        # rebuilds the block from these very stored bytes and checks the result against
        # the block's own id, and verify --read-data checks every blob's id.
        try:
            base = self.repo.load_blob(base_id, DATA, check_id=False)
        except EngineError:  # not a data blob, missing, damaged: the block stored whole
            return None
        return make_delta(block, base)  # None for a base of another length


def enlarge_pipe(f) -> None:
    """A 1 MiB pipe buffer (F_SETPIPE_SZ), so the writer goes on while we work on a chunk."""
    try:
        import fcntl

        fcntl.fcntl(f.fileno(), 1031, PIPE_SIZE)  # F_SETPIPE_SZ
    except (OSError, ImportError, AttributeError, ValueError):
        pass


def stream_basebackup(
    repo: Repository,
    writer: BlobWriter,
    name: str,
    cmd: list[str],
    env: dict[str, str],
    user: str,
    block_for: Callable[[bytes], int],
    progress: Callable[[int, str], None],
    cancel: CancelToken,
    parent: ParentBlocks | None = None,
) -> StreamResult:
    """Run pg_basebackup (``cmd``, writing a tar to stdout) and store its stream. With
    ``parent``, a relation file's block that changed since it is stored as a delta
    against the parent's block where that is far smaller (file node key ``delta``)."""
    mn, avg, mx, seed = repo.chunker_params()
    cdc = pyfastcdc.FastCDC(avg, min_size=mn, max_size=mx, seed=seed)
    trees = TreeBuilder(writer)
    label = b""
    manifest = bytearray()
    manifest_ok = True
    wal_seg = 0
    used_sizes: dict[str, int] = {}
    buffers: dict[int, bytearray] = {}
    dir_budget: dict[bytes, list[int]] = {}  # estimated tree bytes of each directory
    res_deltas = [0]
    blob_id = repo.keys.blob_id
    judges = ThreadPoolExecutor(max_workers=2, thread_name_prefix="delta")

    def judge(data: bytes, was: object, base: object, may: bool) -> tuple[str, bytes | None]:
        """A block's id, and its delta against ``base`` when it changed (hashing,
        reading the base and zstd let go of the GIL: two of these run at once)."""
        fid = blob_id(data)
        if fid == was or not may or parent is None:
            return fid, None
        return fid, parent.delta(data, base)

    def take(judged: collections.deque, content: list, deltas: list, budget: list) -> None:
        """The oldest judged block into the file's content, in order."""
        at, data, was, pair, base, fut = judged.popleft()
        fid, d = fut.result()
        if fid == was and pair is not None:  # unchanged, a delta before
            content.append(fid)
            deltas.append([at, pair[0], pair[1]])
            budget[0] += 150
        elif d is None:
            content.append(writer.save(DATA, data, fid))
        else:
            deltas.append([at, writer.save(DATA, d), base])
            content.append(fid)
            budget[0] += 150
            res_deltas[0] += 1
    last = 0.0
    inflight = writer.max_inflight  # counted in blobs: sized for ~1 MiB chunks
    with tempfile.TemporaryFile() as err, judges:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, bufsize=READ)
        try:
            assert proc.stdout is not None
            enlarge_pipe(proc.stdout)
            tar = TarStream(proc.stdout)
            while True:
                m = tar.next()
                cancel.check()
                if m is None:
                    break
                if m.type == "root":
                    continue
                if m.type != "file":
                    trees.add(m)
                    continue
                content: list[str] = []
                deltas: list[list] = []
                if is_relation(m.name):
                    size = block_for(relation_dir(m.name))
                    if size != block_for(b""):
                        used_sizes[relation_dir(m.name).decode(errors="replace")] = size
                    buf = buffers.setdefault(size, bytearray(size))
                    # small blocks: more of them in flight, the same bytes
                    writer.max_inflight = max(inflight, INFLIGHT_BYTES // size)
                    pcontent, pdelta = parent.file(m.name, size) if parent else ([], {})
                    budget = dir_budget.setdefault(relation_dir(m.name), [0])
                    judged: collections.deque = collections.deque()

                    i = -1
                    while True:
                        block = tar.read_block(buf)
                        if not block:
                            break
                        i += 1
                        budget[0] += 70
                        if i >= len(pcontent):  # no parent block: stored whole
                            while judged:
                                take(judged, content, deltas, budget)
                            content.append(writer.save(DATA, block))
                        else:  # hashed, and a delta made if it changed, on the judges
                            data = bytes(block)
                            was, pair = pcontent[i], pdelta.get(i)
                            base = pair[1] if pair else was
                            judged.append((i, data, was, pair, base, judges.submit(
                                judge, data, was, base, budget[0] < DIR_TREE_BUDGET)))
                            if len(judged) >= JUDGE_AHEAD:
                                take(judged, content, deltas, budget)
                        now = time.monotonic()
                        if now - last > 0.1:
                            last = now
                            progress(tar.bytes, m.name.decode(errors="replace"))
                            cancel.check()
                    while judged:
                        take(judged, content, deltas, budget)
                else:
                    writer.max_inflight = inflight
                    keep = m.name in (b"backup_label", b"backup_manifest")
                    for chunk in cdc.cut_stream(tar):
                        content.append(writer.save(DATA, chunk.data))
                        if m.name == b"backup_label" and len(label) < MAX_META:
                            label += bytes(chunk.data)
                        elif keep and manifest_ok:
                            if len(manifest) + chunk.length > MAX_MANIFEST:
                                manifest_ok = False
                                manifest.clear()
                            else:
                                manifest += chunk.data
                        now = time.monotonic()
                        if now - last > 0.1:
                            last = now
                            progress(tar.bytes, m.name.decode(errors="replace"))
                            cancel.check()
                    if tar.left:  # the chunker stopped early: cannot happen, but never lose data
                        raise EngineError(f"{m.name!r}: not read to its end")
                    if m.name.startswith(b"pg_wal/") and re.fullmatch(
                            rb"pg_wal/[0-9A-F]{24}", m.name):
                        wal_seg = max(wal_seg, m.size)
                trees.add(m, content, deltas)
            rest = proc.stdout.read(READ)  # the tar may be padded to a record size
            while rest:
                if rest.strip(b"\0"):
                    raise EngineError("pg_basebackup wrote data after the end of its archive")
                rest = proc.stdout.read(READ)
            rc = proc.wait()
            writer.max_inflight = inflight
        except Cancelled:
            writer.max_inflight = inflight
            proc.kill()
            proc.wait()
            raise
        except BaseException as e:
            # a stream that broke off is pg_basebackup's failure when it failed: say that
            rc = proc.poll()
            if rc is None and isinstance(e, EngineError):
                try:
                    rc = proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    rc = None
            if rc is None:
                proc.kill()
                proc.wait()
            if not rc or not isinstance(e, EngineError):
                raise
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if rc != 0:
        raise EngineError(explain_failure(name, rc, stderr, user))
    if not tar.ended:
        raise EngineError(f"cluster {name!r}: pg_basebackup's tar stream has no end marker; "
                          "no snapshot was written")
    if not label:
        raise EngineError(f"cluster {name!r}: pg_basebackup sent no backup_label; "
                          "no snapshot was written")
    tree = trees.finish()
    wal_ranges: list[dict] = []
    if manifest and manifest_ok:
        try:
            doc = json.loads(bytes(manifest))
            wal_ranges = [r for r in doc.get("WAL-Ranges", []) if isinstance(r, dict)]
        except (ValueError, AttributeError):
            wal_ranges = []
    end = re.search(r"write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)", stderr)
    return StreamResult(tree, tar.bytes, trees.files, trees.dirs,
                        label.decode("utf-8", "replace"), wal_ranges,
                        end.group(1) if end else "", wal_seg, used_sizes, res_deltas[0])


# ------------------------------------------------------------------ the facts
def parse_label(text: str) -> dict:
    """The lines of a backup_label as a dict: ``START WAL LOCATION`` -> ``0/2000028
    (file ...)``, ..."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def label_time(text: str) -> str | None:
    """``START TIME`` of a label (``2024-05-01 12:00:00 UTC``) as ISO 8601 UTC, when its
    zone is UTC or a numeric offset; None otherwise (zone abbreviations are ambiguous)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(\S*)", text.strip())
    if not m:
        return None
    zone = m.group(2)
    try:
        if zone in ("UTC", "GMT", "Z", ""):
            dt = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        elif re.fullmatch(r"[+-]\d\d(:?\d\d)?", zone):
            z = zone if len(zone) > 3 else zone + "00"
            dt = datetime.strptime(m.group(1) + " " + z.replace(":", ""),
                                   "%Y-%m-%d %H:%M:%S %z")
        else:
            return None
    except ValueError:
        return None
    return dt.astimezone(UTC).isoformat()


def postgres_facts(res: StreamResult, server: dict, started: str, stopped: str) -> dict:
    """The snapshot's ``postgres`` object (docs/FORMAT.md, 6.3)."""
    label = parse_label(res.label)
    start = re.match(r"([0-9A-Fa-f]+/[0-9A-Fa-f]+)", label.get("START WAL LOCATION", ""))
    if not start:
        raise EngineError("pg_basebackup's backup_label has no START WAL LOCATION")
    start_lsn = start.group(1)
    try:
        timeline = int(label.get("START TIMELINE", "1"))
    except ValueError:
        timeline = 1
    stop_tl = timeline
    stop_lsn = ""
    if res.manifest_wal:
        last = res.manifest_wal[-1]
        stop_lsn = str(last.get("End-LSN", ""))
        if isinstance(last.get("Timeline"), int):
            stop_tl = last["Timeline"]
    if not stop_lsn:
        stop_lsn = res.end_lsn
    if not stop_lsn:
        raise EngineError("pg_basebackup told no end of the backup's WAL (no manifest, no "
                          "'write-ahead log end point')")
    seg = int(server.get("wal_segment_size") or res.wal_seg_size or 16 * 1024 * 1024)
    start_n, stop_n = parse_lsn(start_lsn), parse_lsn(stop_lsn)
    facts = {
        "system_identifier": str(server["system_identifier"]),
        "timeline": timeline,
        "start_lsn": format_lsn(start_n),
        "stop_lsn": format_lsn(stop_n),
        "start_wal": wal_file_name(timeline, start_n // seg, seg),
        "stop_wal": wal_file_name(stop_tl, max(stop_n - 1, start_n) // seg, seg),
        "backup_label": res.label,
        "server_version": int(server["server_version"]),
        "server_major": int(server["server_version"]) // 10000,
        "start_time": label_time(label.get("START TIME", "")) or started,
        "stop_time": stopped,
        "wal_segment_size": seg,
    }
    if stop_tl != timeline:
        facts["stop_timeline"] = stop_tl
    checkpoint = re.match(r"([0-9A-Fa-f]+/[0-9A-Fa-f]+)", label.get("CHECKPOINT LOCATION", ""))
    if checkpoint:
        facts["checkpoint_lsn"] = checkpoint.group(1)
    return facts


def parse_setting_bytes(text: str) -> int:
    """``16MB`` (SHOW wal_segment_size) -> 16777216; 0 when unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*([kMGT]?B)?\s*", text or "")
    if not m:
        return 0
    unit = {None: 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
    return int(m.group(1)) * unit[m.group(2)]


def now_utc() -> str:
    return datetime.now(UTC).isoformat()


__all__ = ["TarStream", "TreeBuilder", "StreamResult", "stream_basebackup", "is_relation",
           "ParentBlocks",
           "parse_lsn", "format_lsn", "wal_file_name", "postgres_facts", "block_size_for"]
