"""dump: write a snapshot in its native form to a stream.

A snapshot with a tree (files, a directory-format pg_dump) becomes a POSIX
pax tar stream (``tarfile.PAX_FORMAT``) that GNU tar extracts as it would its
own ``tar --format=pax --xattrs --acls`` archive:

- every member has a pax header with ``mtime`` to the nanosecond (``ctime``
  and ``atime`` too when the node stores them);
- names and link targets are the raw bytes: long ones and ones that are not
  UTF-8 go in pax ``path``/``linkpath`` as those bytes, which is how GNU tar
  writes and reads them (no ``hdrcharset`` record: GNU tar 1.34 warns about
  it); owner names and numeric ids, device numbers, fifos, symlinks, empty
  directories, setuid/setgid/sticky bits;
- nodes with ``links`` > 1 and the same (``dev``, ``inode``) are one file: the
  first is a regular member, later ones are hard links (LNKTYPE) to its path
  (only when they agree on what they hold, so inconsistent nodes never lose
  data: such a node is written whole);
- ``xattrs`` become ``SCHILY.xattr.NAME`` records (``=`` and ``%`` in NAME as
  ``%3D``/``%25``); the POSIX ACL xattrs also become ``SCHILY.acl.access`` /
  ``SCHILY.acl.default`` in the text form GNU tar writes (one entry a line,
  numeric ids), so ``tar --xattrs --xattrs-include='*' --acls -xpf -`` restores
  them and so does ``tar --acls -xpf -`` alone;
- a file with ``holes`` (zero ranges; its content still covers the whole file)
  is a GNU sparse member (pax format 1.0: ``GNU.sparse.*`` records, a map of
  its data ranges, then only those), which GNU tar extracts as a sparse file.
  The holes are first checked to be zeros in the content (reading only the
  blobs that overlap them, each once); if they are not, or the blobs' sizes
  do not add up, the file is written plainly, which is always right;
- a file whose blocks are partly stored as deltas (``delta``, format 1.2,
  engine/repo/blockdelta.py) has those blocks rebuilt from their two blobs and
  checked against their ids; its ``delta`` list is checked before its member is
  written, and it is always written plainly (never as a sparse member);
- sockets are skipped with a warning (they cannot be restored).

A stream snapshot (a custom-format pg_dump archive) is written as its bytes.
Blobs are fetched one at a time: nothing is held whole. This is the escape
hatch: ``backup-tui dump ID | tar -x``. A reader that stops early makes the
write raise ``BrokenPipeError``, which is left to the caller (the CLI treats it
as a normal end).
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import logging
import os
import posixpath
import struct
import tarfile
from collections.abc import Callable, Iterable
from typing import BinaryIO

from engine.errors import IntegrityError, UsageError
from engine.repo.blockdelta import load_piece, node_deltas
from engine.repo.repository import Repository
from engine.repo.tree import link_target
from engine.repo.walk import find, walk

log = logging.getLogger("backup_tui.engine.dump")

Warn = Callable[[str], None]

COPY_BUFFER = 1024 * 1024

ACL_XATTRS = {
    b"system.posix_acl_access": "SCHILY.acl.access",
    b"system.posix_acl_default": "SCHILY.acl.default",
}
# tag -> text word, for the kernel's binary ACL (linux/posix_acl_xattr.h)
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask",
             0x20: "other"}
_ACL_QUALIFIED = (0x02, 0x08)  # ACL_USER, ACL_GROUP carry an id
_ACL_VERSION = 2


def socket_skipped(path: bytes) -> str:
    """The warning for a socket; the same words as restore's."""
    return f"socket {os.fsdecode(path)}: skipped (sockets cannot be restored)"


