"""Tree blobs: one per directory, a sorted list of nodes.

A node is a JSON object: ``name`` (UTF-8) or ``name_b64`` (raw bytes of a name
that is not valid UTF-8), ``type`` (dir, file, symlink, fifo, chardev,
blockdev, socket), ``mode`` (permission bits incl. setuid/setgid/sticky),
``uid``, ``gid``, ``user``, ``group``, ``mtime_ns``, ``size``, ``inode``,
``ctime_ns``; ``content`` (list of data blob ids) for files, ``subtree`` for
directories, ``target``/``target_b64`` for symlinks, ``rdev`` for devices.
"""

from __future__ import annotations

import base64
import json

from engine.errors import UnsafeEntry

NODE_TYPES = ("dir", "file", "symlink", "fifo", "chardev", "blockdev", "socket")


def name_fields(key: str, raw: bytes) -> dict:
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key + "_b64": base64.b64encode(raw).decode("ascii")}


def node_name(node: dict, where: str = "") -> bytes:
    """The entry's name as bytes, checked to be one safe path component."""
    if "name" in node and isinstance(node["name"], str):
        raw = node["name"].encode("utf-8", "surrogateescape")
    elif "name_b64" in node and isinstance(node["name_b64"], str):
        raw = base64.b64decode(node["name_b64"])
    else:
        raise UnsafeEntry(f"{where}: entry without a name")
    if raw in (b"", b".", b"..") or b"/" in raw or b"\x00" in raw:
        raise UnsafeEntry(f"{where}: unsafe entry name {raw!r} (would escape the target)")
    return raw


def link_target(node: dict) -> bytes:
    if "target_b64" in node:
        return base64.b64decode(node["target_b64"])
    return str(node.get("target", "")).encode("utf-8", "surrogateescape")


def encode_tree(nodes: list[dict]) -> bytes:
    return json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":")).encode()
