"""Packs: files of many sealed blobs followed by a sealed header.

Layout: ``blob_1 .. blob_n  header  u32le(len(header))`` where each blob is
``seal(encode(raw))`` and the header is ``seal(encode(json))`` of a list of
``[type, id, offset, length, raw_length]``. A pack's name is the SHA-256 of its
bytes, stored as ``data/<first 2 hex>/<id>``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from engine.errors import IntegrityError
from engine.repo import codec
from engine.repo.crypto import Keys

DATA = "data"
TREE = "tree"
BLOB_TYPES = (DATA, TREE)
MAX_HEADER = 16 * 1024 * 1024


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


def read_header(keys: Keys, pack: bytes, pack_id: str) -> list[BlobEntry]:
    """Parse and check a whole pack's header. Raises IntegrityError naming the pack."""
    what = pack_name(pack_id)
    if len(pack) < 4:
        raise IntegrityError(f"{what}: truncated (no header length)", what)
    (hlen,) = struct.unpack("<I", pack[-4:])
    if hlen > MAX_HEADER or hlen + 4 > len(pack):
        raise IntegrityError(f"{what}: truncated or bad header length", what)
    raw = codec.decode(keys.open(pack[-4 - hlen : -4], what), what)
    try:
        rows = json.loads(raw)
        entries = [BlobEntry(str(t), str(i), int(o), int(n), int(r)) for t, i, o, n, r in rows]
    except (ValueError, TypeError) as e:
        raise IntegrityError(f"{what}: malformed header: {e}", what) from None
    end = len(pack) - 4 - hlen
    for e in entries:
        if e.offset < 0 or e.length <= 0 or e.offset + e.length > end:
            raise IntegrityError(f"{what}: header entry for blob {e.id} out of bounds", what)
    return entries