class BlobStream(io.RawIOBase):
    """A read-only file over a list of blob ids, each verified on read. ``delta``: the
    blocks stored as deltas (``{i: (delta_id, base_id)}``, engine/repo/blockdelta.py), each
    rebuilt from its two blobs and checked against its id (IntegrityError naming
    ``where`` and the block)."""

    def __init__(self, repo: Repository, blob_ids: list[str],
                 deltas: dict[int, tuple[str, str]] | None = None, where: str = ""):
        self.repo = repo
        self.ids = list(blob_ids)
        self.deltas = deltas or {}
        self.where = where
        self.pos = 0
        self.buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self.buf and self.pos < len(self.ids):
            pair = self.deltas.get(self.pos) if self.deltas else None
            if pair is None:
                self.buf = memoryview(self.repo.load_blob(self.ids[self.pos], "data"))
            else:
                self.buf = memoryview(load_piece(self.repo, self.ids[self.pos], *pair,
                                                 f"{self.where} (block {self.pos})"))
            self.pos += 1
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


# ------------------------------------------------------------------ pax records


def pax_record(keyword: str | bytes, value: str | bytes) -> bytes:
    """One ``"%d %s=%s\\n"`` record; str parts are UTF-8 with surrogates as raw bytes."""
    k = keyword if isinstance(keyword, bytes) else keyword.encode("utf-8", "surrogateescape")
    v = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    body = b" " + k + b"=" + v + b"\n"
    n = len(body)
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


class _PaxInfo(tarfile.TarInfo):
    """A TarInfo whose pax records keep raw bytes as they are.

    Python's tarfile marks a header holding bytes that are not UTF-8 with
    ``hdrcharset=BINARY``; GNU tar reads the raw bytes right but warns about the
    unknown keyword on every member, and GNU tar itself never writes it. Values
    may also be bytes (xattr values), and keywords may hold raw bytes (xattr
    names)."""

    @classmethod
    def _create_pax_generic_header(cls, pax_headers, type, encoding):  # noqa: A002
        records = b"".join(pax_record(k, v) for k, v in pax_headers.items())
        info = {"name": "././@PaxHeader", "type": type, "size": len(records),
                "magic": tarfile.POSIX_MAGIC}
        return (cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace")
                + cls._create_payload(records))


class _Out:
    """The output as tarfile needs it (write, tell) with no buffering of its own:
    a pipe cannot tell, and tarfile's stream mode copies every block once more."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.pos = 0

    def write(self, data) -> int:
        self.out.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


# ------------------------------------------------------------------ node fields


def _int(node: dict, key: str, default: int, path: bytes) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise IntegrityError(f"{os.fsdecode(path)}: malformed {key} {value!r} in the snapshot")
    return value


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def pax_time(ns: int) -> str:
    """Nanoseconds since the epoch as a pax time: seconds with 9 decimals."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def acl_text(raw: bytes) -> str:
    """The kernel's binary POSIX ACL (``system.posix_acl_*``) as the text GNU tar
    writes in ``SCHILY.acl.*``: ``user::rw-\\nuser:1000:r--\\n...`` (numeric ids,
    which ``tar -x`` resolves as ids). ValueError for a malformed value."""
    if len(raw) < 4 or (len(raw) - 4) % 8:
        raise ValueError(f"length {len(raw)}")
    (version,) = struct.unpack_from("<I", raw)
    if version != _ACL_VERSION:
        raise ValueError(f"version {version}")
    lines = []
    for off in range(4, len(raw), 8):
        tag, perm, qid = struct.unpack_from("<HHI", raw, off)
        if tag not in _ACL_TAGS or perm & ~0o7:
            raise ValueError(f"entry tag {tag:#x} perm {perm:#o}")
        who = str(qid) if tag in _ACL_QUALIFIED else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{_ACL_TAGS[tag]}:{who}:{rwx}\n")
    return "".join(lines)


def xattr_keyword(name: bytes) -> bytes:
    """``SCHILY.xattr.NAME`` with ``%`` and ``=`` escaped the way GNU tar does."""
    return b"SCHILY.xattr." + name.replace(b"%", b"%25").replace(b"=", b"%3D")


