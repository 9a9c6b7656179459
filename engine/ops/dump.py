"""dump: write a snapshot in its native form to a stream.

A files snapshot becomes a GNU tar stream (names as raw bytes, so names that
are not UTF-8 survive); a stream snapshot (a pg_dump archive, later a base
backup) is written as its bytes. Blobs are fetched one at a time: nothing is
held whole. This is the escape hatch: ``backup-tui dump ID | tar -x``.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import BinaryIO

from engine.errors import UsageError
from engine.repo.repository import Repository
from engine.repo.tree import link_target
from engine.repo.walk import find, walk


class BlobStream(io.RawIOBase):
    """A read-only file over a list of blob ids, each verified on read."""

    def __init__(self, repo: Repository, blob_ids: list[str]):
        self.repo = repo
        self.ids = list(blob_ids)
        self.pos = 0
        self.buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self.buf and self.pos < len(self.ids):
            self.buf = self.repo.load_blob(self.ids[self.pos], "data")
            self.pos += 1
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def _tarinfo(path: bytes, node: dict) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(os.fsdecode(path))
    ti.mode = int(node.get("mode", 0o644)) & 0o7777
    ti.uid = int(node.get("uid", 0))
    ti.gid = int(node.get("gid", 0))
    ti.uname = node.get("user", "") or ""
    ti.gname = node.get("group", "") or ""
    ti.mtime = int(node.get("mtime_ns", 0)) // 1_000_000_000
    typ = node["type"]
    if typ == "file":
        ti.type = tarfile.REGTYPE
        ti.size = int(node.get("size", 0))
    elif typ == "dir":
        ti.type = tarfile.DIRTYPE
    elif typ == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.fsdecode(link_target(node))
    elif typ == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif typ in ("chardev", "blockdev"):
        ti.type = tarfile.CHRTYPE if typ == "chardev" else tarfile.BLKTYPE
        rdev = int(node.get("rdev", 0))
        ti.devmajor, ti.devminor = os.major(rdev), os.minor(rdev)
    else:
        raise ValueError(typ)
    return ti


def dump_files(repo: Repository, snap: dict, out: BinaryIO, path: str | None = None) -> int:
    """Write the snapshot (or the entry at path) as a tar stream; returns entries written."""
    if path:
        sel, node = find(repo, snap["tree"], path)
        items = [(sel, node)]
        if node["type"] == "dir":
            items += list(walk(repo, node["subtree"], sel))
    else:
        items = walk(repo, snap["tree"])
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for p, node in items:
            if node["type"] == "socket":
                continue
            ti = _tarinfo(p, node)
            if node["type"] == "file":
                tar.addfile(ti, io.BufferedReader(BlobStream(repo, node.get("content", [])),
                                                  1024 * 1024))
            else:
                tar.addfile(ti)
            count += 1
    return count


def dump_stream(repo: Repository, snap: dict, out: BinaryIO) -> int:
    total = 0
    for bid in snap.get("stream", []):
        data = repo.load_blob(bid, "data")
        out.write(data)
        total += len(data)
    return total


def dump(repo: Repository, snap: dict, out: BinaryIO, path: str | None = None) -> int:
    if "tree" in snap:  # files, and directory-format database dumps
        return dump_files(repo, snap, out, path)
    if path:
        raise UsageError("--path applies to files snapshots only")
    return dump_stream(repo, snap, out)
