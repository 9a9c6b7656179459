"""Reads from an S3 replica come in large ranges, several at a time (issue 14, item 3).

Against a real moto_server: a restore from the replica reads the packs in segments
(counted on the S3Backend: a few GETs, not one a blob or a file), still restores
every byte, and a damaged or missing pack still fails it, naming the pack; verify
--read-data reads each pack once; adopt fetches each object once. Locally, verify
--read-data's worker processes report exactly what threads report.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from test_s3 import replica_toml, same_tree

from engine.errors import EngineError, IntegrityError
from engine.ops import adopt as adopt_mod
from engine.ops import restore as restore_mod
from engine.ops import verify as verify_mod
from engine.ops.adopt import run_adopt
from engine.ops.restore import execute_restore, plan_restore
from engine.ops.verify import verify
from engine.repo.pack import pack_name
from engine.repo.repository import Repository
from engine.repo.walk import walk
from engine.storage.local import LocalBackend

SMALL_FILES = 400


@pytest.fixture
def replica(sandbox, s3_server, s3_buckets):
    """A backed-up tree (400 small files, two large ones, copies of one file) replicated to
    an S3 bucket; (engine, snapshot id, S3Backend of the replica)."""
    sandbox.extra = replica_toml("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url,
                                 replicate_after_backup=False)
    sandbox.write_config()
    rnd = random.Random(7)
    src = sandbox.src
    for i in range(SMALL_FILES):
        d = src / f"d{i % 20:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(rnd.randbytes(rnd.randrange(100, 6000)))
    (src / "big1.bin").write_bytes(rnd.randbytes(9 << 20))
    (src / "big2.bin").write_bytes(rnd.randbytes(5 << 20))
    same = rnd.randbytes(3000)
    for i in range(5):
        (src / f"same{i}.txt").write_bytes(same)
    eng = sandbox.engine(init=True)
    sid = eng.backup("files", "src", replicate=False).id
    (res,) = eng.replicate()
    assert res.ok
    return eng, sid, eng.replica_backend("use1")


def _open(remote) -> Repository:
    repo = Repository.open(remote, "test-password")
    repo.load_index()
    return repo


def _restore(remote, sid, target):
    repo = _open(remote)
    plan = plan_restore(repo, repo.load_snapshot(sid), target)
    before = remote.requests["get"]
    res = execute_restore(repo, plan, "job", lambda e: None)
    return res, remote.requests["get"] - before, repo


def _data_packs(repo) -> int:
    return len({e.pack_id for e in repo.index.values() if e.type == "data"})


def test_restore_from_s3_reads_segments_not_blobs(replica, sandbox, tmp_path):
    eng, sid, remote = replica
    res, gets, repo = _restore(remote, sid, tmp_path / "out")
    assert res.files == SMALL_FILES + 7
    assert same_tree(sandbox.src, tmp_path / "out" / str(sandbox.src).lstrip("/"))
    blobs = sum(1 for e in repo.index.values() if e.type == "data")
    packs = _data_packs(repo)
    # one GET a blob (or a file) would be > 400; segments of at most 16 MiB of a pack
    assert blobs > SMALL_FILES
    assert gets <= 2 * packs + 2, (gets, packs, blobs)


def test_restore_from_s3_without_read_ahead_is_one_get_a_run(replica, tmp_path, monkeypatch):
    """The counter above can fail: with the read-ahead off, it counts a GET a file."""
    eng, sid, remote = replica
    monkeypatch.setattr(restore_mod._Restorer, "_start_prefetch", lambda self: None)
    res, gets, _repo = _restore(remote, sid, tmp_path / "out")
    assert gets >= SMALL_FILES


def test_read_ahead_budget_holds_with_small_segments(replica, sandbox, tmp_path, monkeypatch):
    """Tiny segments and budget: many segments, most read ahead, some read alone when the
    budget is spent; every byte still restored, and fewer GETs than files."""
    eng, sid, remote = replica
    monkeypatch.setattr(restore_mod, "_SEG_BYTES", 64 * 1024)
    monkeypatch.setattr(restore_mod, "_AHEAD_BYTES", 256 * 1024)
    monkeypatch.setattr(restore_mod, "_SEG_SPAN", 128 * 1024)
    res, gets, _repo = _restore(remote, sid, tmp_path / "out")
    assert same_tree(sandbox.src, tmp_path / "out" / str(sandbox.src).lstrip("/"))
    assert gets < SMALL_FILES


def _pack_of_small_files(repo, sid) -> str:
    """The pack holding a small file's blob (one every restore of the tree reads)."""
    for path, n in walk(repo, repo.load_snapshot(sid)["tree"]):
        if path.endswith(b"f0007.bin"):
            return repo.index[n["content"][0]].pack_id
    raise AssertionError("f0007.bin is not in the snapshot")