def xattr_records(node: dict, path: bytes, warn: Warn) -> dict:
    """pax records for the node's ``xattrs`` (``[[name_b64, value_b64], ...]``)."""
    pairs = node.get("xattrs") or []
    if not isinstance(pairs, list):
        raise IntegrityError(f"{os.fsdecode(path)}: malformed xattrs in the snapshot")
    acls: dict = {}
    raw: dict = {}
    for pair in pairs:
        try:
            name_b64, value_b64 = pair
            name = base64.b64decode(name_b64, validate=True)
            value = base64.b64decode(value_b64, validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise IntegrityError(f"{os.fsdecode(path)}: malformed xattr {pair!r} in the snapshot"
                                 ) from None
        if not name or b"\x00" in name:
            raise IntegrityError(f"{os.fsdecode(path)}: malformed xattr name {name!r}")
        if name in ACL_XATTRS:
            try:
                acls[ACL_XATTRS[name]] = acl_text(value)
            except ValueError as e:
                warn(f"{os.fsdecode(path)}: ACL {_text(name)} not readable ({e}): "
                     "kept as a raw xattr only")
        raw[xattr_keyword(name)] = value
    return {**acls, **raw}  # GNU tar's order: the ACLs, then the xattrs


def tarinfo(path: bytes, node: dict, warn: Warn = log.warning) -> tarfile.TarInfo:
    """The member for one node (not for a socket); its data, if any, follows."""
    ti = _PaxInfo(_text(path))
    ti.mode = _int(node, "mode", 0o644, path) & 0o7777
    ti.uid = _int(node, "uid", 0, path)
    ti.gid = _int(node, "gid", 0, path)
    ti.uname = str(node.get("user", "") or "")
    ti.gname = str(node.get("group", "") or "")
    mtime = _int(node, "mtime_ns", 0, path)
    ti.mtime = mtime // 1_000_000_000
    pax = {"mtime": pax_time(mtime)}
    for key, field in (("atime_ns", "atime"), ("ctime_ns", "ctime")):
        if key in node:
            pax[field] = pax_time(_int(node, key, 0, path))
    typ = node["type"]
    if typ == "file":
        ti.type = tarfile.REGTYPE
        ti.size = _int(node, "size", 0, path)
    elif typ == "dir":
        ti.type = tarfile.DIRTYPE
    elif typ == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = _text(link_target(node))
    elif typ == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif typ in ("chardev", "blockdev"):
        ti.type = tarfile.CHRTYPE if typ == "chardev" else tarfile.BLKTYPE
        rdev = _int(node, "rdev", 0, path)
        ti.devmajor, ti.devminor = os.major(rdev), os.minor(rdev)
    else:
        raise IntegrityError(f"{os.fsdecode(path)}: cannot dump an entry of type {typ!r}")
    pax.update(xattr_records(node, path, warn))
    ti.pax_headers = pax
    return ti


def _hardlink_key(node: dict) -> tuple | None:
    """(dev, inode) of a node that shares its file with other nodes, else None."""
    if node.get("type") == "dir":
        return None
    links, dev, inode = node.get("links"), node.get("dev"), node.get("inode")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (links, dev, inode)):
        return None
    if links < 2 or not inode:  # type: ignore[operator]
        return None
    return (dev, inode)


def _same_file(a: dict, b: dict) -> bool:
    """Two nodes of one (dev, inode) that agree on what a link would share."""
    keys = ("type", "content", "delta", "size", "rdev", "target", "target_b64")
    return all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------------- sparse


def data_ranges(node: dict, size: int) -> list[tuple[int, int]] | None:
    """The file's data ranges ``(offset, length)`` between its ``holes``, closed by
    ``(size, 0)`` when it ends in a hole (as GNU tar writes the map); None when the
    node has no holes or they are not sorted, disjoint ranges inside the file."""
    holes = node.get("holes")
    if not holes or not isinstance(holes, list):
        return None
    ranges = []
    pos = 0
    for hole in holes:
        if not (isinstance(hole, list) and len(hole) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in hole)):
            return None
        off, length = hole
        if off < pos or length <= 0 or off + length > size:
            return None
        if off > pos:
            ranges.append((pos, off - pos))
        pos = off + length
    ranges.append((pos, size - pos) if pos < size else (size, 0))
    return ranges


