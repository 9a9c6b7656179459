"""The shortest end-to-end path through the engine: back up, list, verify, restore."""

import filecmp
import os


def test_backup_verify_restore_roundtrip(sandbox, engine, tmp_path):
    (sandbox.src / "a.txt").write_text("hello\n")
    (sandbox.src / "d").mkdir()
    (sandbox.src / "d" / "b.bin").write_bytes(os.urandom(3 << 20))
    res = engine.backup("files", "src")
    assert res.complete and res.files == 2
    assert [s.id for s in engine.snapshots()] == [res.id]
    assert engine.verify(read_data=True).ok
    target = tmp_path / "out"
    engine.restore(engine.plan_restore(res.id, target=str(target)))
    restored = target / str(sandbox.src).lstrip("/")
    cmp = filecmp.dircmp(sandbox.src, restored)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
