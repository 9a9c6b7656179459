"""The in-memory index (blob id -> where the blob is stored), compact enough for
millions of blobs, and a local cache of parsed index files.

``CompactIndex`` is a mapping from blob id (64 lowercase hex digits) to ``IndexEntry``
that keeps its rows in numpy columns: the 32-byte ids, a pack number (into a table of
pack ids), offset, length, raw length (uint32 each: every bound in FORMAT.md fits) and
the type (uint8), about 50 bytes a blob where a dict of dataclasses took about 500. A
lookup goes through the ids' first 8 bytes, sorted, and a table of where each value of
their top bits starts (ids are hashes, so each bucket holds about one id); the whole id
is compared before a row is used. Rows a commit adds go into a second, smaller set of
columns (merged with each add, and into the first once a quarter of its size: the new
rows are sorted alone and the sorted views merged, and merged columns keep room to take
the next rows in place, so no merge copies or sorts every row), so a backup's commit
costs memory in proportion to what it adds; entries assigned one at a
time (repair, a small commit) and ids that are not 64 lowercase hex digits live in a
small dict beside them, folded into the columns when it grows.

``IndexCache`` keeps each parsed index file in the state directory under its name
(index files are immutable and named by the hash of their stored bytes): one binary
file of the same columns, with a SHA-256 of its content, its rows checked against the
same bounds as ``check_index`` when read. A repository of 2 million blobs then loads
from about 100 MB of columns instead of 220 MB of JSON. A cache file that is missing,
damaged or unreadable is ignored: the index file is read as usual and cached again.

An index file the cache does not hold (the first open on a machine, after another
host's backup or prune) is read by ``parse_canonical`` when its text is exactly the
canonical JSON the program writes: numpy over the bytes into the same columns, with no
Python object per row. Any other text goes through json.loads and ``check_index`` as
before, with the same errors. The columns grow file by file, so such a file goes into
them at once (and into its cache file), never read back.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import hashlib
import itertools
import logging
import os
import re
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError, IntegrityError
from engine.repo import codec
from engine.repo.pack import BLOB_TYPES, MAX_PACK, MAX_SEALED_BLOB

log = logging.getLogger("backup_tui.engine")
_HEX64 = re.compile(r"[0-9a-f]{64}")
TYPE_CODE = {t: i for i, t in enumerate(BLOB_TYPES)}
_U32 = 2**32
_LITTLE = sys.byteorder == "little"


class _LazyNumpy:
    """numpy, imported at first use (about 0.1 s): opening the console or running a
    command that never loads an index does not pay for it."""

    def __getattr__(self, name: str) -> Any:
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np: Any = _LazyNumpy()


@dataclass(frozen=True)
class IndexEntry:
    pack_id: str
    type: str
    offset: int
    length: int
    raw_length: int


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off while millions of rows are parsed: its passes over the
    growing heap took most of the time (json.loads of one 55 MB index file: 1.0 s with
    it, 0.3 s without). Nothing parsed here forms a cycle."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class CheckedIndex:
    """One index record's rows, every one checked (``check_index``), in file order:
    ``packs`` is [(pack id, size)], and the row lists are parallel (``pack`` numbers a
    pack of ``packs``)."""

    __slots__ = ("packs", "pack", "type", "ids", "offset", "length", "raw")

    def __init__(self) -> None:
        self.packs: list[tuple[str, int]] = []
        self.pack: list[int] = []
        self.type: list[int] = []
        self.ids: list[str] = []
        self.offset: list[int] = []
        self.length: list[int] = []
        self.raw: list[int] = []


def check_index(doc: object, name: str) -> CheckedIndex:
    """An index record's rows, every one checked: a pack id of 64 hex digits, a size up
    to MAX_PACK, rows inside the pack (before its header length) with a length up to
    MAX_SEALED_BLOB. IntegrityError naming the index file, the pack and the blob
    otherwise."""
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{name}: {why}"[:500], name)

    if not isinstance(doc, dict) or not isinstance(doc.get("packs", []), list):
        raise bad("malformed (no list of packs)")
    out = CheckedIndex()
    a_pack, a_type, a_id = out.pack.append, out.type.append, out.ids.append
    a_off, a_len, a_raw = out.offset.append, out.length.append, out.raw.append
    max_sealed, max_raw = MAX_SEALED_BLOB, codec.MAX_RAW
    for p in doc.get("packs", []):
        if not isinstance(p, dict):
            raise bad("malformed pack entry")
        pid, size, rows = p.get("id"), p.get("size"), p.get("blobs")
        if not (isinstance(pid, str) and _HEX64.fullmatch(pid)):
            raise bad(f"malformed pack id {pid!r}")
        if not (_whole(size) and 4 < size <= MAX_PACK):
            raise bad(f"pack {pid[:16]}: size {size!r} is not 5..{MAX_PACK}")
        if not isinstance(rows, list):
            raise bad(f"pack {pid[:16]}: no list of blobs")
        k = len(out.packs)
        out.packs.append((pid, size))
        end = size - 4
        for row in rows:
            if not (isinstance(row, list) and len(row) == 5):
                raise bad(f"pack {pid[:16]}: malformed row")
            t, bid, o, n, r = row
            if not (isinstance(bid, str) and len(bid) == 64):
                raise bad(f"pack {pid[:16]}: malformed blob id {bid!r}")
            if t not in BLOB_TYPES:
                raise bad(f"pack {pid[:16]}: blob {bid[:16]}: unknown type {t!r}")
            if not (type(o) is int and type(n) is int and type(r) is int) and not (
                    _whole(o) and _whole(n) and _whole(r)):
                raise bad(f"pack {pid[:16]}: blob {bid[:16]}: offset, length or raw length "
                          "is not a whole number")
            if not (0 <= o and 0 < n <= max_sealed and o + n <= end):
                raise bad(f"pack {pid[:16]}: blob {bid[:16]}: offset {o} and length {n} "
                          f"are outside the pack's {size} bytes")
            if not 0 <= r <= max_raw:
                raise bad(f"pack {pid[:16]}: blob {bid[:16]}: raw length {r} out of range")
            a_pack(k)
            a_type(TYPE_CODE[t])
            a_id(bid)
            a_off(o)
            a_len(n)
            a_raw(r)
    return out


class Segment:
    """Rows of one index file (or one batch of new ones) as columns, in order. Rows
    whose blob id is not 64 lowercase hex digits (only a crafted index has them) are in
    ``odd`` as (position, blob id, pack number, type code, offset, length, raw)."""

    __slots__ = ("packs", "ids", "pack", "offset", "length", "raw", "type", "odd")

    def __init__(self, packs: list[tuple[str, int]], ids: np.ndarray, pack: np.ndarray,
                 offset: np.ndarray, length: np.ndarray, raw: np.ndarray, type_: np.ndarray,
                 odd: list[tuple] | None = None):
        self.packs = packs
        self.ids, self.pack, self.offset, self.length, self.raw = ids, pack, offset, length, raw
        self.type = type_
        self.odd = odd or []

    @property
    def n(self) -> int:
        return len(self.pack)

    @classmethod
    def from_checked(cls, c: CheckedIndex) -> Segment:
        joined = "".join(c.ids)
        raw_ids: bytes | None = None
        if len(joined) == 64 * len(c.ids):
            try:
                raw_ids = bytes.fromhex(joined)
            except ValueError:
                pass
            # all hex, none skipped as whitespace, no capital: every id canonical (a
            # compare of the hex back is 4x faster than str.islower on 32 MB)
            if raw_ids is not None and not (len(raw_ids) * 2 == len(joined)
                                            and raw_ids.hex() == joined):
                raw_ids = None
        del joined
        u32 = np.uint32
        if raw_ids is not None:  # every id canonical: the common case
            return cls(c.packs, np.frombuffer(raw_ids, np.uint8).copy(),
                       np.array(c.pack, u32), np.array(c.offset, u32), np.array(c.length, u32),
                       np.array(c.raw, u32), np.array(c.type, np.uint8))
        keep = [i for i, b in enumerate(c.ids) if _HEX64.fullmatch(b)]
        odd = [(i, c.ids[i], c.pack[i], c.type[i], c.offset[i], c.length[i], c.raw[i])
               for i in range(len(c.ids)) if not _HEX64.fullmatch(c.ids[i])]
        ids = np.frombuffer(bytes.fromhex("".join(c.ids[i] for i in keep)), np.uint8).copy()
        return cls(c.packs, ids, np.array([c.pack[i] for i in keep], u32),
                   np.array([c.offset[i] for i in keep], u32),
                   np.array([c.length[i] for i in keep], u32),
                   np.array([c.raw[i] for i in keep], u32),
                   np.array([c.type[i] for i in keep], np.uint8), odd)

    @classmethod
    def from_packs(cls, packs: Iterable[tuple[str, int, list[Any]]]) -> Segment:
        """From (pack id, size, [BlobEntry]) as a writer has them (already checked)."""
        c = CheckedIndex()
        for pid, size, entries in packs:
            k = len(c.packs)
            c.packs.append((pid, size))
            for e in entries:
                c.pack.append(k)
                c.type.append(TYPE_CODE[e.type])
                c.ids.append(e.id)
                c.offset.append(e.offset)
                c.length.append(e.length)
                c.raw.append(e.raw_length)
        return cls.from_checked(c)

    def check(self) -> bool:
        """Every row within the bounds check_index enforces (for rows read from the cache)."""
        n, k = self.n, len(self.packs)
        if not (len(self.ids) == 32 * n and len(self.offset) == len(self.length) == n
                and len(self.raw) == len(self.type) == n):
            return False
        sizes = np.array([s for _p, s in self.packs], np.uint64)  # < 2**64: read as <u8
        if k and not ((sizes > 4) & (sizes <= MAX_PACK)).all():
            return False
        sizes = sizes.astype(np.int64)
        if n == 0:
            return True
        if int(self.pack.max()) >= k or int(self.type.max()) >= len(BLOB_TYPES):
            return False
        off = self.offset.astype(np.int64)
        ln = self.length.astype(np.int64)
        return bool(((ln > 0) & (ln <= MAX_SEALED_BLOB) & (off + ln <= sizes[self.pack] - 4)
                     & (self.raw <= codec.MAX_RAW)).all())


# ------------------------------------------------- canonical index files, fast

_ROW_DATA, _ROW_TREE = b'["data","', b'["tree","'
_PACK_OPEN, _PACK_ID, _PACK_SIZE = b'{"blobs":[', b'],"id":"', b'","size":'
_DOC_OPEN = b'{"packs":['


def _each_byte(v: int) -> int:
    """A 64-bit word of eight bytes ``v``."""
    return int.from_bytes(bytes([v]) * 8, "little")


_X20, _X30, _X7F, _X76, _X80, _X0F = (_each_byte(v) for v in (0x20, 0x30, 0x7F, 0x76, 0x80, 0x0F))


def _words(doc: bytes, at: np.ndarray, width: int, pad: bool = False) -> np.ndarray:
    """The ``width`` (1, 2, 4 or 8) bytes of ``doc`` at each position of ``at``, as
    little-endian numbers. IndexError for bytes past the end, or with ``pad`` for a
    position past it (bytes past the end then read as 0)."""
    last = len(doc) - width
    view = np.ndarray((last + 1,), f"<u{width}", doc, 0, (1,))
    if not (pad and len(at) and at.max() > last):
        return view[at]
    near = at > last
    out = np.empty(len(at), view.dtype)
    out[~near] = view[at[~near]]
    tail = np.ndarray((width + 1,), view.dtype, doc[last:] + bytes(width), 0, (1,))
    out[near] = tail[at[near] - last]
    return out


def _is(doc: bytes, at: np.ndarray, text: bytes) -> bool:
    """Whether ``text`` is at every position of ``at``."""
    i = 0
    while i < len(text):
        w = next(w for w in (8, 4, 2, 1) if w <= len(text) - i)
        if not (_words(doc, at + i, w) == int.from_bytes(text[i:i + w], "little")).all():
            return False
        i += w
    return True


def _hex_ids(doc: bytes, at: np.ndarray) -> np.ndarray | None:
    """The 64 lowercase hex digits at each position of ``at``, as 32 bytes each (one
    flat array), or None when any is not that."""
    windows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(doc, np.uint8), 64)
    out = np.empty(len(at) * 32, np.uint8)
    for i in range(0, len(at), 65_536):  # 4 MB of text at a time
        text = windows[at[i:i + 65_536]]
        try:
            raw = binascii.a2b_hex(text)  # hex digits only (no whitespace), either case
        except binascii.Error:
            return None
        # lowercase: a-f and 0-9 have bit 0x20, A-F do not
        if int(np.bitwise_and.reduce(text.reshape(-1).view(np.uint64))) & _X20 != _X20:
            return None
        out[i * 32:i * 32 + len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _numbers(doc: bytes, at: np.ndarray, then: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The canonical decimal numbers at each position of ``at`` (1 to 9 digits, no
    leading zero), each followed by the byte ``then``: (values as uint32, the positions
    of ``then``), or None. Eight bytes at a time, as one 64-bit word each."""
    if not len(at):
        return np.empty(0, np.uint32), at
    u64 = np.uint64
    x = _words(doc, at, 8, pad=True) ^ u64(_X30)  # a digit byte is now 0..9
    # bit 7 of each byte that is not a digit (no carry between bytes: at most 0x7f + 0x76)
    other = (((x & u64(_X7F)) + u64(_X76)) | x) & u64(_X80)
    lowest = other & (~other + u64(1))  # its first such byte's bit 7, or 0
    # which byte that is (0..7), 8 when none: 0 and 0x80 << 8k sorted, k + 1 for the
    # latter (np.bitwise_count would need numpy 2)
    k = np.searchsorted(np.array([0] + [0x80 << 8 * b for b in range(8)], u64), lowest)
    digits = (k + 8) % 9
    eight = digits == 8
    if eight.any():  # a ninth digit after 8
        digits[eight] += (_words(doc, at[eight] + 8, 1, pad=True) ^ 0x30) < 10
    nine = digits == 9
    if digits.min() == 0 or (((x & u64(0xFF)) == 0) & (digits > 1)).any():
        return None
    ends = at + digits
    if not (_words(doc, ends, 1) == then).all():  # also refuses a tenth digit
        return None
    # the first min(digits, 8) digits moved to the word's top, then 8 digits to a number
    x <<= (u64(8) * (u64(8) - np.minimum(digits, 8).astype(u64)))
    x = ((x & u64(_X0F)) * u64(2561)) >> u64(8)
    x = ((x & u64(0x00FF00FF00FF00FF)) * u64(6553601)) >> u64(16)
    x = ((x & u64(0x0000FFFF0000FFFF)) * u64(42949672960001)) >> u64(32)
    if nine.any():
        x[nine] = x[nine] * u64(10) + (_words(doc, at[nine] + 8, 1) ^ 0x30)
    return x.astype(np.uint32), ends