def _blob_spans(repo: Repository, content: list, size: int) -> list[tuple[str, int, int]] | None:
    """(blob id, offset in the file, length) from the index; None if they do not
    add up to size."""
    spans, pos = [], 0
    for bid in content:
        entry = repo.index.get(bid) if isinstance(bid, str) else None
        if entry is None:
            return None
        spans.append((bid, pos, entry.raw_length))
        pos += entry.raw_length
    return spans if pos == size else None


def _load(repo: Repository, bid: str, length: int, name: str) -> bytes:
    data = repo.load_blob(bid, "data")
    if len(data) != length:
        raise IntegrityError(f"{name}: blob {bid} holds {len(data)} bytes, the index says "
                             f"{length}", bid)
    return data


def _holes_are_zeros(repo: Repository, spans, ranges, size: int, name: str) -> bool:
    """Every byte outside the data ranges is zero in the stored content."""
    holes, pos = [], 0
    for off, length in ranges:
        if off > pos:
            holes.append((pos, off))
        pos = off + length
    if pos < size:
        holes.append((pos, size))
    zero_blobs: set[str] = set()
    for bid, start, length in spans:
        end = start + length
        parts = [(max(a, start), min(b, end)) for a, b in holes if a < end and b > start]
        if not parts or bid in zero_blobs:
            continue
        data = _load(repo, bid, length, name)
        if not any(data[a - start : b - start].strip(b"\0") for a, b in parts):
            if not data.strip(b"\0"):
                zero_blobs.add(bid)
            continue
        return False
    return True


class _Chunks(io.RawIOBase):
    """A read-only file over an iterator of byte strings."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks = iter(chunks)
        self.buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self.buf:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.buf = memoryview(chunk)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def _sparse_data(repo: Repository, spans, ranges, name: str) -> Iterable[bytes]:
    """The data ranges' bytes, in order; blobs wholly in a hole are not read."""
    for bid, start, length in spans:
        end = start + length
        parts = [(max(a, start), min(a + n, end)) for a, n in ranges
                 if n and a < end and a + n > start]
        if not parts:
            continue
        data = memoryview(_load(repo, bid, length, name))
        for a, b in parts:
            yield data[a - start : b - start]


def sparse_member(repo: Repository, ti: tarfile.TarInfo, node: dict,
                  ) -> tuple[tarfile.TarInfo, io.BufferedReader] | None:
    """The member and data of a file with holes as a GNU sparse 1.0 member, or None
    to write it plainly (no holes, or holes that are not zeros in the content)."""
    ranges = data_ranges(node, ti.size)
    content = node.get("content")
    if ranges is None or not isinstance(content, list):
        return None
    spans = _blob_spans(repo, content, ti.size)
    if spans is None or not _holes_are_zeros(repo, spans, ranges, ti.size, ti.name):
        return None
    text = f"{len(ranges)}\n" + "".join(f"{off}\n{n}\n" for off, n in ranges)
    head = text.encode("ascii")
    head += b"\0" * (-len(head) % tarfile.BLOCKSIZE)
    real = ti.name
    sparse = _PaxInfo(posixpath.join(posixpath.dirname(real), "GNUSparseFile.0",
                                     posixpath.basename(real)))
    for attr in ("mode", "uid", "gid", "uname", "gname", "mtime", "type"):
        setattr(sparse, attr, getattr(ti, attr))
    sparse.size = len(head) + sum(n for _, n in ranges)
    # path first: a reader that applies records in order (Python's tarfile) must end
    # with GNU.sparse.name; GNU tar prefers GNU.sparse.name whatever the order
    sparse.pax_headers = {"path": sparse.name, "GNU.sparse.major": "1",
                          "GNU.sparse.minor": "0", "GNU.sparse.name": real,
                          "GNU.sparse.realsize": str(ti.size), **ti.pax_headers}
    data = _Chunks(itertools.chain([head], _sparse_data(repo, spans, ranges, real)))
    return sparse, io.BufferedReader(data, COPY_BUFFER)


