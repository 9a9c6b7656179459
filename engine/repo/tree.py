"""Tree blobs: one per directory, a sorted list of nodes.

A node is a JSON object: ``name`` (UTF-8) or ``name_b64`` (raw bytes of a name
that is not valid UTF-8), ``type`` (dir, file, symlink, fifo, chardev,
blockdev, socket), ``mode`` (permission bits incl. setuid/setgid/sticky),
``uid``, ``gid``, ``user``, ``group``, ``mtime_ns``, ``size``, ``inode``,
``ctime_ns``; ``content`` (list of data blob ids) for files, ``subtree`` for
directories, ``target``/``target_b64`` for symlinks, ``rdev`` for devices.

Format 1.1 additions (docs/FORMAT.md, section 5), which older readers ignore:
``links`` and ``dev`` on non-directories with more than one link (hard links:
same ``dev`` and ``inode``), ``xattrs`` (``[[name_b64, value_b64], ...]``,
POSIX ACLs among them) and ``holes`` (``[[offset, length], ...]`` zero ranges
of a sparse file, whose ``content`` still covers them with zero blobs).
"""

from __future__ import annotations

import base64
import binascii
import json

from engine.errors import UnsafeEntry

NODE_TYPES = ("dir", "file", "symlink", "fifo", "chardev", "blockdev", "socket")

# How deep trees may nest, counted in directories below the snapshot's root tree. The
# backup does not store a directory deeper than this, and readers refuse deeper trees,
# so whatever a backup stores can be restored.
MAX_DEPTH = 4096


def name_fields(key: str, raw: bytes) -> dict:
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key + "_b64": base64.b64encode(raw).decode("ascii")}


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def node_name(node: dict, where: str = "") -> bytes:
    """The entry's name as bytes, checked to be one safe path component."""
    try:
        if "name" in node and isinstance(node["name"], str):
            raw = _utf8(node["name"])
        elif "name_b64" in node and isinstance(node["name_b64"], str):
            raw = _b64(node["name_b64"])
        else:
            raise UnsafeEntry(f"{where}: entry without a name")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        raise UnsafeEntry(f"{where}: entry with a malformed name") from None
    if raw in (b"", b".", b"..") or b"/" in raw or b"\x00" in raw:
        raise UnsafeEntry(f"{where}: unsafe entry name {raw!r} (would escape the target)")
    return raw


def link_target(node: dict, where: str = "") -> bytes:
    try:
        if "target_b64" in node:
            return _b64(node["target_b64"])
        return _utf8(str(node.get("target", "")))
    except (ValueError, UnicodeError):
        raise UnsafeEntry(f"{where}: symlink with a malformed target") from None


def encode_tree(nodes: list[dict]) -> bytes:
    return json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":")).encode()


# ------------------------------------------------------------ format 1.1 additions


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def encode_xattrs(pairs: list[tuple[bytes, bytes]]) -> list[list[str]]:
    """``xattrs`` as stored: ``[name_b64, value_b64]`` pairs sorted by raw name."""
    return [[base64.b64encode(n).decode("ascii"), base64.b64encode(v).decode("ascii")]
            for n, v in sorted(pairs)]


def node_xattrs(node: dict, where: str = "") -> list[tuple[bytes, bytes]]:
    """The node's extended attributes as (name, value) bytes; [] when it has none."""
    raw = node.get("xattrs")
    if raw is None:
        return []
    out: list[tuple[bytes, bytes]] = []
    try:
        if not isinstance(raw, list):
            raise ValueError
        for pair in raw:
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise ValueError
            name = base64.b64decode(pair[0], validate=True)
            value = base64.b64decode(pair[1], validate=True)
            if not name or b"\x00" in name:
                raise ValueError
            out.append((name, value))
    except (ValueError, binascii.Error):
        raise UnsafeEntry(f"{where}: malformed xattrs") from None
    return out


def node_holes(node: dict, where: str = "") -> list[tuple[int, int]]:
    """The node's hole ranges as (offset, length), checked to be sorted, disjoint and
    inside the file; [] when it has none."""
    raw = node.get("holes")
    if raw is None:
        return []
    size = node.get("size", 0)
    out: list[tuple[int, int]] = []
    end = 0
    ok = isinstance(raw, list) and _int(size)
    for pair in raw if ok else ():
        if not (isinstance(pair, list) and len(pair) == 2 and _int(pair[0]) and _int(pair[1])):
            ok = False
            break
        off, length = pair
        if off < end or length <= 0 or off + length > size:
            ok = False
            break
        out.append((off, length))
        end = off + length
    if not ok:
        raise UnsafeEntry(f"{where}: malformed holes")
    return out


def hardlink_key(node: dict) -> tuple[str, int, int] | None:
    """(type, dev, inode) of a non-directory with more than one link, else None.
    Nodes with the same key in one restore are one file with several names."""
    if node.get("type") == "dir":
        return None
    links, dev, inode = node.get("links"), node.get("dev"), node.get("inode")
    if not (_int(links) and _int(dev) and _int(inode)) or links < 2:
        return None
    return (str(node.get("type")), dev, inode)