def parse_canonical(doc: bytes) -> Segment | None:
    """The rows of an index file's JSON text, when it is exactly the canonical JSON the
    program writes (docs/FORMAT.md sections 1.1 and 4) and every row passes
    ``check_index``: the same columns as ``Segment.from_checked(check_index(...))``,
    made with numpy over the bytes, with no Python object per row (a 500,000-row file
    of 53 MB: 0.2 to 0.3 s of CPU and about 35 MB besides the columns, where json.loads
    and the checks took 0.8 s and 175 MB). None for any other text: the caller then
    parses it as before (json.loads and check_index, with their errors).

    The text is recognised by tiling: a head ``{"packs":[``, then each pack's
    ``{"blobs":[``, its rows ``["data"|"tree","<64 hex>",N,N,N]`` joined by ``,``,
    ``],"id":"<64 hex>","size":N}``, packs joined by ``,``, then ``]}``, every piece
    starting where the one before ends and each byte of it checked (N: 1 to 9 digits,
    no leading zero). The rows and packs are found from the ``[`` bytes alone (a row
    opens with ``["``, a pack's list of rows with ``[[`` or ``[]``); a misplaced or
    missing one breaks the tiling. So a text that passes is that JSON and nothing else:
    no whitespace, escape, other key, duplicate key, other type, sign, fraction or
    exponent."""
    try:
        return _parse_canonical(doc)
    except (IndexError, ValueError):  # a position past the end: not canonical
        return None


