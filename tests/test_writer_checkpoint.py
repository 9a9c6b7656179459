"""The BlobWriter indexes its written packs during a backup (engine/repo/repository.py,
``CHECKPOINT_BLOBS``), so a backup's memory does not grow with the blobs it adds.

Each case lowers the threshold so a few hundred files cross it many times, runs real
backups into a real local repository, with reader processes and with threads, and judges
the result with restore + rsync --checksum, verify --read-data, the index files on disk
and prune.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.events import CancelToken
from engine.ops import prune as prune_op
from engine.repo.repository import BlobWriter

THRESHOLD = 40


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch):
    monkeypatch.setattr(BlobWriter, "CHECKPOINT_BLOBS", THRESHOLD)


def index_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "index").rglob("*") if p.is_file()
                  and not p.name.startswith(".tmp-"))


def rsync_same(a: Path, b: Path) -> None:
    proc = subprocess.run(["rsync", "-aHAX", "--checksum", "--dry-run", "--itemize-changes",
                           "--delete", f"{a}/", f"{b}/"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def unique_tree(src: Path, n: int, tag: str = "") -> None:
    for d in range(4):
        sub = src / f"d{d}"
        sub.mkdir(exist_ok=True)
        for i in range(n // 4):
            (sub / f"f{i:04}{tag}").write_bytes(os.urandom(300 + i))


@pytest.mark.parametrize("readers", ["2", "0"])
def test_a_backup_indexes_its_packs_as_it_goes(sandbox, monkeypatch, readers):
    monkeypatch.setenv("BACKUP_TUI_READERS", readers)
    if readers == "0":
        # threads pack in this process: small packs, so that many of them are written
        monkeypatch.setattr("engine.repo.repository.PACK_TARGET", 16 * 1024)
    unique_tree(sandbox.src, 600)
    same = os.urandom(5000)
    for d in range(4):  # identical content in every directory, across checkpoints
        (sandbox.src / f"d{d}" / "same").write_bytes(same)
    eng = sandbox.engine(init=True)
    res = eng.backup("files", "src")
    assert res.complete
    # several index files from checkpoints, beside the commit's
    assert len(index_files(sandbox.repo)) >= 3, index_files(sandbox.repo)
    repo = sandbox.engine().repo()
    repo.load_index()
    data = [b for b in repo.index if repo.index[b].type == "data"]
    assert len(data) == 601  # each content once: a blob indexed early still dedups
    out = sandbox.root / "out"
    eng.restore(eng.plan_restore(res.id, target=str(out)))
    rsync_same(sandbox.src, out / str(sandbox.src).lstrip("/"))
    assert eng.verify([res.id], read_data=True).ok
    # a second backup finds every blob in the index the checkpoints wrote
    for p in sandbox.src.rglob("*"):
        if p.is_file():
            os.utime(p)
    again = sandbox.engine().backup("files", "src")
    assert again.complete and again.added < 64 * 1024


@pytest.mark.parametrize("readers", ["2", "0"])
def test_a_backup_stopped_after_a_checkpoint_leaves_what_prune_reclaims(
        sandbox, monkeypatch, readers):
    monkeypatch.setenv("BACKUP_TUI_READERS", readers)
    monkeypatch.setattr("engine.repo.repository.PACK_TARGET", 16 * 1024)
    (sandbox.src / "keep").write_bytes(os.urandom(20_000))
    eng = sandbox.engine(init=True)
    first = eng.backup("files", "src")
    before = len(index_files(sandbox.repo))
    unique_tree(sandbox.src, 2000, tag="n")
    token = CancelToken()

    def on_event(ev):  # once a checkpoint's index is on disk, stop the backup
        if len(index_files(sandbox.repo)) > before:
            token.cancel()

    with pytest.raises(EngineError):
        eng.backup("files", "src", on_event, token)
    assert token.cancelled
    assert len(index_files(sandbox.repo)) > before
    assert [s.id for s in eng.snapshots()] == [first.id]
    assert eng.verify(read_data=True).ok  # indexed packs no snapshot names are no damage
    report = prune_op.prune(sandbox.engine().repo())
    assert report.packs_deleted and report.blobs_removed > 0
    assert report.blobs_kept > 0
    assert eng.verify([first.id], read_data=True).ok
    out = sandbox.root / "out"
    eng.restore(eng.plan_restore(first.id, target=str(out)))
    assert (out / str(sandbox.src).lstrip("/") / "keep").read_bytes() == \
        (sandbox.src / "keep").read_bytes()


def test_a_lost_lock_stops_the_next_checkpoint(sandbox, monkeypatch):
    """Once the repository lock is gone (broken by hand, or judged stale elsewhere) a prune
    may run: the backup writes no further index and fails, saying why."""
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    monkeypatch.setattr("engine.repo.repository.PACK_TARGET", 16 * 1024)
    unique_tree(sandbox.src, 800)
    eng = sandbox.engine(init=True)
    broken: list[int] = []

    def on_event(ev):
        if not broken and ev.phase == "backup":
            for p in (sandbox.repo / "locks").iterdir():
                p.unlink()
            broken.append(len(index_files(sandbox.repo)))

    with pytest.raises(EngineError, match="lock was removed"):
        eng.backup("files", "src", on_event)
    assert broken and len(index_files(sandbox.repo)) == broken[0]
    assert eng.snapshots() == []


def test_the_next_backup_reuses_what_a_stopped_one_indexed(sandbox, monkeypatch):
    """A long backup that dies is not all lost: the blobs its checkpoints indexed are
    found by the next backup, which stores only the rest."""
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    monkeypatch.setattr("engine.repo.repository.PACK_TARGET", 16 * 1024)
    unique_tree(sandbox.src, 2000)
    eng = sandbox.engine(init=True)
    token = CancelToken()
    before = len(index_files(sandbox.repo))

    def on_event(ev):
        if len(index_files(sandbox.repo)) >= before + 3:
            token.cancel()

    with pytest.raises(EngineError):
        eng.backup("files", "src", on_event, token)
    repo = sandbox.engine().repo()
    repo.load_index()
    kept = {b for b in repo.index if repo.index[b].type == "data"}
    assert len(kept) >= 3 * THRESHOLD
    # the bytes of the files whose content the stopped backup did not index
    rest = [p.stat().st_size for p in sandbox.src.rglob("*") if p.is_file()
            and repo.keys.blob_id(p.read_bytes()) not in kept]
    assert 0 < len(rest) < 2000 - 3 * THRESHOLD
    res = sandbox.engine().backup("files", "src")
    assert res.complete
    repo = sandbox.engine().repo()
    repo.load_index()
    data = [b for b in repo.index if repo.index[b].type == "data"]
    assert len(data) == 2000  # each content stored once, across both runs
    # only the rest was stored (each blob sealed: some 60 bytes more; then the trees)
    assert sum(rest) < res.added < sum(rest) + 60 * len(rest) + 64 * 1024
    out = sandbox.root / "out"
    eng.restore(eng.plan_restore(res.id, target=str(out)))
    rsync_same(sandbox.src, out / str(sandbox.src).lstrip("/"))
