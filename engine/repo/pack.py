"""Packs: files of many sealed blobs followed by a sealed header.

Layout: ``blob_1 .. blob_n  header  u32le(len(header))`` where each blob is
``seal(encode(raw))`` and the header is ``seal(encode(json))`` of a list of
``[type, id, offset, length, raw_length]``. A pack's name is the SHA-256 of its
bytes, stored as ``data/<first 2 hex>/<id>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

from engine.errors import IntegrityError
from engine.repo import codec
from engine.repo.crypto import Keys

DATA = "data"
TREE = "tree"
BLOB_TYPES = (DATA, TREE)
MAX_HEADER = 16 * 1024 * 1024  # sealed header bytes
SEAL_OVERHEAD = 28  # nonce and tag (crypto.NONCE + crypto.TAG)
MAX_SEALED_BLOB = 1 + codec.MAX_RAW + SEAL_OVERHEAD  # the largest stored blob a reader accepts
# The largest pack a reader accepts: a pack is closed once it reaches 16 MiB, so it is
# at most that, one more blob, and its header.
MAX_PACK = 128 * 1024 * 1024
_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobEntry:
    type: str
    id: str
    offset: int
    length: int
    raw_length: int

    def as_list(self) -> list:
        return [self.type, self.id, self.offset, self.length, self.raw_length]


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackBuilder:
    """Accumulates sealed blobs in memory until the pack is full."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.entries: list[BlobEntry] = []
        self.size = 0

    def add(self, blob_type: str, blob_id: str, sealed: bytes, raw_length: int) -> None:
        self.entries.append(BlobEntry(blob_type, blob_id, self.size, len(sealed), raw_length))
        self.parts.append(sealed)
        self.size += len(sealed)

    def finish(self, keys: Keys) -> tuple[str, bytes]:
        header = json.dumps([e.as_list() for e in self.entries], separators=(",", ":"))
        sealed_header = keys.seal(codec.encode(header.encode(), 3))
        self.parts.append(sealed_header)
        self.parts.append(struct.pack("<I", len(sealed_header)))
        # one copy at the end (growing a bytearray instead re-copies it many times)
        data = b"".join(self.parts)
        self.parts = []
        return hashlib.sha256(data).hexdigest(), data


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def header_span(size: int, tail: bytes, what: str) -> tuple[int, int]:
    """Where a pack of ``size`` bytes whose last 4 bytes are ``tail`` keeps its sealed
    header: (offset, length), checked against the size before anything is read."""
    if size < 4 or len(tail) != 4:
        raise IntegrityError(f"{what}: truncated (no header length)", what)
    if size > MAX_PACK:
        raise IntegrityError(f"{what}: {size} bytes, larger than any pack", what)
    (hlen,) = struct.unpack("<I", tail)
    if hlen == 0 or hlen > MAX_HEADER or hlen + 4 > size:
        raise IntegrityError(f"{what}: truncated or bad header length {hlen} "
                             f"(pack of {size} bytes)", what)
    return size - 4 - hlen, hlen


def parse_header(raw: bytes, end: int, what: str) -> list[BlobEntry]:
    """A decoded header's rows, each checked: a known type, a 64-hex id, the sealed blob
    inside [0, end) and no larger than any blob, a raw length up to the blob cap."""
    rows = codec.parse_json(raw, what)
    if not isinstance(rows, list):
        raise IntegrityError(f"{what}: malformed header: not a list", what)
    entries = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 5):
            raise IntegrityError(f"{what}: malformed header: bad row", what)
        t, i, o, n, r = row
        if t not in BLOB_TYPES or not (isinstance(i, str) and _ID.fullmatch(i)):
            raise IntegrityError(f"{what}: malformed header: bad type or blob id", what)
        if not (_whole(o) and _whole(n) and _whole(r)):
            raise IntegrityError(f"{what}: malformed header: blob {i[:16]}: offset, length "
                                 "or raw length is not a whole number", what)
        if o < 0 or n <= 0 or n > MAX_SEALED_BLOB or o + n > end:
            raise IntegrityError(f"{what}: header entry for blob {i} out of bounds", what)
        if not 0 <= r <= codec.MAX_RAW:
            raise IntegrityError(f"{what}: header entry for blob {i}: raw length {r} "
                                 "out of range", what)
        entries.append(BlobEntry(t, i, o, n, r))
    return entries


def read_header(keys: Keys, pack: bytes, pack_id: str) -> list[BlobEntry]:
    """Parse and check a whole pack's header. Raises IntegrityError naming the pack."""
    what = pack_name(pack_id)
    start, hlen = header_span(len(pack), bytes(pack[-4:]), what)
    raw = codec.decode(keys.open(pack[start : start + hlen], what), what)
    return parse_header(raw, start, what)


def open_blob(keys: Keys, sealed: bytes | memoryview, blob_id: str, where: str,
              raw_length: int, check_id: bool = True) -> bytes | memoryview:
    """A stored blob opened, decoded (exactly ``raw_length`` bytes, at most the blob cap)
    and checked against its id: what ``Repository.decode_blob`` does, with the same
    errors (IntegrityError naming ``where``, the pack), but with no copies: the sealed
    bytes may be a view into a pack read whole or a run of blobs, and a blob stored
    uncompressed comes back as a view into its plaintext. For the restore's writers and
    the verify's pack checks, which only write or hash what they get."""
    what = f"{where} (blob {blob_id[:16]})"
    if len(sealed) == 0:
        raise IntegrityError(f"{what}: truncated", where)
    try:
        data = codec.decode_view(keys.open(sealed, what), what,
                                 min(codec.MAX_RAW, raw_length))
    except IntegrityError as e:  # named by the blob; object_name stays the pack
        raise IntegrityError(str(e), where) from None
    if len(data) != raw_length:
        raise IntegrityError(f"{what}: decodes to {len(data)} bytes, the index says "
                             f"{raw_length}", where)
    if check_id and keys.blob_id(data) != blob_id:
        raise IntegrityError(f"{what}: content does not match blob id (corrupt)", where)
    return data