def _parse_canonical(doc: bytes) -> Segment | None:
    if not (doc.startswith(_DOC_OPEN) and doc.endswith(b"]}")) or len(doc) < 16:
        return None
    a = np.frombuffer(doc, np.uint8)
    size = len(a)
    step = 1 << 22  # a bool per byte at a time: 4 MB, not the file's size
    opens = np.concatenate([np.flatnonzero(a[i:i + step] == 0x5B) + i
                            for i in range(0, size, step)])
    if opens[-1] >= size - 1 or opens[0] != len(_DOC_OPEN) - 1:
        return None
    is_row = a[opens + 1] == 0x22  # ["
    s = opens[is_row]  # row starts
    q = opens[~is_row][1:] - (len(_PACK_OPEN) - 1)  # pack starts
    del opens, is_row
    m, n = len(q), len(s)
    if not m or q[0] != len(_DOC_OPEN) or not _is(doc, q, _PACK_OPEN):
        return None
    u32 = np.uint32
    if n:
        pre = _words(doc, s, 8)
        data = pre == int.from_bytes(_ROW_DATA[:8], "little")
        if not ((data | (pre == int.from_bytes(_ROW_TREE[:8], "little"))).all()
                and _is(doc, s + 8, _ROW_DATA[8:])):
            return None
        del pre
        types = np.where(data, np.uint8(TYPE_CODE["data"]), np.uint8(TYPE_CODE["tree"]))
        del data
        ids = _hex_ids(doc, s + 9)
        if ids is None or not _is(doc, s + 73, b'",'):
            return None
        got = _numbers(doc, s + 75, 0x2C)
        if got is None:
            return None
        offset, c1 = got
        got = _numbers(doc, c1 + 1, 0x2C)
        if got is None:
            return None
        length, c2 = got
        got = _numbers(doc, c2 + 1, 0x5D)
        if got is None:
            return None
        raw, e = got
        del c1, c2, got
        pack = np.searchsorted(q, s) - 1  # the pack whose start is the last before the row
        if pack[0] < 0:
            return None
        first = np.ones(n, bool)
        first[1:] = pack[1:] != pack[:-1]
        later = np.flatnonzero(~first)
        # a pack's first row right after its "[", each other row 2 bytes after the last
        if not ((s[first] == q[pack[first]] + len(_PACK_OPEN)).all()
                and (s[later] == e[later - 1] + 2).all() and (a[e[later - 1] + 1] == 0x2C).all()):
            return None
        del first, later
        counts = np.bincount(pack, minlength=m)
        t = np.where(counts > 0, e[np.cumsum(counts) - 1] + 1, q + len(_PACK_OPEN))
        del counts, e
    else:
        t = q + len(_PACK_OPEN)
    # each pack's end: ],"id":"<hex>","size":N}
    pids = _hex_ids(doc, t + 8)
    if pids is None or not (_is(doc, t, _PACK_ID) and _is(doc, t + 72, _PACK_SIZE)):
        return None
    got = _numbers(doc, t + 81, 0x7D)
    if got is None:
        return None
    sizes, z = got
    if not ((q[1:] == z[:-1] + 2).all() and (a[z[:-1] + 1] == 0x2C).all()
            and z[-1] == size - 3):
        return None
    # check_index's bounds
    sizes64 = sizes.astype(np.int64)
    if not ((sizes64 > 4) & (sizes64 <= MAX_PACK)).all():
        return None
    if n:
        off64, len64 = offset.astype(np.int64), length.astype(np.int64)
        if not ((len64 > 0).all() and (len64 <= MAX_SEALED_BLOB).all()
                and (off64 + len64 <= sizes64[pack] - 4).all() and (raw <= codec.MAX_RAW).all()):
            return None
        del off64, len64
        columns = (ids, pack.astype(u32), offset, length, raw, types)
    else:
        columns = (np.empty(0, np.uint8), *(np.empty(0, u32) for _ in range(4)),
                   np.empty(0, np.uint8))
    hexes = pids.tobytes().hex()
    packs = [(hexes[i * 64:(i + 1) * 64], v) for i, v in enumerate(sizes.tolist())]
    return Segment(packs, *columns)