# ------------------------------------------------------------------------ dump


def members(items: Iterable[tuple[bytes, dict]], warn: Warn = log.warning,
            ) -> Iterable[tuple[tarfile.TarInfo, dict | None]]:
    """(member, node whose content follows or None) for each entry, in order."""
    first: dict[tuple, tuple[bytes, dict]] = {}
    for path, node in items:
        if node["type"] == "socket":
            warn(socket_skipped(path))
            continue
        ti = tarinfo(path, node, warn)
        key = _hardlink_key(node)
        if key is not None:
            seen = first.get(key)
            if seen is None:
                first[key] = (path, node)
            elif _same_file(seen[1], node):
                ti.type = tarfile.LNKTYPE
                ti.linkname = _text(seen[0])
                ti.size = 0
                ti.pax_headers = {k: v for k, v in ti.pax_headers.items()
                                  if not (isinstance(k, bytes) or k.startswith("SCHILY."))}
                yield ti, None
                continue
        yield ti, node if ti.type == tarfile.REGTYPE else None


def dump_files(repo: Repository, snap: dict, out: BinaryIO, path: str | None = None,
               warn: Warn | None = None) -> int:
    """Write the snapshot (or the entry at path) as a pax tar stream; returns the
    number of members written."""
    warn = warn or log.warning
    if path:
        sel, node = find(repo, snap["tree"], path)
        items: Iterable[tuple[bytes, dict]] = [(sel, node)]
        if node["type"] == "dir":
            items = itertools.chain(items, walk(repo, node["subtree"], sel))
    else:
        items = walk(repo, snap["tree"])
    count = 0
    with tarfile.open(fileobj=_Out(out), mode="w", format=tarfile.PAX_FORMAT,
                      tarinfo=_PaxInfo, encoding="utf-8", errors="surrogateescape",
                      copybufsize=COPY_BUFFER) as tar:
        for ti, node in members(items, warn):
            if node is None:
                tar.addfile(ti)
            else:
                content = node.get("content", [])
                if not isinstance(content, list):
                    raise IntegrityError(f"{ti.name}: malformed content list in the snapshot")
                # blocks stored as deltas (format 1.2): checked before anything of the
                # member is written; such a file is written plainly, never as sparse
                deltas = node_deltas(node, ti.name)
                sparse = sparse_member(repo, ti, node) if not deltas else None
                if sparse is not None:
                    tar.addfile(*sparse)
                    count += 1
                    continue
                data = io.BufferedReader(BlobStream(repo, content, deltas, ti.name), COPY_BUFFER)
                try:
                    tar.addfile(ti, data)
                except OSError as e:
                    if isinstance(e, BrokenPipeError) or "unexpected end of data" not in str(e):
                        raise
                    raise IntegrityError(f"{ti.name}: content is shorter than its size "
                                         f"{ti.size}") from None
                if data.read(1):
                    raise IntegrityError(f"{ti.name}: content is longer than its size {ti.size}")
            count += 1
    return count


def dump_stream(repo: Repository, snap: dict, out: BinaryIO) -> int:
    total = 0
    for bid in snap.get("stream", []):
        data = repo.load_blob(bid, "data")
        out.write(data)
        total += len(data)
    return total


def dump(repo: Repository, snap: dict, out: BinaryIO, path: str | None = None,
         warn: Warn | None = None) -> int:
    """Write the snapshot to out; warnings (skipped sockets) go to warn, by default
    to the ``backup_tui.engine.dump`` logger."""
    if "tree" in snap:  # files, and directory-format database dumps
        return dump_files(repo, snap, out, path, warn)
    if path:
        raise UsageError("--path applies to files snapshots only")
    return dump_stream(repo, snap, out)
