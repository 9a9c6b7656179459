"""A large file of blocks of one size (a cluster's relation file) is written by every
forked writer, each a part of its blocks at its offset (engine/ops/restore.py, _split):
the bytes, the metadata set once after every part, and a crafted file whose blocks only
look like one size refused instead of written wrong."""

from __future__ import annotations

import os

import pytest
from test_delta_read import BLOCK, T0, Builder, check_tree, node, restore

from engine.errors import IntegrityError
from engine.ops import restore as restore_op
from engine.repo.repository import DATA, TREE, now_iso
from engine.repo.tree import encode_tree


@pytest.fixture
def local(engine):
    return engine.repo()


@pytest.fixture
def small_split(monkeypatch):
    """Files from 64 KiB are split (32 MiB in use): the tests stay small. The parts made
    are counted."""
    monkeypatch.setattr(restore_op, "_SPLIT_BYTES", 64 * 1024)
    made: list[tuple[bytes, int]] = []
    split = restore_op._Restorer._split

    def counting(self, item, processes):
        out = split(self, item, processes)
        if out:
            made.append((item[0], len(out)))
        return out

    monkeypatch.setattr(restore_op._Restorer, "_split", counting)
    return made


@pytest.mark.parametrize("processes", [2, 3])
def test_a_large_file_is_written_in_parts(local, tmp_path, small_split, processes):
    b = Builder(local)
    plan = "".join("x" if i % 3 else ("w" if i % 7 == 0 else "=") for i in range(40))
    files = [b.file("big", b.blocks(39) + b.blocks(1, 5000), plan),  # a short last block
             b.file("plain", b.blocks(12), "=" * 12),  # no deltas, split too
             b.file("small", b.blocks(2), "x=")]  # too small to split
    snap = b.snapshot(files)
    result = restore(local, snap, tmp_path / "out", processes)
    check_tree(tmp_path / "out", b.expected)  # bytes, mode and mtime of each
    assert sorted(small_split) == [(b"big", processes), (b"plain", processes)]
    assert result.files == 3 and result.bytes == sum(map(len, b.expected.values()))


def test_blocks_that_only_look_like_one_size_are_refused(local, tmp_path, small_split):
    """A block of 8 KiB in the first half and one of 24 KiB in the second: the file's size
    is what blocks of one size would give, but the second part's offset would be wrong.
    The writer of the first part finds its blocks do not add up and the restore fails;
    with threads it is written right."""
    sizes = [BLOCK] * 3 + [BLOCK // 2] + [BLOCK] * 6 + [BLOCK + BLOCK // 2] + [BLOCK] * 5
    data = [os.urandom(n) for n in sizes]
    w = local.writer()
    content = [w.save(DATA, d) for d in data]
    f = node("odd", "file", content=content, size=sum(sizes))
    root = w.save(TREE, encode_tree([f]))
    w.commit()
    w.close()
    snap = {"version": 1, "time": now_iso(), "kind": "files", "source": "main",
            "host": "test", "paths": ["/"], "tags": [], "tree": root, "parent": None,
            "incomplete": False, "errors": [], "stats": {"files": 1}}
    local.save_snapshot(snap)
    with pytest.raises(IntegrityError, match="not of one size"):
        restore(local, snap, tmp_path / "forked", 2)
    assert small_split == [(b"odd", 2)]
    restore(local, snap, tmp_path / "threads", 1)
    got = tmp_path / "threads" / "odd"
    assert got.read_bytes() == b"".join(data) and got.stat().st_mtime_ns == T0
