"""Compression of blob and file payloads, and the bounded reading of what a repository
holds.

An encoded payload starts with one byte: 0x00 the rest is stored as is,
0x01 the rest is one zstd frame. Data that zstd cannot shrink is stored as is,
so incompressible files cost no decompression on restore.

Reading is bounded whatever the repository holds (docs/FORMAT.md, reader limits):
`decode` walks the frame's block headers (every zstd block decompresses to at most
128 KiB) and refuses bytes after the frame. A frame that declares its size is refused
when the size passes the cap, else decompressed into a buffer of exactly that size
(zstd refuses a frame whose output differs); a frame without a declared size is
decompressed a few blocks at a time, stopping once the output passes the cap. So
neither a lying frame header nor a bomb of RLE blocks makes a reader allocate more.
`parse_json` refuses nesting deeper than `MAX_JSON_DEPTH` before the parser recurses.
Inside `raw_json(prefix)`, `parse_json` on that thread leaves texts whose name starts
with ``prefix`` unparsed (a `RawJSON`): the index loader reads index files through
`Repository.load_record` and parses the canonical ones itself (engine/repo/index.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import zstandard

from engine.errors import IntegrityError

RAW = 0
ZSTD = 1
MAX_RAW = 64 * 1024 * 1024  # no blob or pack header decompresses to more than this
MAX_JSON_DEPTH = 64  # no record, tree, config, key, lock or pin nests deeper

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK_MAX = 128 * 1024  # RFC 8878: no block holds or regenerates more
_BLOCKS_PER_STEP = 32  # decompressed per call: at most 4 MiB of output at once

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes | memoryview, level: int | None) -> bytes:
    """level None: no compression."""
    if level is not None and len(data) > 64:
        packed = _compressor(level).compress(data)
        if len(packed) + 1 < len(data):
            return b"\x01" + packed
    return b"\x00" + bytes(data)


def decode(payload: bytes | memoryview, what: str, max_size: int = MAX_RAW) -> bytes:
    """The plaintext of an encoded payload, at most max_size bytes; IntegrityError naming
    ``what`` for anything else (unknown marker, a damaged or oversized frame, bytes
    after the frame)."""
    data = decode_view(payload, what, max_size)
    return data if isinstance(data, bytes) else bytes(data)


def decode_view(payload: bytes | memoryview, what: str,
                max_size: int = MAX_RAW) -> bytes | memoryview:
    """``decode``, but a payload stored as is comes back as a view into ``payload``
    instead of a copy (a restore writes it, a verify only hashes it)."""
    if not payload:
        raise IntegrityError(f"{what}: empty payload", what)
    kind = payload[0]
    if kind == RAW:
        if len(payload) - 1 > max_size:
            raise IntegrityError(f"{what}: {len(payload) - 1} bytes, more than the "
                                 f"{max_size} a reader accepts", what)
        return memoryview(payload)[1:]
    if kind == ZSTD:
        return _inflate(memoryview(payload)[1:], what, max_size)
    raise IntegrityError(f"{what}: unknown payload encoding {kind}", what)


def _frame_blocks(frame: memoryview, what: str) -> tuple[int, list[int], int]:
    """Walk one zstd frame's structure: (declared content size or -1, the end offset
    of each block, the frame's end). Nothing is decompressed."""
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{what}: cannot decompress: {why}", what)

    if bytes(frame[:4]) != ZSTD_MAGIC:
        raise bad("not a zstd frame")
    try:
        pos = zstandard.frame_header_size(bytes(frame[:18]))
        declared = zstandard.frame_content_size(bytes(frame[:pos]))
    except zstandard.ZstdError as e:
        raise bad(f"bad frame header ({e})") from None
    checksum = bool(frame[4] & 0x04)
    ends: list[int] = []
    while True:
        if pos + 3 > len(frame):
            raise bad("frame truncated")
        head = int.from_bytes(frame[pos:pos + 3], "little")
        last, btype, bsize = head & 1, (head >> 1) & 3, head >> 3
        if btype == 3:
            raise bad("reserved block type")
        if bsize > BLOCK_MAX:
            raise bad("block larger than 128 KiB")
        pos += 3 + (1 if btype == 1 else bsize)
        if pos > len(frame):
            raise bad("frame truncated")
        ends.append(pos)
        if last:
            break
    if checksum:
        pos += 4
        if pos > len(frame):
            raise bad("frame truncated")
    return declared, ends, pos


