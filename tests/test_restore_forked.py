"""Restore with forked writers (engine/ops/restore.py, ``processes`` > 1: what restore_base
uses for a data directory): the same tree as the threaded restore, every kind of entry
and metadata of the fidelity tree included; a damaged blob fails the restore, naming it.
"""

from __future__ import annotations

import os

import pytest
from test_files_backup import restored_root, tree_of
from test_files_fidelity import fidelity  # noqa: F401 - the fixture

from engine.errors import EngineError, IntegrityError
from engine.ops.restore import execute_restore
from engine.repo.pack import pack_name


def _restore(engine, sid: str, target, processes: int):
    plan = engine.plan_restore(sid, target=str(target))
    return execute_restore(engine.repo(), plan, "test", lambda e: None, None,
                           processes=processes)


def test_forked_writers_restore_what_threads_restore(fidelity, tmp_path):  # noqa: F811
    sandbox, engine, sid = fidelity
    one = _restore(engine, sid, tmp_path / "threads", 1)
    forked = _restore(engine, sid, tmp_path / "forked", 3)
    assert (forked.files, forked.bytes) == (one.files, one.bytes)
    assert sorted(forked.warnings) == sorted(one.warnings)
    ta = restored_root(tmp_path / "threads", sandbox.src)
    tb = restored_root(tmp_path / "forked", sandbox.src)
    a, b = tree_of(ta), tree_of(tb)
    assert sorted(a) == sorted(b) and len(a) > 20
    for k in a:
        assert a[k] == b[k], k
    for rel in a:  # the bytes too, and the holes of the sparse file
        p, q = ta / os.fsdecode(rel), tb / os.fsdecode(rel)
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() == q.read_bytes(), rel
            assert os.lstat(p).st_blocks == os.lstat(q).st_blocks, rel


def test_a_damaged_blob_fails_the_forked_restore(fidelity, tmp_path):  # noqa: F811
    sandbox, engine, sid = fidelity
    repo = engine.repo()
    packs = sorted(p for p in (sandbox.repo / "data").rglob("*") if p.is_file())
    big = max(packs, key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF
    big.write_bytes(bytes(data))
    repo.drop_caches()
    with pytest.raises(EngineError) as err:
        _restore(engine, sid, tmp_path / "damaged", 2)
    assert isinstance(err.value, IntegrityError), err.value
    assert big.name in str(err.value.object_name) or big.name in str(err.value)


def test_forked_writers_read_the_repository_front_to_back(sandbox, engine, tmp_path):
    """Each writer gets consecutive files in the order their content lies in the packs
    (pack, then offset), and the shares carry about equal bytes: a cold restore reads
    each pack front to back instead of seeking for every file."""
    import random

    from engine.ops.restore import _Restorer

    rnd = random.Random(7)
    src = sandbox.src
    for i in range(40):  # sizes from empty to 300 kB, in no order
        (src / f"f{i:02}").write_bytes(rnd.randbytes(rnd.choice([0, 100, 5_000, 300_000])))
    engine.backup("files", "src")
    for i in range(40, 60):  # the second backup's files land in later packs, and in the
        (src / f"e{i:02}").write_bytes(rnd.randbytes(rnd.choice([100, 200_000])))  # walk
    sid = engine.backup("files", "src").id  # before the first backup's ones ("e" < "f")
    repo = engine.repo()
    plan = engine.plan_restore(sid, target=str(tmp_path / "out"))
    files = [(rel, node, False) for rel, node in plan.entries if node["type"] == "file"]
    assert len(files) == 60
    r = _Restorer(repo, plan, "test", lambda e: None, None)
    shares = r._shares(files, 3)

    def where(item):
        content = item[1].get("content") or []
        if not content:
            return ("", 0)
        entry = repo.index.get(content[0])
        return (entry.pack_id, entry.offset)

    in_order = [item for share in shares for item in share]
    assert sorted(in_order, key=lambda i: i[0]) == sorted(files, key=lambda i: i[0])
    assert [where(i) for i in in_order] == sorted(where(i) for i in files)
    assert len({where(i)[0] for i in in_order if where(i)[0]}) >= 2  # several packs
    loads = [sum(int(n.get("size", 0)) + 4096 for _, n, _ in share) for share in shares]
    biggest = max(int(n.get("size", 0)) + 4096 for _, n, _ in files)
    assert all(share for share in shares)
    assert max(loads) - min(loads) <= 2 * biggest
    # and the restore through those shares is the tree
    forked = _restore(engine, sid, tmp_path / "forked", 3)
    assert forked.files == 60
    assert tree_of(restored_root(tmp_path / "forked", src)) == tree_of(src)


def test_batches_are_written_while_the_next_ones_are_made(sandbox, engine, tmp_path,
                                                           monkeypatch):
    """Files go to the writers in batches that grow from FORKED_FIRST; each batch is
    written while the walk makes the next one's entries. Every file arrives, the counts
    add up, the progress never goes back, and a damaged blob in a later batch still
    fails the restore with its name."""
    import engine.ops.restore as restore_mod

    monkeypatch.setattr(restore_mod, "FORKED_FIRST", 4)
    src = sandbox.src
    total = 0
    for d in range(6):
        (src / f"d{d}").mkdir()
        for i in range(25):
            data = os.urandom(1000 + 37 * i + d)
            (src / f"d{d}" / f"f{i:02}").write_bytes(data)
            total += len(data)
    sid = engine.backup("files", "src").id
    events = []
    plan = engine.plan_restore(sid, target=str(tmp_path / "out"))
    res = execute_restore(engine.repo(), plan, "test", events.append, None, processes=2)
    assert (res.files, res.bytes) == (150, total)
    assert tree_of(restored_root(tmp_path / "out", src)) == tree_of(src)
    done = [(e.items_done, e.bytes_done) for e in events if e.items_done is not None]
    assert done == sorted(done) and done[-1] == (150, total)
    # one blob of the last directory's files damaged: found in its batch, named
    repo = engine.repo()
    node = next(n for rel, n in plan.entries if rel.endswith(b"d5/f24"))
    entry = repo.index.get(node["content"][0])
    pack = next(p for p in (sandbox.repo / "data").rglob("*") if p.name == pack_name(
        entry.pack_id).rsplit("/", 1)[-1])
    data = bytearray(pack.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    repo.drop_caches()
    plan = engine.plan_restore(sid, target=str(tmp_path / "damaged"))
    with pytest.raises(IntegrityError):
        execute_restore(repo, plan, "test", lambda e: None, None, processes=2)
