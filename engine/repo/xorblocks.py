"""Blocks stored as the XOR of two blobs (docs/FORMAT.md 5.2, format 1.2).

A base backup after scattered updates touches most 16 KiB blocks of a large table,
but changes only a few dozen bytes in each (a tuple's xmax and hint bits, the page
LSN, a line pointer). Storing each changed block again costs its compressed size; the
XOR of the block with the same block of the parent backup is mostly zeros and
compresses to a few dozen bytes. So a cluster snapshot may store a relation file's
block as such a delta:

- the file node's ``content`` still lists the id F of every block's plaintext (what
  the file *is*), and
- its ``xor`` key lists ``[i, x_id, base_id]`` for the blocks stored as deltas:
  block ``i`` is ``plaintext(x_id) XOR plaintext(base_id)``; both blobs are ordinary
  data blobs of the block's length, and the result's id must be ``content[i]``.

The base is always a block stored whole (a delta is never the base of another), so a
block is rebuilt from at most two reads. A reader that does not know ``xor`` looks
for F, which is not stored, and fails loudly ("missing blob") instead of writing the
wrong bytes; where F happens to be stored too, either way gives the same bytes.
Reachability (prune, verify, repair) counts ``x_id`` and ``base_id`` as used.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.errors import IntegrityError, UnsafeEntry

# a delta is kept when at most this share of its bytes is not zero (it then compresses
# to a small fraction of the block); otherwise the block is stored whole
DELTA_NONZERO = 1 / 8


def _hex64(v: object) -> bool:
    return (isinstance(v, str) and len(v) == 64
            and all(c in "0123456789abcdef" for c in v))


def node_xor(node: dict, path: str = "") -> dict[int, tuple[str, str]]:
    """The node's ``xor`` entries as ``{i: (x_id, base_id)}``, checked as untrusted input
    (UnsafeEntry naming the path): ``[i, x_id, base_id]`` lists with ``i`` whole numbers
    in ascending order inside the content list, ids of 64 hex digits. ``{}`` without."""
    raw = node.get("xor")
    if raw is None:
        return {}
    content = node.get("content")
    n = len(content) if isinstance(content, list) else 0
    if not isinstance(raw, list):
        raise UnsafeEntry(f"{path}: malformed xor list in the snapshot")
    out: dict[int, tuple[str, str]] = {}
    last = -1
    for e in raw:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int)
                and not isinstance(e[0], bool) and last < e[0] < n
                and _hex64(e[1]) and _hex64(e[2])):
            raise UnsafeEntry(f"{path}: malformed xor entry {str(e)[:100]} in the snapshot")
        last = e[0]
        out[e[0]] = (e[1], e[2])
    return out


def xor_bytes(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    """a XOR b, both of the same length."""
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def rebuild(keys, full_id: str, x: bytes | memoryview, base: bytes | memoryview,
            where: str) -> bytes:
    """The block ``x XOR base``, checked against its id ``full_id`` (IntegrityError
    naming ``where`` otherwise)."""
    if len(x) != len(base):
        raise IntegrityError(f"{where}: block {full_id[:16]} is stored as the XOR of blobs of "
                             f"{len(x)} and {len(base)} bytes", where)
    data = xor_bytes(x, base)
    if keys.blob_id(data) != full_id:
        raise IntegrityError(f"{where}: block {full_id[:16]} rebuilt from its delta does not "
                             "match its id (corrupt)", where)
    return data


def load_piece(repo, full_id: str, x_id: str, base_id: str, where: str) -> bytes:
    """One block stored as a delta, read and rebuilt."""
    return rebuild(repo.keys, full_id, repo.load_blob(x_id, "data"),
                   repo.load_blob(base_id, "data"), where)


def worth_it(delta: bytes) -> bool:
    """Whether a delta is worth storing instead of the block: mostly zeros."""
    return len(delta) - delta.count(0) <= len(delta) * DELTA_NONZERO


def stored_ids(node: dict, path: str = "") -> Iterator[str]:
    """The data blobs a file node needs stored: its content ids, except that a block
    stored as a delta needs its two blobs instead of its own id."""
    content = node.get("content") or []
    xor = node_xor(node, path)
    if not xor:
        yield from content
        return
    for i, b in enumerate(content):
        pair = xor.get(i)
        if pair is None:
            yield b
        else:
            yield pair[0]
            yield pair[1]


def content_pieces(node: dict, path: str = "") -> list[tuple[str, str | None, str | None]]:
    """``(full_id, x_id, base_id)`` for every block of the file, the last two None for a
    block stored whole."""
    content = node.get("content") or []
    xor = node_xor(node, path)
    return [(b, *xor[i]) if i in xor else (b, None, None) for i, b in enumerate(content)]


__all__ = ["node_xor", "xor_bytes", "rebuild", "load_piece", "worth_it", "stored_ids",
           "content_pieces", "DELTA_NONZERO"]