def _inflate(frame: memoryview, what: str, max_size: int) -> bytes:
    declared, ends, end = _frame_blocks(frame, what)
    if end != len(frame):
        raise IntegrityError(f"{what}: {len(frame) - end} byte(s) after the zstd frame", what)
    if declared > max_size:
        raise IntegrityError(f"{what}: frame declares {declared} bytes, more than the "
                             f"{max_size} a reader accepts", what)
    if declared >= 0:
        # The output size is known and within the cap: zstd decompresses into a buffer
        # of exactly that size and refuses a frame that yields more or less.
        try:
            return _decompressor().decompress(frame)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what}: cannot decompress: {e}", what) from None
    # No declared size: stream a few blocks at a time, stopping past the cap.
    dobj = _decompressor().decompressobj()
    out: list[bytes] = []
    total = 0
    start = 0
    try:
        for i in range(_BLOCKS_PER_STEP - 1, len(ends) + _BLOCKS_PER_STEP - 1,
                       _BLOCKS_PER_STEP):
            stop = end if i >= len(ends) - 1 else ends[i]
            piece = dobj.decompress(frame[start:stop])
            start = stop
            total += len(piece)
            if total > max_size:
                raise IntegrityError(f"{what}: decompresses to more than the {max_size} "
                                     "bytes a reader accepts", what)
            out.append(piece)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what}: cannot decompress: {e}", what) from None
    if not dobj.eof:
        raise IntegrityError(f"{what}: cannot decompress: frame incomplete", what)
    return out[0] if len(out) == 1 else b"".join(out)


def parse_level(setting: str) -> int | None:
    if setting == "none":
        return None
    _, _, level = setting.partition(":")
    return int(level) if level else 3


# ------------------------------------------------------------------- bounded JSON

_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_MARKS = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(rb'"[^"]+"')
_SQUARE = bytes.maketrans(b"{}", b"[]")


def _brackets(raw: bytes) -> bytes:
    """The brackets and braces of a JSON text that are outside strings."""
    if b"\\" in raw:  # backslash pairs, then escaped quotes, never delimit a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # only quotes and brackets: quotes alternate opening and closing a string, so
    # dropping two adjacent ones keeps that (an empty string goes, or two strings
    # merge); then every string left holds brackets only, and goes too (and the
    # quote of one left open)
    marks = raw.translate(None, _NOT_MARKS).replace(b'""', b"")
    return _STRING.sub(b"", marks).replace(b'"', b"") if b'"' in marks else marks


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text. Exact for valid JSON,
    and for any text at least the depth its parser reaches before its first error."""
    outside = _brackets(raw)
    if len(outside) <= 1:
        return len(outside)
    return max(itertools.accumulate(_DEPTH_STEP[c] for c in outside))


def _deeper_than(raw: bytes, limit: int) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # each pass removes the innermost pairs, one level; valid JSON no deeper than
    # the limit is empty after that many passes (fast, in C); anything left over is
    # measured exactly
    s = _brackets(raw).translate(_SQUARE)
    for _ in range(limit):
        if not s:
            return False
        s = s.replace(b"[]", b"")
    return bool(s) and json_depth(raw) > limit


class RawJSON:
    """A JSON text ``parse_json`` left unparsed inside ``raw_json``: ``data`` (bytes),
    ``what`` and ``max_depth`` as it was called with; ``parse()`` does what it would
    have done."""

    __slots__ = ("data", "what", "max_depth")

    def __init__(self, data: bytes, what: str, max_depth: int):
        self.data, self.what, self.max_depth = data, what, max_depth

    def parse(self) -> Any:
        return _parse_bounded(self.data, self.what, self.max_depth)


@contextlib.contextmanager
def raw_json(prefix: str) -> Iterator[None]:
    """Within: ``parse_json`` on this thread returns a ``RawJSON`` (checks nothing) for
    a text whose ``what`` starts with ``prefix``, for a caller that parses it itself
    and calls ``RawJSON.parse`` for anything it does not recognise."""
    was = getattr(_local, "raw_prefix", None)
    _local.raw_prefix = prefix
    try:
        yield
    finally:
        _local.raw_prefix = was


def parse_json(raw: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with the nesting bounded: IntegrityError naming ``what`` for invalid
    JSON or nesting deeper than max_depth (never RecursionError)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    prefix = getattr(_local, "raw_prefix", None)
    if prefix is not None and what.startswith(prefix):
        return RawJSON(data, what, max_depth)
    return _parse_bounded(data, what, max_depth)


def _parse_bounded(data: bytes, what: str, max_depth: int) -> Any:
    if _deeper_than(data, max_depth):
        raise IntegrityError(f"{what}: nested deeper than {max_depth}", what)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: belt and braces
        raise IntegrityError(f"{what}: not valid JSON: {e}", what) from None
