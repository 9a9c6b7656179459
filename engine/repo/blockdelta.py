"""Blocks stored as a delta against an older block (docs/FORMAT.md 5.2, format 1.2).

A base backup after scattered updates touches most 16 KiB blocks of a large table but
changes little in each: a tuple's xmax and hint bits, the page LSN, a line pointer, a
new tuple version; when PostgreSQL prunes a page it also shifts the tuples it keeps.
Stored whole, each changed block costs its compressed size again. Compressed by zstd
with the parent backup's block as a raw-content dictionary, it costs the few bytes that
changed and the positions of the runs that moved: about 150 bytes instead of 7 KiB.

So a cluster snapshot may store a relation file's block as such a delta:

- the file node's ``content`` still lists the id F of every block's plaintext (what
  the file *is*), and
- its ``delta`` key lists ``[i, delta_id, base_id]`` for the blocks stored as deltas:
  block ``i`` is the zstd frame that is the plaintext of blob ``delta_id``,
  decompressed with the plaintext of blob ``base_id`` as its raw-content dictionary.
  Both are ordinary data blobs. The block has the base's length (the frame must
  declare exactly that content size), and its keyed id must be ``content[i]``.

The base is always a block stored whole (a delta is never the base of another), so a
block is rebuilt from at most two reads. A reader that does not know ``delta`` looks
for F, which is not stored, and fails loudly ("missing blob") instead of writing wrong
bytes; where F happens to be stored too, either way gives the same bytes.
Reachability (prune, verify, repair) counts ``delta_id`` and ``base_id`` as used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import zstandard

from engine.errors import IntegrityError, UnsafeEntry

KEY = "delta"  # the file node key
# a delta is kept when its frame is at most this share of the block (a block stored
# whole compresses to about half its size; a delta worth keeping is far smaller)
DELTA_SHARE = 1 / 4
_PARAMS: dict[int, zstandard.ZstdCompressionParameters] = {}
_LEVEL = 1
_local = threading.local()  # this thread's zstd contexts (a forked writer has its copy)
_ffi: Any = None  # zstandard's cffi backend (zstd's own calls), loaded at the first delta:
_lib: Any = None  # walks import this module, and most never meet a delta
_loaded = False


def _backend() -> Any:
    """zstd's own calls through zstandard's cffi backend; None without it (the wheels
    have it; the python-zstandard classes then do the same, slower)."""
    global _ffi, _lib, _loaded
    if not _loaded:
        try:
            from zstandard.backend_cffi import ffi, lib
            _ffi, _lib = ffi, lib
        except ImportError:  # pragma: no cover
            pass
        _loaded = True
    return _lib


_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch


def _hex64(v: object) -> bool:
    return isinstance(v, str) and _HEX64(v) is not None


def node_deltas(node: dict, path: str = "") -> dict[int, tuple[str, str]]:
    """The node's ``delta`` entries as ``{i: (delta_id, base_id)}``, checked as untrusted
    input (UnsafeEntry naming the path): ``[i, delta_id, base_id]`` lists with ``i`` whole
    numbers in ascending order inside the content list, ids of 64 hex digits. ``{}``
    for a node without."""
    raw = node.get(KEY)
    if raw is None:
        return {}
    content = node.get("content")
    n = len(content) if isinstance(content, list) else 0
    if not isinstance(raw, list):
        raise UnsafeEntry(f"{path}: malformed delta list in the snapshot")
    out: dict[int, tuple[str, str]] = {}
    last = -1
    for e in raw:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int)
                and not isinstance(e[0], bool) and last < e[0] < n
                and _hex64(e[1]) and _hex64(e[2])):
            raise UnsafeEntry(f"{path}: malformed delta entry {str(e)[:100]} in the snapshot")
        last = e[0]
        out[e[0]] = (e[1], e[2])
    return out


def _dictionary(base: bytes | memoryview) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(bytes(base), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _cctx():
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = _ffi.gc(_lib.ZSTD_createCCtx(), _lib.ZSTD_freeCCtx)
        _lib.ZSTD_CCtx_setParameter(c, _lib.ZSTD_c_compressionLevel, _LEVEL)
        _lib.ZSTD_CCtx_setParameter(c, _lib.ZSTD_c_contentSizeFlag, 1)
        _lib.ZSTD_CCtx_setParameter(c, _lib.ZSTD_c_checksumFlag, 0)
    return c


def _dctx():
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = _ffi.gc(_lib.ZSTD_createDCtx(), _lib.ZSTD_freeDCtx)
    return d


def make_delta(block: bytes | memoryview, base: bytes | memoryview) -> bytes | None:
    """The delta of ``block`` against ``base`` (same length), or None when it would not be
    much smaller than the block stored whole. zstd level 1 (the matches are long, a
    higher level finds nothing more), the base referenced as a prefix: raw content, as
    a raw-content dictionary is. Through zstd's own calls with a context kept per thread
    (about 5 us a block; a python-zstandard compressor made for each block costs 25)."""
    n = len(block)
    if n != len(base) or n == 0:
        return None
    if _backend() is not None:
        cctx = _cctx()
        cap = int(n * DELTA_SHARE) + 64
        out = bytearray(cap)
        if _lib.ZSTD_isError(_lib.ZSTD_CCtx_refPrefix(cctx, _ffi.from_buffer(base), n)):
            return None
        r = _lib.ZSTD_compress2(cctx, _ffi.from_buffer(out), cap, _ffi.from_buffer(block), n)
        if _lib.ZSTD_isError(r):  # larger than cap (dstSize_tooSmall): not worth it
            _lib.ZSTD_CCtx_reset(cctx, _lib.ZSTD_reset_session_only)
            return None
        frame = bytes(out[:r])
    else:
        params = _PARAMS.get(n)
        if params is None:
            params = _PARAMS[n] = zstandard.ZstdCompressionParameters.from_level(
                _LEVEL, source_size=n, dict_size=n, write_content_size=True,
                write_checksum=False)
        frame = zstandard.ZstdCompressor(compression_params=params,
                                         dict_data=_dictionary(base)).compress(block)
    return frame if len(frame) <= n * DELTA_SHARE else None


def rebuild(keys, full_id: str, delta: bytes | memoryview, base: bytes | memoryview,
            where: str) -> bytes:
    """The block a delta stands for, checked: one frame declaring the base's length,
    nothing after it, and the result's keyed id ``full_id`` (IntegrityError naming
    ``where`` otherwise)."""
    what = f"{where}: block {full_id[:16]}"
    delta = bytes(delta)
    try:
        size = zstandard.frame_content_size(delta)
    except zstandard.ZstdError:
        size = -2
    if size != len(base):
        raise IntegrityError(f"{what}: its delta is not a zstd frame of the base's "
                             f"{len(base)} bytes (corrupt)", where)
    if _backend() is not None:  # one frame exactly, into a buffer of the base's size
        src = _ffi.from_buffer(delta)
        data = bytearray(len(base))
        dctx = _dctx()
        if (_lib.ZSTD_findFrameCompressedSize(src, len(delta)) != len(delta)
                or _lib.ZSTD_isError(_lib.ZSTD_DCtx_refPrefix(dctx, _ffi.from_buffer(base),
                                                              len(base)))):
            raise IntegrityError(f"{what}: its delta is not one zstd frame (corrupt)", where)
        r = _lib.ZSTD_decompressDCtx(dctx, _ffi.from_buffer(data), len(data), src, len(delta))
        if _lib.ZSTD_isError(r):
            _lib.ZSTD_DCtx_reset(dctx, _lib.ZSTD_reset_session_only)
            name = _ffi.string(_lib.ZSTD_getErrorName(r)).decode()
            raise IntegrityError(f"{what}: its delta does not decompress ({name})", where)
    else:
        try:
            data = zstandard.ZstdDecompressor(dict_data=_dictionary(base)).decompress(
                delta, max_output_size=len(base), allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what}: its delta does not decompress ({e})"[:300],
                                 where) from None
    if len(data) != len(base) or keys.blob_id(data) != full_id:
        raise IntegrityError(f"{what}: rebuilt from its delta, does not match its id "
                             "(corrupt)", where)
    return data


def load_piece(repo, full_id: str, delta_id: str, base_id: str, where: str) -> bytes:
    """One block stored as a delta, read and rebuilt."""
    return rebuild(repo.keys, full_id, repo.load_blob(delta_id, "data"),
                   repo.load_blob(base_id, "data"), where)


def stored_ids(node: dict, path: str = "") -> Iterator[str]:
    """The data blobs a file node needs stored: its content ids, except that a block
    stored as a delta needs its two blobs instead of its own id."""
    content = node.get("content") or []
    deltas = node_deltas(node, path)
    if not deltas:
        yield from content
        return
    for i, b in enumerate(content):
        pair = deltas.get(i)
        if pair is None:
            yield b
        else:
            yield pair[0]
            yield pair[1]


def content_pieces(node: dict, path: str = "") -> list[tuple[str, str | None, str | None]]:
    """``(full_id, delta_id, base_id)`` for every block of the file, the last two None for
    a block stored whole."""
    content = node.get("content") or []
    deltas = node_deltas(node, path)
    return [(b, *deltas[i]) if i in deltas else (b, None, None) for i, b in enumerate(content)]


__all__ = ["KEY", "node_deltas", "make_delta", "rebuild", "load_piece", "stored_ids",
           "content_pieces", "DELTA_SHARE"]