def test_damaged_pack_in_s3_still_fails_the_restore(replica, tmp_path):
    eng, sid, remote = replica
    repo = _open(remote)
    pid = _pack_of_small_files(repo, sid)
    data = bytearray(remote.get(pack_name(pid)))
    data[len(data) // 3] ^= 0xFF
    remote.put(pack_name(pid), bytes(data))
    with pytest.raises(IntegrityError) as e:
        _restore(remote, sid, tmp_path / "out")
    assert pack_name(pid) in str(e.value)


def test_missing_pack_in_s3_still_fails_the_restore(replica, tmp_path):
    eng, sid, remote = replica
    repo = _open(remote)
    pid = _pack_of_small_files(repo, sid)
    remote.delete(pack_name(pid))
    with pytest.raises(EngineError, match="not found"):
        _restore(remote, sid, tmp_path / "out")


def test_verify_read_data_from_s3_reads_each_pack_once(replica):
    eng, sid, remote = replica
    repo = _open(remote)
    before = remote.requests["get"]
    report = verify(repo, None, True, "job", lambda e: None)
    assert report.ok, report.problems
    assert report.packs_checked == len(repo.pack_sizes)
    # whole packs (and the trees, index and snapshot records the structure check reads)
    data_gets = remote.requests["get"] - before
    assert data_gets <= len(repo.pack_sizes) + 6, (data_gets, len(repo.pack_sizes))


def test_adopt_fetches_each_object_once(replica, tmp_path):
    eng, sid, remote = replica
    local = LocalBackend(tmp_path / "adopted")
    objects = sum(1 for o in remote.list("") if not o.name.startswith("locks/"))
    before = remote.requests["get"]
    res = run_adopt(local, remote, "use1", "test-password", "job", lambda e: None)
    assert res.ok and res.snapshots == [sid]
    assert remote.requests["get"] - before <= objects + 1


def _corrupt_local(sandbox, eng) -> list[str]:
    """Damage two packs of the local repository holding the snapshots' data: one flipped
    byte, one cut short. (Chosen among the data packs the snapshots use: which pack sorts
    first is chance, and a tree pack's damage is reported by the trees it breaks.)"""
    from engine.repo.walk import walk

    repo = Repository.open(LocalBackend(sandbox.repo), "test-password")
    repo.load_index()
    used: set[str] = set()  # data blobs of the snapshots: their packs are what verify reads
    for sid in repo.list_ids("snapshots"):
        for _p, n in walk(repo, repo.load_snapshot(sid)["tree"]):
            used.update(n.get("content", []))
    data_packs = {repo.index[b].pack_id for b in used}
    packs = sorted(p for p in (sandbox.repo / "data").rglob("*")
                   if p.is_file() and p.name in data_packs)
    assert len(packs) >= 2
    data = bytearray(packs[0].read_bytes())
    data[100] ^= 0x01
    packs[0].write_bytes(bytes(data))
    with open(packs[-1], "r+b") as f:
        f.truncate(os.path.getsize(packs[-1]) // 2)
    return [packs[0].name, packs[-1].name]


def test_verify_processes_report_what_threads_report(replica, sandbox, monkeypatch):
    eng, sid, remote = replica
    eng.backup("files", "src", replicate=False)  # a second snapshot: problems name both
    damaged = _corrupt_local(sandbox, eng)

    def run() -> dict:
        repo = Repository.open(LocalBackend(sandbox.repo), "test-password")
        repo.load_index()
        return verify(repo, None, True, "job", lambda e: None).as_json()

    assert verify_mod._use_processes(Repository.open(LocalBackend(sandbox.repo),
                                                     "test-password")) == (
        len(os.sched_getaffinity(0)) > 1)
    forked = run()
    monkeypatch.setattr(verify_mod, "_use_processes", lambda repo: False)
    threads = run()
    assert forked == threads
    assert not forked["ok"]
    named = {p["object"].rsplit("/", 1)[-1] for p in forked["problems"]}
    assert set(damaged) <= named


class _CountingGets:
    """The replica's S3Backend, counting the GETs under way at once (each held a moment)."""

    def __init__(self, remote):
        self._remote = remote
        self._lock = threading.Lock()
        self.now = self.most = 0

    def __getattr__(self, name):
        return getattr(self._remote, name)

    def get(self, name):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)
            return self._remote.get(name)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize("budget", [1, adopt_mod.INFLIGHT_BYTES])
def test_adopt_bytes_in_flight_are_bounded(replica, tmp_path, monkeypatch, budget):
    """A budget of one byte lets one object at a time through; the default lets several."""
    eng, sid, remote = replica
    monkeypatch.setattr(adopt_mod, "INFLIGHT_BYTES", budget)
    counting = _CountingGets(remote)
    res = run_adopt(LocalBackend(tmp_path / "adopted"), counting, "use1", "test-password",
                    "job", lambda e: None)
    assert res.ok and res.snapshots == [sid]
    assert (counting.most == 1) == (budget == 1), counting.most