def read_index_doc(read_doc: Callable[[str], Any], iid: str) -> Any:
    """``read_doc(iid)`` (``Repository.load_record``) with its JSON text left unparsed
    (a ``codec.RawJSON``) for ``index_segment``."""
    with codec.raw_json("index/"):
        return read_doc(iid)


def index_segment(doc: Any, iid: str) -> Segment:
    """The rows of index file ``iid`` from ``read_index_doc``: ``parse_canonical`` when
    its text is canonical, else parsed and checked as always (``parse_json``,
    ``check_index``), with their errors."""
    if isinstance(doc, codec.RawJSON):
        seg = parse_canonical(doc.data)
        if seg is not None:
            return seg
        doc = doc.parse()
    return Segment.from_checked(check_index(doc, f"index/{iid}"))


# ------------------------------------------------------------------- the cache

_MAGIC = b"BTIDX1\n\0"
_HEAD = struct.Struct("<8s32sQQ")  # magic, index file id, packs, rows
_TOUCH_AFTER = 3600.0  # a cache file used is touched at most this often
_SWEEP_AFTER = 86400.0  # a cache file no index file names goes after a day unused


def _expected_size(packs: int, rows: int) -> int:
    return _HEAD.size + packs * 40 + rows * 49 + 32


class IndexCache:
    """Parsed index files under ``folder`` (the state directory's ``index-cache/<repository
    id>``), one file per index file, named by it. Local and trusted like the rest of the
    state directory, and still checked: a SHA-256 of the content, and every row's bounds.
    Nothing here is ever needed: any failure to read or write it is ignored."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    def _path(self, iid: str) -> Path | None:
        return self.folder / iid if _HEX64.fullmatch(iid) else None

    def rows(self, iid: str) -> int | None:
        """The row count a usable-looking cache file of ``iid`` declares (its header and
        size agree), else None."""
        path = self._path(iid)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD.size)
                size = os.fstat(f.fileno()).st_size
                mtime = os.fstat(f.fileno()).st_mtime
        except OSError:
            return None
        if len(head) != _HEAD.size:
            return None
        magic, raw_iid, packs, rows = _HEAD.unpack(head)
        if magic != _MAGIC or raw_iid != bytes.fromhex(iid) or size != _expected_size(packs, rows):
            return None
        if time.time() - mtime > _TOUCH_AFTER:
            with contextlib.suppress(OSError):
                os.utime(path)
        return rows

    def read(self, iid: str) -> Segment | None:
        """The cached rows of ``iid``, checked, or None."""
        n = self.rows(iid)
        if n is None:
            return None
        seg = Segment([], np.empty(n * 32, np.uint8), np.empty(n, np.uint32),
                      np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.uint32),
                      np.empty(n, np.uint8))
        packs = self.read_into(iid, seg)
        if packs is None:
            return None
        seg.packs = packs
        return seg

    def read_into(self, iid: str, dest: Segment) -> list[tuple[str, int]] | None:
        """Read the cached rows of ``iid`` straight into ``dest``'s columns (views of the
        whole index's, so nothing as large as a file is allocated on the way), check the
        digest and every row; the packs, or None (``dest`` then holds garbage)."""
        path = self._path(iid)
        if path is None:
            return None
        n = dest.n
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD.size)
                if len(head) != _HEAD.size:
                    return None
                magic, raw_iid, packs, rows = _HEAD.unpack(head)
                if (magic != _MAGIC or raw_iid != bytes.fromhex(iid) or rows != n
                        or os.fstat(f.fileno()).st_size != _expected_size(packs, rows)):
                    return None
                h.update(head)
                table = f.read(packs * 40)
                h.update(table)
                for arr in (dest.ids, dest.pack, dest.offset, dest.length, dest.raw, dest.type):
                    view = memoryview(arr).cast("B")
                    if f.readinto(view) != len(view):
                        return None
                    h.update(view)
                digest = f.read(32)
        except OSError:
            return None
        if len(table) != packs * 40 or h.digest() != digest:
            log.info("index cache %s is damaged: reading index/%s instead", path, iid)
            return None
        hexes = table[: packs * 32].hex()
        sizes = np.frombuffer(table, "<u8", packs, packs * 32).tolist()
        dest.packs = [(hexes[i * 64 : (i + 1) * 64], sizes[i]) for i in range(packs)]
        if not dest.check():
            log.info("index cache %s has rows out of bounds: reading index/%s instead",
                     path, iid)
            return None
        return dest.packs

    def write(self, iid: str, seg: Segment, pack_base: int = 0) -> None:
        """Cache ``seg`` as the rows of ``iid``; its pack column holds the numbers of its
        packs plus ``pack_base`` (the whole index's, CompactIndex.load)."""
        path = self._path(iid)
        if path is None or seg.odd:
            return
        n = seg.n

        def parts() -> Iterator[Any]:
            yield _HEAD.pack(_MAGIC, bytes.fromhex(iid), len(seg.packs), n)
            yield bytes.fromhex("".join(p for p, _s in seg.packs))
            yield np.array([s for _p, s in seg.packs], "<u8").tobytes()
            # the columns themselves (copied only where not little-endian or not
            # contiguous; the pack column less pack_base a slice at a time)
            for c, t in ((seg.ids, np.uint8), (seg.pack, "<u4"), (seg.offset, "<u4"),
                         (seg.length, "<u4"), (seg.raw, "<u4"), (seg.type, np.uint8)):
                if c is seg.pack and pack_base:
                    for i in range(0, n, 65_536):
                        yield memoryview(np.ascontiguousarray(
                            c[i:i + 65_536] - np.uint32(pack_base), t)).cast("B")
                else:
                    yield memoryview(np.ascontiguousarray(c, t)).cast("B")

        h = hashlib.sha256()
        tmp = None
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.folder)
            with os.fdopen(fd, "wb") as f:
                for part in parts():
                    h.update(part)
                    f.write(part)
                f.write(h.digest())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:  # a read-only state directory: no cache, nothing else
            log.debug("index cache %s not written: %s", path, e)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def sweep(self, keep: set[str]) -> None:
        """Remove cache files of index files that are gone (after a day unused: a replica
        of the same repository may still name them) and stale temporary files."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        now = time.time()
        for name in names:
            if name in keep or not (_HEX64.fullmatch(name) or name.startswith(".tmp-")):
                continue
            path = self.folder / name
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _SWEEP_AFTER:
                    path.unlink()


# ------------------------------------------------------------- the mapping

def _prefixes(ids2: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 32-byte id (rows of ``ids2``), big-endian, as numbers."""
    pre = np.empty(len(ids2), np.uint64)
    pre.view(np.uint8).reshape(len(ids2), 8)[:] = ids2[:, 7::-1] if _LITTLE else ids2[:, :8]
    return pre


