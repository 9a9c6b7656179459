"""Restore speed-ups (engine/ops/restore.py, engine/repo/pack.py ``open_blob``): into a
fresh target with forked writers the walk makes no directory and no written file (each
writer makes the directories of its files, the last pass the empty ones), batches
overlap, and blobs are opened without copies; the restored tree is still exactly the
source's (metadata of directories included), a resume keeps every file, and a damaged
blob is named as ``Repository.decode_blob`` names it.
"""

from __future__ import annotations

import os

import pytest
from test_files_backup import restored_root, tree_of

from engine.errors import IntegrityError
from engine.ops.restore import execute_restore
from engine.repo import codec
from engine.repo.pack import open_blob, pack_name


def _tree(src) -> int:
    """Deep and wide directories, empty ones (nested too), ones holding only a symlink or
    only a hard link's second name, small and larger files; returns the bytes."""
    total = 0
    for d in range(5):
        deep = src / f"d{d}" / "a" / "b" / "c"
        deep.mkdir(parents=True)
        for i in range(12):
            data = os.urandom(200 + 91 * i + d) if i % 3 else b"text " * (50 + i)
            (deep / f"f{i:02}").write_bytes(data)
            total += len(data)
        (src / f"d{d}" / "a" / f"g{d}").write_bytes(b"x" * (70_000 + d))
        total += 70_000 + d
    (src / "empty" / "inside" / "deeper").mkdir(parents=True)
    (src / "only_link").mkdir()
    os.symlink("../d0/a/b/c/f01", src / "only_link" / "s")
    (src / "only_hard").mkdir()
    os.link(src / "d1" / "a" / "b" / "c" / "f02", src / "only_hard" / "h")
    os.chmod(src / "empty" / "inside", 0o750)
    os.chmod(src / "d2" / "a" / "b", 0o711)
    for p in (src / "empty" / "inside", src / "empty", src / "d3" / "a"):
        os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return total


def test_a_forked_restore_into_a_fresh_target_is_the_source(sandbox, engine, tmp_path,
                                                              monkeypatch):
    import engine.ops.restore as restore_mod

    monkeypatch.setattr(restore_mod, "FORKED_FIRST", 3)  # many batches, overlapping
    src = sandbox.src
    total = _tree(src)
    sid = engine.backup("files", "src").id
    events = []
    plan = engine.plan_restore(sid, target=str(tmp_path / "out"))
    res = execute_restore(engine.repo(), plan, "test", events.append, None, processes=3)
    assert res.bytes == total and res.warnings == []
    assert tree_of(restored_root(tmp_path / "out", src)) == tree_of(src)
    done = [(e.items_done, e.bytes_done) for e in events if e.items_done is not None]
    assert done == sorted(done) and done[-1] == (res.files, total)
    # a resume into it keeps every file (the hard link's second name is linked again),
    # and leaves the tree as it was
    plan = engine.plan_restore(sid, target=str(tmp_path / "out"), resume=True)
    again = execute_restore(engine.repo(), plan, "test", lambda e: None, None, processes=3)
    assert (again.skipped_files, again.skipped_bytes) == (res.files - 1, total)
    assert tree_of(restored_root(tmp_path / "out", src)) == tree_of(src)


def test_open_blob_is_decode_blob_without_copies(sandbox, engine):
    src = sandbox.src
    (src / "raw").write_bytes(os.urandom(5000))  # stored as is
    (src / "packed").write_bytes(b"abc" * 5000)  # compressed
    sid = engine.backup("files", "src").id
    repo = engine.repo()
    plan = engine.plan_restore(sid, target=str(sandbox.root / "unused"))
    nodes = {rel.rsplit(b"/", 1)[-1]: n for rel, n in plan.entries if n["type"] == "file"}
    for name in (b"raw", b"packed"):
        bid = nodes[name]["content"][0]
        e = repo.index.get(bid)
        where = pack_name(e.pack_id)
        sealed = repo.backend.get_range(where, e.offset, e.length)
        got = open_blob(repo.keys, memoryview(sealed), bid, where, e.raw_length)
        assert bytes(got) == repo.decode_blob(sealed, bid, where, e.raw_length)
        damaged = bytearray(sealed)
        damaged[len(damaged) // 2] ^= 1
        with pytest.raises(IntegrityError) as a:
            open_blob(repo.keys, memoryview(damaged), bid, where, e.raw_length)
        with pytest.raises(IntegrityError) as b:
            repo.decode_blob(bytes(damaged), bid, where, e.raw_length)
        assert (str(a.value), a.value.object_name) == (str(b.value), b.value.object_name)
        with pytest.raises(IntegrityError) as a:  # the index's raw length disagrees
            open_blob(repo.keys, sealed, bid, where, e.raw_length + 1)
        with pytest.raises(IntegrityError) as b:
            repo.decode_blob(sealed, bid, where, e.raw_length + 1)
        assert str(a.value) == str(b.value)
        with pytest.raises(IntegrityError) as a:  # another blob's id
            open_blob(repo.keys, sealed, "0" * 64, where, e.raw_length)
        assert "does not match blob id" in str(a.value)
    # decode and decode_view agree, and decode still gives bytes
    payload = codec.encode(b"stored as is", None)
    assert codec.decode(payload, "x") == b"stored as is"
    assert isinstance(codec.decode(payload, "x"), bytes)
    assert bytes(codec.decode_view(payload, "x")) == b"stored as is"