def _stable_order(pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.argsort(pre, kind="stable")`` and ``pre`` in that order, about twice as fast
    for millions of rows: each prefix's top bits and its row number in one uint64,
    sorted by value (all distinct, so any sort is stable; numpy's SIMD sort of values
    beats its argsort), then a stable sort of the result, nearly sorted already, for
    the prefixes that differ only in the low bits the row number took."""
    n = len(pre)
    b = max(1, (n - 1).bit_length())
    if b > 32:
        order = np.argsort(pre, kind="stable")
        return order, pre[order]
    u64 = np.uint64
    key = pre >> u64(b)
    key <<= u64(b)
    step = 1 << 16
    for i in range(0, n, step):  # row numbers a slice at a time: no array of n of them
        key[i:i + step] |= np.arange(i, min(n, i + step), dtype=u64)
    key.sort()
    key &= u64((1 << b) - 1)
    order = key.view(np.int64)
    del key
    out = pre[order]
    if n > 1 and (out[1:] < out[:-1]).any():
        fix = np.argsort(out, kind="stable")  # fast: out is sorted but for a few rows
        order, out = order[fix], out[fix]
    return order, out


_STORE_MIN = 1 << 16  # rows of a _Store at least (3 MB: below numpy's huge-page size)


class _Store:
    """Columns with room for ``rows`` rows, of which the first ``used`` are written: the
    columns of ``_Base`` views made by ``_Base.merged``, each of the first rows it
    covers. Rows past ``used`` are written only by the merge that then raises it, which
    no view reads yet, so older views stay valid for readers on other threads. Room not
    written yet costs address space, not memory (np.empty: pages untouched)."""

    __slots__ = ("rows", "used", "cols")

    def __init__(self, rows: int):
        self.rows, self.used = rows, 0
        self.cols = (np.empty(rows * 32, np.uint8), *(np.empty(rows, np.uint32) for _ in range(4)),
                     np.empty(rows, np.uint8))

    def put(self, at: int, cols: tuple[np.ndarray, ...]) -> None:
        """Rows ``cols`` (ids, pack, offset, length, raw, type) written from row ``at``."""
        n = len(cols[1])
        for i, (dst, src) in enumerate(zip(self.cols, cols, strict=True)):
            w = 32 if i == 0 else 1
            dst[at * w:(at + n) * w] = src
        self.used = at + n

    def first(self, n: int) -> tuple[np.ndarray, ...]:
        return tuple(c[:n * (32 if i == 0 else 1)] for i, c in enumerate(self.cols))


class _Base:
    """Immutable sorted view of rows: ``pre`` (the ids' first 8 bytes, sorted, one per
    distinct id), ``perm`` (the row of each), ``starts`` (bucket b's first position in
    ``pre``, b = prefix >> shift); the rows' columns themselves stay in load order."""

    __slots__ = ("count", "ids", "pack", "offset", "length", "raw", "type", "pre", "perm",
                 "starts", "shift", "arrays", "store")

    def __init__(self, ids: np.ndarray, pack: np.ndarray, offset: np.ndarray,
                 length: np.ndarray, raw: np.ndarray, type_: np.ndarray):
        n = len(pack)
        ids2 = ids.reshape(n, 32)
        order, pre = _stable_order(_prefixes(ids2))
        same = pre[1:] == pre[:-1]
        if same.any():
            j = np.flatnonzero(same)
            if not (ids2[order[j]] == ids2[order[j + 1]]).all():
                # two ids share their first 8 bytes (about once in 10^7 repositories of 2
                # million blobs): order by whole ids instead
                words = ids2.view(">u8").reshape(n, 4)
                order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
                w = words[order]
                same = (w[1:] == w[:-1]).all(axis=1)
                pre = w[:, 0].astype(np.uint64)
                del w, words
        # of rows with the same id (in load order after the stable sort), the last wins
        if same.any():
            keep = np.ones(n, bool)
            keep[:-1] = ~same
            del same
            perm = order[keep].astype(np.uint32)
            pre = np.ascontiguousarray(pre[keep])
            del keep
        else:
            perm = order.astype(np.uint32)
        del order
        self._finish((ids, pack, offset, length, raw, type_), pre, perm)

    @classmethod
    def merged(cls, old: _Base, new: _Base) -> _Base:
        """The view of ``old``'s rows followed by ``new``'s: the same as ``_Base`` of the
        concatenated columns, made by merging the two sorted views instead of sorting
        every row again (a row of ``new`` wins over ``old``'s row of the same id)."""
        a, b = old.arrays, new.arrays
        rows = len(a[1])
        total = rows + len(b[1])
        store = old.store
        if store is None or store.used != rows or store.rows < total:
            # new columns with room for three times as many rows more: until they
            # fill, a merge writes the new rows after the old ones instead of copying
            # every row (room costs address space: 196 bytes a row in all)
            store = _Store(max(4 * total, _STORE_MIN))
            store.put(0, a[:6])
        store.put(rows, b[:6])  # past every row an older view reads
        cols = store.first(total)
        opre, operm, npre, nperm = a[6], a[7], b[6], b[7]
        lo = np.searchsorted(opre, npre, "left")
        hi = np.searchsorted(opre, npre, "right")
        hits = np.flatnonzero(hi > lo)
        if hits.size:
            oids, nids = a[0].reshape(-1, 32), b[0].reshape(-1, 32)
            if (hi[hits] - lo[hits] > 1).any() or not (
                    oids[operm[lo[hits]]] == nids[nperm[hits]]).all():
                # a new id shares its first 8 bytes with another old one: sorted anew,
                # by whole ids (the collision path of __init__)
                del oids, nids, lo, hi, hits
                out = cls(*cols)
                out.store = store
                return out
            del oids, nids
        drop = lo[hits]  # old ids that a new row replaces (sorted)
        del hi, hits
        dest = lo
        dest -= np.searchsorted(drop, lo, "left")
        dest += np.arange(len(npre))
        total = len(opre) - len(drop) + len(npre)
        pre = np.empty(total, np.uint64)
        perm = np.empty(total, np.uint32)
        pre[dest] = npre
        perm[dest] = nperm + np.uint32(rows)
        mask = np.ones(total, bool)
        mask[dest] = False
        del dest
        if len(drop):
            pre[mask] = np.delete(opre, drop)
            perm[mask] = np.delete(operm, drop)
        else:
            pre[mask] = opre
            perm[mask] = operm
        del mask
        out = cls.__new__(cls)
        out._finish(cols, pre, perm)
        out.store = store
        return out

    def _finish(self, cols: tuple[np.ndarray, ...], pre: np.ndarray, perm: np.ndarray) -> None:
        self.store: _Store | None = None
        ids, pack, offset, length, raw, type_ = cols
        count = len(perm)
        bits = max(1, min(26, count.bit_length()))
        shift = 64 - bits
        top = pre >> np.uint64(shift)  # below 2**26: its int64 view is the same numbers
        counts = np.bincount(top.view(np.int64), minlength=1 << bits)
        del top
        starts = np.zeros((1 << bits) + 1, np.uint32)
        starts[1:] = np.cumsum(counts, out=counts)
        del counts
        self.arrays = (ids, pack, offset, length, raw, type_, pre, perm, starts)
        self.count, self.shift = count, shift
        self.ids = memoryview(np.ascontiguousarray(ids)).cast("B")
        self.pack = memoryview(np.ascontiguousarray(pack, np.uint32)).cast("B").cast("I")
        self.offset = memoryview(np.ascontiguousarray(offset, np.uint32)).cast("B").cast("I")
        self.length = memoryview(np.ascontiguousarray(length, np.uint32)).cast("B").cast("I")
        self.raw = memoryview(np.ascontiguousarray(raw, np.uint32)).cast("B").cast("I")
        self.type = memoryview(np.ascontiguousarray(type_, np.uint8)).cast("B")
        self.pre = memoryview(pre).cast("B").cast("Q")
        self.perm = memoryview(perm).cast("B").cast("I")
        self.starts = memoryview(starts).cast("B").cast("I")

    def find(self, b: bytes, p: int) -> int:
        """The row of the 32-byte id ``b`` (whose first 8 bytes are ``p``), or -1."""
        bucket = p >> self.shift
        starts, pre = self.starts, self.pre
        i, end = starts[bucket], starts[bucket + 1]
        while i < end:
            if pre[i] == p:
                r = self.perm[i]
                if self.ids[r * 32 : r * 32 + 32] == b:
                    return r
            i += 1
        return -1

    def entry(self, packs: list[str], r: int) -> IndexEntry:
        return IndexEntry(packs[self.pack[r]], BLOB_TYPES[self.type[r]], self.offset[r],
                          self.length[r], self.raw[r])

    def winner_ids(self) -> np.ndarray:
        """The winning rows' 32-byte ids (flat), in id order."""
        return self.arrays[0].reshape(-1, 32)[self.arrays[7].astype(np.intp)].reshape(-1)

    def rows(self) -> tuple[np.ndarray, ...]:
        """All rows' columns as loaded (a later row for an id wins)."""
        return self.arrays[:6]

    def members(self, ids: np.ndarray) -> np.ndarray:
        """For each 32-byte id of ``ids`` (flat), whether it is here (vectorized)."""
        q2 = ids.reshape(-1, 32)
        q = _prefixes(q2)
        _ids, _p, _o, _l, _r, _t, pre, perm, _s = self.arrays
        mine = _ids.reshape(-1, 32)
        pos = np.searchsorted(pre, q, "left")
        found = np.zeros(len(q), bool)
        pending = np.arange(len(q))
        while pending.size:  # more than one pass only for ids sharing 8 bytes
            at = pos[pending]
            inside = at < len(pre)
            pending, at = pending[inside], at[inside]
            same = pre[at] == q[pending]
            pending, at = pending[same], at[same]
            if not pending.size:
                break
            eq = (mine[perm[at]] == q2[pending]).all(axis=1)
            found[pending[eq]] = True
            pending = pending[~eq]
            pos[pending] += 1
        return found


def _key(key: object) -> tuple[bytes, int] | None:
    """A blob id as (32 bytes, their first 8 as a number) when it is 64 lowercase hex
    digits, else None (such an id can only be in the side dict)."""
    if type(key) is not str or len(key) != 64:
        return None
    try:
        b = bytes.fromhex(key)
    except ValueError:
        return None
    # 32 bytes: no whitespace was skipped; lowercase (or digits only): canonical
    if len(b) != 32 or not (key.islower() or key.isdigit()):
        return None
    return b, int.from_bytes(b[:8], "big")


def _canonical_id(key: object) -> bytes | None:
    k = _key(key)
    return k[0] if k is not None else None


def _first(pair: tuple[str, int]) -> str:
    return pair[0]


def _write_cache(cache: IndexCache, files: list[tuple[str, int, int, Any]], pack_ids: list[str],
                 ids: np.ndarray, cols: list[np.ndarray]) -> None:
    """Each file of ``files`` (see CompactIndex.load) into ``cache``, from the whole
    index's pack ids ``pack_ids`` and columns ``ids`` and ``cols`` (pack, offset,
    length, raw, type)."""
    for iid, pos, end, (first, local) in files:
        try:
            if isinstance(first, int):  # packs first, first + 1, ... of the index
                packs = list(zip(pack_ids[first:first + len(local)], local.tolist(),
                                 strict=True))
                cache.write(iid, Segment(packs, ids[pos * 32:end * 32], cols[0][pos:end],
                                         cols[1][pos:end], cols[2][pos:end], cols[3][pos:end],
                                         cols[4][pos:end]), pack_base=first)
            else:
                cache.write(iid, Segment(first, ids[pos * 32:end * 32], local,
                                         cols[1][pos:end], cols[2][pos:end], cols[3][pos:end],
                                         cols[4][pos:end]))
        except Exception:  # noqa: BLE001 - the cache is never needed
            log.debug("index cache of %s not written", iid, exc_info=True)


class CompactIndex(Mapping):
    """blob id -> IndexEntry for millions of blobs (see the module's docstring). Supports
    ``in``, ``get``, ``[id]``, iteration over ids, ``len``, ``==`` with any mapping and
    ``index[id] = IndexEntry(...)``; ``add_packs`` adds a writer's packs in bulk. The last
    assignment or row added for an id wins, as in a dict.

    Three layers, newest first: the side dict (single assignments; ids or entries that
    do not fit the columns), ``delta`` (sorted columns of what was added since the load)
    and ``base`` (sorted columns of what was loaded). Adding rebuilds only ``delta``; it
    is merged into ``base`` once it holds a quarter as many ids, so a backup's commit
    into a large index costs memory in proportion to what it adds."""

    FOLD_MIN = 65_536  # the side dict is folded into the columns past this many entries

    def __init__(self) -> None:
        self._packs: list[str] = []  # pack number -> pack id
        self._pack_no: dict[str, int] = {}
        # (base, delta, side dict, how many of their rows a newer layer shadows):
        # replaced as a whole, so a reader on another thread sees one consistent state
        self._state: tuple[_Base | None, _Base | None, dict[str, IndexEntry], int] = (
            None, None, {}, 0)

    # ------------------------------------------------------------ reading
    def get(self, key: object, default: Any = None) -> Any:
        base, delta, side, _ = self._state
        if side:
            try:
                e = side.get(key)  # type: ignore[call-overload]
            except TypeError:  # unhashable
                return default
            if e is not None:
                return e
        k = _key(key)
        if k is not None:
            for layer in (delta, base):
                if layer is not None:
                    r = layer.find(*k)
                    if r >= 0:
                        return layer.entry(self._packs, r)
        return default

    def __getitem__(self, key: object) -> IndexEntry:
        e = self.get(key)
        if e is None:
            raise KeyError(key)
        return e

    def __contains__(self, key: object) -> bool:
        base, delta, side, _ = self._state
        if side:
            try:
                if key in side:
                    return True
            except TypeError:
                return False
        k = _key(key)
        if k is None:
            return False
        return ((delta is not None and delta.find(*k) >= 0)
                or (base is not None and base.find(*k) >= 0))

    def __len__(self) -> int:
        base, delta, side, dups = self._state
        return (base.count if base else 0) + (delta.count if delta else 0) + len(side) - dups

    def __iter__(self) -> Iterator[str]:
        base, delta, side, _ = self._state
        side = dict(side)
        for layer, newer in ((delta, None), (base, delta)):
            if layer is None:
                continue
            ids, perm = layer.ids, layer.perm
            hidden = (newer.members(layer.winner_ids()) if newer is not None
                      else np.zeros(layer.count, bool))
            for i in range(layer.count):
                if hidden[i]:
                    continue
                r = perm[i]
                h = ids[r * 32 : r * 32 + 32].hex()
                if h not in side:
                    yield h
        yield from side

    def __repr__(self) -> str:
        return f"<CompactIndex of {len(self)} blobs in {len(self._packs)} packs>"

    # ------------------------------------------------------------ writing
    def _pack_number(self, pid: str) -> int:
        k = self._pack_no.get(pid)
        if k is None:
            k = self._pack_no[pid] = len(self._packs)
            self._packs.append(pid)
        return k

    def __setitem__(self, key: str, entry: IndexEntry) -> None:
        if not isinstance(entry, IndexEntry):
            raise TypeError(f"an index holds IndexEntry values, not {type(entry).__name__}")
        base, delta, side, dups = self._state
        if key not in side:
            k = _key(key)
            if k is not None and ((delta is not None and delta.find(*k) >= 0)
                                  or (base is not None and base.find(*k) >= 0)):
                dups += 1
                self._state = (base, delta, side, dups)
        side[key] = entry
        if len(side) > self.FOLD_MIN:
            self._fold(None)

    def add_packs(self, packs: list[tuple[str, int, list[Any]]]) -> None:
        """A writer's new packs, (pack id, size, [BlobEntry]), after what is there."""
        rows = sum(len(p[2]) for p in packs)
        if rows < 4096:
            for pid, _size, entries in packs:
                for e in entries:
                    self[e.id] = IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
            return
        self._fold(Segment.from_packs(packs))

    def _fold(self, extra: Segment | None) -> None:
        """The side dict's entries (those that fit the columns), then ``extra``, into a
        new ``delta``; ``delta`` into ``base`` when it has grown to a quarter of it."""
        base, delta, side, _ = self._state
        keep: dict[str, IndexEntry] = {}
        c = CheckedIndex()
        for key, e in side.items():
            if (_canonical_id(key) is None or not isinstance(e.pack_id, str)
                    or e.type not in TYPE_CODE
                    or not all(_whole(v) and 0 <= v < _U32
                               for v in (e.offset, e.length, e.raw_length))):
                keep[key] = e  # stays in the side dict
                continue
            c.pack.append(self._pack_number(e.pack_id))
            c.type.append(TYPE_CODE[e.type])
            c.ids.append(key)
            c.offset.append(e.offset)
            c.length.append(e.length)
            c.raw.append(e.raw_length)
        side_seg = Segment.from_checked(c)
        parts = [(side_seg.ids, side_seg.pack, side_seg.offset, side_seg.length,
                  side_seg.raw, side_seg.type)]
        if extra is not None:
            gmap = np.array([self._pack_number(p) for p, _s in extra.packs] or [0], np.uint32)
            parts.append((extra.ids, gmap[extra.pack], extra.offset, extra.length, extra.raw,
                          extra.type))
            for _pos, bid, k, t, o, n, r in extra.odd:
                keep[bid] = IndexEntry(extra.packs[k][0], BLOB_TYPES[t], o, n, r)
        if extra is not None and extra.n and any(_canonical_id(k) for k in keep):
            # a row added now wins over an older side entry of the same id
            added = set(extra.ids.tobytes().hex()[i:i + 64]
                        for i in range(0, extra.n * 64, 64))
            keep = {k: e for k, e in keep.items() if k not in added}
        cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
        del parts
        added = _Base(*cols) if len(cols[1]) else None
        del cols
        # the new rows sorted alone, then merged with the sorted views (no sort of them)
        if delta is None or added is None:
            new_delta = added if delta is None else delta
        else:
            new_delta = _Base.merged(delta, added)
        del added
        if base is None or (new_delta is not None and new_delta.count * 4 > base.count):
            if base is not None and new_delta is not None:
                base, new_delta = _Base.merged(base, new_delta), None
            elif base is None:
                base, new_delta = new_delta, None
        dups = 0
        if base is not None and new_delta is not None:
            dups = int(base.members(new_delta.winner_ids()).sum())
        for key in keep:
            k = _key(key)
            if k is not None and ((new_delta is not None and new_delta.find(*k) >= 0)
                                  or (base is not None and base.find(*k) >= 0)):
                dups += 1
        self._state = (base, new_delta, keep, dups)

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, files: list[str], read_doc: Callable[[str], Any],
             cache: IndexCache | None) -> tuple[CompactIndex, dict[str, int], dict[str, str]]:
        """The index of the index files ``files`` (in this order: a later row for an id
        wins), each read from ``cache`` when it holds it, else with ``read_doc(iid)`` and
        ``check_index`` (and then cached). Returns the index, pack sizes and the files
        that could not be read (id -> error)."""
        index = cls()
        sizes: dict[str, int] = {}
        errors: dict[str, str] = {}
        side: dict[str, IndexEntry] = {}

        def parse(iid: str) -> Segment | None:
            try:
                return index_segment(read_index_doc(read_doc, iid), iid)
            except (EngineError, KeyError, TypeError, ValueError) as e:
                # A damaged index file must not make the repository unreadable:
                # verify reports it, and the packs it names are still on disk.
                errors[iid] = str(e)
                return None

        # The columns grow file by file (ndarray.resize: realloc, which moves a large
        # block's pages without copying them), so a file read from index/ goes into them
        # at once, neither kept beside them nor read back from its new cache file.
        ids = np.empty(0, np.uint8)
        cols = [np.empty(0, np.uint32) for _ in range(4)] + [np.empty(0, np.uint8)]
        pos = 0
        # files read from index/ to cache: (id, first row, end, (the index's number of
        # its first pack, the sizes) when its packs are numbered in a row, else (its
        # packs, its pack column))
        to_cache: list[tuple[str, int, int, Any]] = []

        def room(n: int) -> None:
            """The columns sized for ``pos + n`` rows (no view of them may be alive)."""
            ids.resize((pos + n) * 32, refcheck=False)
            for c in cols:
                c.resize(pos + n, refcheck=False)

        def take_packs(packs: list[tuple[str, int]]) -> np.ndarray:
            """The index's number of each pack (numbering new ones, as _pack_number)."""
            sizes.update(packs)
            known, before = index._pack_no, len(index._pack_no)
            pids = list(map(_first, packs))
            known.update(zip(pids, range(before, before + len(pids)), strict=True))
            if len(known) == before + len(pids):
                # the usual case: every pack new to the index, numbered in file order
                index._packs.extend(pids)
                return np.arange(before, before + max(1, len(pids)), dtype=np.uint32)
            # a pack named twice: numbered again as _pack_number does
            index._pack_no = known = dict(zip(index._packs, range(before), strict=True))
            numbers = [known.setdefault(p, len(known)) for p in pids]
            index._packs.extend(itertools.islice(known, before, None))  # in number order
            return np.array(numbers or [0], np.uint32)

        def from_cache(iid: str, n: int) -> bool:
            room(n)
            end = pos + n
            view = Segment([], ids[pos * 32 : end * 32], cols[0][pos:end], cols[1][pos:end],
                           cols[2][pos:end], cols[3][pos:end], cols[4][pos:end])
            if cache is None or cache.read_into(iid, view) is None:
                return False
            np.take(take_packs(view.packs), view.pack, out=view.pack)  # buffered: may alias
            return True

        with gc_paused():
            for iid in files:
                n = cache.rows(iid) if cache is not None else None
                if n is not None and from_cache(iid, n):
                    pos += n
                    continue
                seg = parse(iid)
                if seg is None:
                    continue
                room(seg.n)
                end = pos + seg.n
                ids[pos * 32 : end * 32] = seg.ids
                numbers = take_packs(seg.packs)
                np.take(numbers, seg.pack, out=cols[0][pos:end])
                if cache is not None and not seg.odd:
                    # cached once the columns are whole (below), from their rows: the
                    # file's packs and its own pack numbers are the index's from the
                    # first on (its sizes kept), or else kept
                    first = int(numbers[0])
                    if (numbers == np.arange(first, first + len(numbers))).all():
                        kept: Any = (first, np.array([v for _p, v in seg.packs], np.uint64))
                    else:
                        kept = (seg.packs, seg.pack)
                    to_cache.append((iid, pos, end, kept))
                cols[1][pos:end] = seg.offset
                cols[2][pos:end] = seg.length
                cols[3][pos:end] = seg.raw
                cols[4][pos:end] = seg.type
                for _i, bid, k, t, o, n, r in seg.odd:
                    side.pop(bid, None)  # re-inserted: dict order follows the rows
                    side[bid] = IndexEntry(seg.packs[k][0], BLOB_TYPES[t], o, n, r)
                pos = end
                del seg
            room(0)
            # the columns are whole and never resized again: the new cache files are
            # written from them by a thread while the sorted view is built here (the
            # writes, the hashing and numpy's sort all release the GIL)
            writer = None
            if to_cache:
                writer = threading.Thread(
                    target=_write_cache, name="index-cache-write",
                    args=(cache, to_cache, index._packs, ids, cols), daemon=True)
                writer.start()
            try:
                base = _Base(ids, *cols) if pos else None
            finally:
                if writer is not None:
                    writer.join()
        index._state = (base, None, side, 0)  # odd ids never match a column row
        if cache is not None:
            cache.sweep(set(files))
        return index, sizes, errors
