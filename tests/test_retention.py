"""Retention (GFS policy, pure logic) and cleanup (forget, prune, pins) on real repositories.

Policy tests run on synthetic snapshot lists. Prune tests back up a changing
source tree several times, forget some snapshots, prune, and then check three
things: the forgotten data is gone, ``verify --read-data`` is clean, and every
kept snapshot restores exactly as it did before the prune. Crashes and S3
Object Lock refusals are simulated by wrapping the repository's backend.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from test_files_backup import assert_same_tree, restored_root

from engine.errors import EngineError
from engine.ops import prune as prune_op
from engine.ops.retention import Decision, Policy, plan
from engine.repo.repository import DATA, TREE, now_iso
from engine.storage.s3 import S3Error

NOW = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)


def snap(i: int | str, t: datetime, source: str = "app", kind: str = "files",
         complete: bool = True) -> dict:
    return {"id": f"{i}" if isinstance(i, str) else f"s{i:04d}", "time": t, "source": source,
            "kind": kind, "complete": complete}


def daily_year() -> list[dict]:
    """One snapshot a day at 03:00 UTC through 2025."""
    start = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
    return [snap(i, start + timedelta(days=i)) for i in range(365)]


def run(snaps, policy: Policy, pinned=(), tz=UTC, now=NOW) -> dict[str, Decision]:
    return {d.snapshot_id: d for d in plan(snaps, lambda k, s: policy, set(pinned), now, tz)}


def kept(decisions: dict[str, Decision]) -> set[str]:
    return {i for i, d in decisions.items() if d.keep}


def day_id(month: int, day: int) -> str:
    return f"s{(datetime(2025, month, day) - datetime(2025, 1, 1)).days:04d}"


# ------------------------------------------------------------------ Policy


def test_policy_from_dict_and_merged():
    p = Policy.from_dict({"keep_last": 7, "keep_daily": 14})
    assert p == Policy(keep_last=7, keep_daily=14)
    assert p.merged({"keep_daily": 3, "keep_yearly": 2}) == Policy(7, 0, 3, 0, 0, 2, 0)
    assert p.merged({}) == p
    with pytest.raises(ValueError, match="keep_dialy"):
        Policy.from_dict({"keep_dialy": 3})
    with pytest.raises(ValueError, match="keep_hourlyy"):
        p.merged({"keep_hourlyy": 1})
    with pytest.raises(ValueError, match="keep_last"):
        Policy.from_dict({"keep_last": -1})
    with pytest.raises(ValueError, match="keep_weekly"):
        Policy.from_dict({"keep_weekly": "4"})
    with pytest.raises(ValueError, match="keep_monthly"):
        Policy.from_dict({"keep_monthly": True})
    assert Policy().keeps_nothing and not p.keeps_nothing


# ------------------------------------------------------------------- rules


def test_keep_last():
    d = run(daily_year(), Policy(keep_last=3))
    assert kept(d) == {"s0364", "s0363", "s0362"}
    assert d["s0362"].reasons == ["last 3"]
    assert d["s0364"].reasons == ["last 3", "newest of its source"]
    assert d["s0361"].reasons == ["no rule keeps it"] and not d["s0361"].keep


def test_keep_daily_counts_only_days_with_snapshots():
    snaps = [s for s in daily_year() if s["time"].day != 30]  # no backup on the 30th
    d = run(snaps, Policy(keep_daily=3))
    assert kept(d) == {day_id(12, 31), day_id(12, 29), day_id(12, 28)}
    assert d[day_id(12, 29)].reasons == ["daily 2025-12-29"]


def test_keep_daily_keeps_the_newest_of_each_day():
    base = datetime(2025, 12, 31, tzinfo=UTC)
    snaps = [snap(h, base + timedelta(hours=h)) for h in range(0, 48, 6)]  # 2 days, 4 a day
    d = run(snaps, Policy(keep_daily=2))
    assert kept(d) == {"s0042", "s0018"}
    assert d["s0018"].reasons == ["daily 2025-12-31"]
    assert d["s0042"].reasons == ["daily 2026-01-01", "newest of its source"]


def test_keep_hourly():
    base = datetime(2025, 12, 31, 10, 0, tzinfo=UTC)
    snaps = [snap(m, base + timedelta(minutes=m)) for m in range(0, 8 * 60, 15)]
    d = run(snaps, Policy(keep_hourly=5), now=base + timedelta(hours=8))
    # the newest of each of the last 5 hours: xx:45 of hours 17, 16, 15, 14, 13
    assert kept(d) == {f"s{m:04d}" for m in (465, 405, 345, 285, 225)}
    assert d["s0285"].reasons == ["hourly 2025-12-31 14:00"]


def test_keep_weekly_uses_iso_weeks():
    d = run(daily_year(), Policy(keep_weekly=4))
    # 2025-12-31 is a Wednesday in ISO week 2026-W01; weeks end on Sundays
    assert kept(d) == {day_id(12, 31), day_id(12, 28), day_id(12, 21), day_id(12, 14)}
    assert d[day_id(12, 31)].reasons[0] == "weekly 2026-W01"
    assert d[day_id(12, 28)].reasons == ["weekly 2025-W52"]
    assert d[day_id(12, 14)].reasons == ["weekly 2025-W50"]


def test_keep_monthly_and_yearly():
    older = [snap(f"y{y}", datetime(y, 6, 1, tzinfo=UTC)) for y in (2021, 2022, 2023)]
    d = run(daily_year() + older, Policy(keep_monthly=12, keep_yearly=3))
    months = {day_id(m, [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1])
              for m in range(1, 13)}
    assert kept(d) == months | {"y2023", "y2022"}
    assert d[day_id(11, 30)].reasons == ["monthly 2025-11"]
    assert d[day_id(12, 31)].reasons == ["monthly 2025-12", "yearly 2025",
                                         "newest of its source"]
    assert d["y2023"].reasons == ["yearly 2023"]
    assert d["y2021"].reasons == ["no rule keeps it"]


def test_keep_within_days():
    d = run(daily_year(), Policy(keep_within_days=10))
    # now - 10 days = 2025-12-22 00:00; the snapshots of the 22nd to 31st are newer
    assert kept(d) == {day_id(12, day) for day in range(22, 32)}
    assert d[day_id(12, 22)].reasons == ["within 10 days"]


def test_all_rules_are_listed_and_sorted_newest_first():
    policy = Policy(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=1,
                    keep_within_days=3)
    decisions = plan(daily_year(), lambda k, s: policy, set(), NOW, UTC)
    assert [x.snapshot_id for x in decisions] == [f"s{i:04d}" for i in range(364, -1, -1)]
    newest = decisions[0]
    assert newest.reasons == ["last 2", "daily 2025-12-31", "weekly 2026-W01", "monthly 2025-12",
                              "yearly 2025", "within 3 days", "newest of its source"]
    assert newest.time == datetime(2025, 12, 31, 3, 0, tzinfo=UTC)
    assert sum(x.keep for x in decisions) == len(
        {day_id(12, d) for d in range(25, 32)} | {day_id(12, 28), day_id(12, 21), day_id(12, 14)}
        | {day_id(m, d) for m, d in ((11, 30), (10, 31), (9, 30), (8, 31), (7, 31))})


def test_all_zero_policy_keeps_only_the_newest_of_each_source():
    snaps = daily_year() + [snap(f"db{i}", NOW - timedelta(days=i + 1), source="shop",
                                 kind="db") for i in range(5)]
    d = run(snaps, Policy())
    assert kept(d) == {"s0364", "db0"}
    assert d["db0"].reasons == ["newest of its source"]
    assert all(x.reasons == ["no rule keeps it"] for i, x in d.items() if i not in kept(d))


def test_groups_are_per_kind_and_source():
    t = NOW - timedelta(days=1)
    snaps = [snap("a1", t, "a"), snap("a2", t - timedelta(days=1), "a"),
             snap("b1", t - timedelta(days=5), "b"), snap("b2", t - timedelta(days=6), "b"),
             snap("c1", t - timedelta(days=1), "a", kind="db")]
    seen = []

    def policy_for(kind, source):
        seen.append((kind, source))
        return Policy(keep_last=2) if source == "b" else Policy()

    d = {x.snapshot_id: x for x in plan(snaps, policy_for, set(), NOW, UTC)}
    assert sorted(seen) == [("db", "a"), ("files", "a"), ("files", "b")]
    assert kept(d) == {"a1", "b1", "b2", "c1"}


def test_pinned_snapshots_are_kept():
    d = run(daily_year(), Policy(keep_last=1), pinned={"s0000", "s0100", "not-a-snapshot"})
    assert kept(d) == {"s0364", "s0000", "s0100"}
    assert d["s0100"].reasons == ["pinned"]


def test_incomplete_snapshots():
    t = NOW - timedelta(hours=1)
    snaps = [
        snap("newest-incomplete", t, complete=False),
        snap("complete", t - timedelta(days=1)),
        snap("old-incomplete", t - timedelta(days=1, hours=1), complete=False),
        snap("older-complete", t - timedelta(days=2)),
        snap("only-of-its-day", t - timedelta(days=3), complete=False),
    ]
    d = run(snaps, Policy(keep_last=3))
    # the old incomplete one does not count for keep_last: a complete one is newer
    assert kept(d) == {"newest-incomplete", "complete", "older-complete"}
    assert d["old-incomplete"].reasons == ["incomplete: newer complete exists"]
    assert d["complete"].reasons == ["last 3", "newest of its source"]
    # a bucket prefers its complete snapshot, but a day with only an incomplete one keeps it
    d = run(snaps, Policy(keep_daily=4))
    assert d["complete"].reasons == ["daily 2025-12-30", "newest of its source"]
    assert d["old-incomplete"].reasons == ["incomplete: newer complete exists"]
    assert d["only-of-its-day"].reasons == ["daily 2025-12-28"]
    # no complete snapshot at all: the newest is still kept
    d = run([s for s in snaps if not s["complete"]], Policy())
    assert kept(d) == {"newest-incomplete"}
    assert d["newest-incomplete"].reasons == ["newest of its source (incomplete)"]


def test_daily_buckets_follow_the_time_zone():
    snaps = [
        snap("late", datetime(2025, 6, 10, 23, 30, tzinfo=UTC)),  # 01:30 on the 11th in Berlin
        snap("evening", datetime(2025, 6, 10, 20, 0, tzinfo=UTC)),  # 22:00 on the 10th
        snap("day-before", datetime(2025, 6, 9, 12, 0, tzinfo=UTC)),
    ]
    policy = Policy(keep_daily=2)
    utc = run(snaps, policy, tz=UTC)
    berlin = run(snaps, policy, tz=ZoneInfo("Europe/Berlin"))
    assert kept(utc) == {"late", "day-before"}
    assert utc["late"].reasons[0] == "daily 2025-06-10"
    assert kept(berlin) == {"late", "evening"}
    assert berlin["late"].reasons[0] == "daily 2025-06-11"
    assert berlin["evening"].reasons == ["daily 2025-06-10"]


def test_plan_accepts_records_and_iso_times():
    records = [{"id": "x", "time": "2025-12-30T10:00:00+00:00", "kind": "files",
                "source": "app", "incomplete": True},
               {"id": "y", "time": "2025-12-29T10:00:00+00:00", "kind": "files",
                "source": "app", "incomplete": False}]
    d = run(records, Policy(keep_last=5))
    assert d["x"].complete is False and d["x"].time.tzinfo is not None
    assert kept(d) == {"x", "y"}
    with pytest.raises(ValueError):
        plan(records, lambda k, s: Policy(), set(), datetime(2026, 1, 1), UTC)
    # objects with attributes (like the facade's SnapshotInfo) work too
    infos = [SimpleNamespace(id="z", time=datetime(2025, 12, 1, tzinfo=UTC), kind="db",
                             source="shop", complete=True)]
    assert run(infos, Policy())["z"].reasons == ["newest of its source"]


# ============================================================ prune on a repository

KIB = 1024


def random_files(src: Path, rng: random.Random, count: int) -> None:
    for _ in range(count):
        folder = src / rng.choice(["", "a", "a/b", "c"])
        folder.mkdir(parents=True, exist_ok=True)
        name = f"f{rng.getrandbits(40):010x}.bin"
        (folder / name).write_bytes(rng.randbytes(rng.randint(1, 300) * KIB))


def remove_some(src: Path, rng: random.Random, count: int) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for p in rng.sample(files, min(count, len(files))):
        p.unlink()


def listing(repo_dir: Path) -> dict[str, bytes]:
    """Every object of the repository with its bytes (locks excluded)."""
    return {str(p.relative_to(repo_dir)): p.read_bytes() for p in sorted(repo_dir.rglob("*"))
            if p.is_file() and not str(p.relative_to(repo_dir)).startswith("locks/")}


def data_size(repo_dir: Path) -> int:
    return sum(p.stat().st_size for p in (repo_dir / "data").rglob("*") if p.is_file())


def restore_to(engine, sid: str, target: Path) -> Path:
    engine.restore(engine.plan_restore(sid, target=str(target)))
    return target


def snapshot_blobs(repo, sid: str) -> set[str]:
    out: set[str] = set()
    prune_op._snapshot_blobs(repo, repo.load_snapshot(sid), out, set())
    return out


def assert_restores_as_before(engine, sandbox, before: dict[str, Path], tmp: Path) -> None:
    for sid, reference in before.items():
        out = restore_to(engine, sid, tmp / f"after-{sid[:8]}")
        assert_same_tree(restored_root(reference, sandbox.src), restored_root(out, sandbox.src))


@pytest.fixture
def history(sandbox, tmp_path):
    """Five snapshots of a source tree that changes between them, each restored once
    (the reference for after the prune). Returns (engine, ids, references)."""
    rng = random.Random(20261125)
    eng = sandbox.engine(init=True)
    ids: list[str] = []
    for i in range(5):
        if i:
            remove_some(sandbox.src, rng, 6)
        random_files(sandbox.src, rng, 12)
        ids.append(eng.backup("files", "src").id)
    refs = {sid: restore_to(eng, sid, tmp_path / f"before-{sid[:8]}") for sid in ids}
    return eng, ids, refs


def test_forget_and_prune_remove_unique_data(history, sandbox, tmp_path):
    eng, ids, refs = history
    repo = eng.repo()
    gone = [ids[0], ids[2]]
    keep = [i for i in ids if i not in gone]
    unique = (snapshot_blobs(repo, ids[0]) | snapshot_blobs(repo, ids[2])) - set().union(
        *(snapshot_blobs(repo, i) for i in keep))
    assert unique
    size_before = data_size(sandbox.repo)

    assert prune_op.forget(repo, gone) == gone
    assert sorted(repo.list_ids("snapshots")) == sorted(keep)
    events = []
    # default threshold: a pack is rewritten only when more than half of it is unused
    assert prune_op.prune(repo, dry_run=True).bytes_freed < prune_op.prune(
        repo, dry_run=True, repack_threshold=0).bytes_freed
    report = prune_op.prune(repo, repack_threshold=0, on_event=events.append)

    assert report.packs_deleted and not report.skipped
    assert report.bytes_freed > 0 and report.blobs_removed >= len(unique)
    assert report.blobs_kept == len(prune_op.used_blobs(repo))
    assert len(report.index_written) == 1 and len(repo.list_ids("index")) == 1
    assert data_size(sandbox.repo) < size_before
    assert data_size(sandbox.repo) == size_before - report.bytes_freed
    assert not unique & set(repo.index)
    assert events[-1].final and events[-1].phase == "done"
    result = eng.verify(read_data=True)
    assert result.ok, result.problems
    assert not result.notes or "not in any index" not in " ".join(result.notes)
    assert_restores_as_before(eng, sandbox, {i: refs[i] for i in keep}, tmp_path)
    # nothing left to do: a second prune changes nothing
    again = prune_op.prune(repo)
    assert not (again.packs_deleted or again.packs_repacked or again.packs_unreferenced)
    assert again.bytes_freed == 0


def test_repack_keeps_live_blobs_of_a_mostly_garbage_pack(sandbox, tmp_path, monkeypatch):
    # one reader process: both files' blobs in one pack (two readers write a pack each)
    monkeypatch.setenv("BACKUP_TUI_READERS", "1")
    eng = sandbox.engine(init=True)
    (sandbox.src / "keep.bin").write_bytes(os.urandom(200 * KIB))
    (sandbox.src / "big.bin").write_bytes(os.urandom(3 * 1024 * KIB))
    first = eng.backup("files", "src").id
    (sandbox.src / "big.bin").unlink()
    second = eng.backup("files", "src").id
    ref = restore_to(eng, second, tmp_path / "before")
    repo = eng.repo()
    keep_blob = next(iter(snapshot_blobs(repo, second) & snapshot_blobs(repo, first)
                          - {b for b in snapshot_blobs(repo, second) if
                             repo.index[b].type == TREE}))
    old_pack = repo.index[keep_blob].pack_id

    prune_op.forget(repo, [first])
    dry = prune_op.prune(repo, dry_run=True)
    assert dry.packs_repacked == [old_pack]
    report = prune_op.prune(repo)
    assert report.packs_repacked == [old_pack]
    assert len(report.packs_written) == 1
    assert not (sandbox.repo / "data" / old_pack[:2] / old_pack).exists()
    assert repo.index[keep_blob].pack_id == report.packs_written[0]
    assert repo.load_blob(keep_blob, DATA) == (sandbox.src / "keep.bin").read_bytes()
    assert eng.verify(read_data=True).ok
    assert_restores_as_before(eng, sandbox, {second: ref}, tmp_path)
    # with repack_threshold=1 a partly used pack is never rewritten
    assert prune_op.prune(repo, repack_threshold=1.0).packs_repacked == []


def test_dry_run_changes_nothing(history, sandbox):
    eng, ids, _refs = history
    repo = eng.repo()
    prune_op.forget(repo, ids[:3])
    before = listing(sandbox.repo)
    report = prune_op.prune(repo, dry_run=True)
    assert report.dry_run and report.packs_deleted and report.bytes_freed > 0
    assert report.index_deleted and not report.index_written and not report.packs_written
    assert listing(sandbox.repo) == before
    assert not list((sandbox.repo / "locks").glob("*"))
    real = prune_op.prune(repo)
    assert sorted(real.packs_deleted) == sorted(report.packs_deleted)
    assert sorted(real.packs_repacked) == sorted(report.packs_repacked)
    assert real.bytes_deleted == report.bytes_deleted


class Wrapped:
    """The repository's backend with a delete that misbehaves for chosen names."""

    def __init__(self, inner, fail, error):
        self.inner, self.fail, self.error = inner, fail, error
        self.deleted: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def delete(self, name: str) -> None:
        if self.fail(name):
            raise self.error(f"{name}: refused")
        self.deleted.append(name)
        self.inner.delete(name)


class PowerCut(BaseException):
    """Not an EngineError: nothing in prune may catch it, like a crash."""


@pytest.mark.parametrize("crash_at", ["index/", "data/"])
def test_crash_in_the_middle_then_a_second_prune_finishes(history, sandbox, tmp_path, crash_at):
    eng, ids, refs = history
    repo = eng.repo()
    prune_op.forget(repo, ids[:2])
    real = repo.backend
    repo.backend = Wrapped(real, lambda n: n.startswith(crash_at), PowerCut)
    try:
        with pytest.raises(PowerCut):
            prune_op.prune(repo, repack_threshold=0.2)
    finally:
        repo.backend = real
    # the crashed state is consistent already (the lock is gone with the 'process')
    for lock in (sandbox.repo / "locks").glob("*"):
        lock.unlink()
    repo.load_index()
    assert eng.verify(read_data=True).ok
    report = prune_op.prune(repo, repack_threshold=0.2, unreferenced_grace=0)
    assert report.packs_deleted or report.packs_unreferenced
    result = eng.verify(read_data=True)
    assert result.ok, result.problems
    assert not any("not in any index" in n for n in result.notes)
    assert len(repo.list_ids("index")) == 1
    assert_restores_as_before(eng, sandbox, {i: refs[i] for i in ids[2:]}, tmp_path)
    final = prune_op.prune(repo, repack_threshold=0.2, unreferenced_grace=0)
    assert not (final.packs_deleted or final.packs_repacked or final.packs_unreferenced)


def test_locked_objects_are_skipped_and_the_index_stays_consistent(history, sandbox, tmp_path):
    eng, ids, refs = history
    repo = eng.repo()
    snaps_before = set(repo.list_ids("snapshots"))
    real = repo.backend
    locked = {f"snapshots/{ids[1]}"}
    repo.backend = Wrapped(real, lambda n: n in locked, S3Error)
    try:
        skipped: list[str] = []
        assert prune_op.forget(repo, ids[:3], skipped=skipped) == [ids[0], ids[2]]
        assert skipped == [f"snapshots/{ids[1]}: locked or not deletable: "
                           f"snapshots/{ids[1]}: refused"]
        # lock the index file that names a pack the prune will delete
        doomed = prune_op.prune(repo, dry_run=True, repack_threshold=0.2).packs_deleted[0]
        _packs, named_by = prune_op._read_index_files(repo, repo.list_ids("index"))
        index_file = sorted(named_by[doomed])[0]
        locked.add(f"index/{index_file}")
        report = prune_op.prune(repo, repack_threshold=0.2)
    finally:
        repo.backend = real
    assert set(repo.list_ids("snapshots")) == snaps_before - {ids[0], ids[2]}
    assert any(s.startswith(f"index/{index_file}: locked") for s in report.skipped)
    assert index_file in repo.list_ids("index")
    assert f"{prune_op.pack_name(doomed)}: kept, an index file that could not be deleted " \
        "names it" in report.skipped
    assert (sandbox.repo / prune_op.pack_name(doomed)).exists()
    assert doomed not in report.packs_deleted
    result = eng.verify(read_data=True)
    assert result.ok, result.problems
    assert_restores_as_before(eng, sandbox, {i: refs[i] for i in ids if i not in (ids[0], ids[2])},
                              tmp_path)


def test_everything_locked_cleanup_still_succeeds(history, sandbox):
    eng, ids, _refs = history
    repo = eng.repo()
    prune_op.forget(repo, ids[:3])
    before = {k for k in listing(sandbox.repo) if not k.startswith("index/")}
    real = repo.backend
    repo.backend = Wrapped(real, lambda n: n.startswith(("data/", "index/")), S3Error)
    try:
        report = prune_op.prune(repo, repack_threshold=0.2)
    finally:
        repo.backend = real
    assert report.skipped and not report.packs_deleted and not report.index_deleted
    assert before <= set(listing(sandbox.repo))
    assert eng.verify(read_data=True).ok


def test_damaged_index_makes_prune_refuse(history, sandbox):
    eng, ids, _refs = history
    repo = eng.repo()
    prune_op.forget(repo, ids[:2])
    victim = sandbox.repo / "index" / repo.list_ids("index")[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    before = listing(sandbox.repo)
    with pytest.raises(prune_op.PruneRefused, match=f"index/{victim.name}"):
        prune_op.prune(repo)
    with pytest.raises(EngineError, match="damaged index"):
        prune_op.used_blobs(repo)
    assert listing(sandbox.repo) == before
    assert not list((sandbox.repo / "locks").glob("*"))


def test_unreadable_snapshot_or_lost_index_makes_prune_refuse(history, sandbox):
    eng, ids, _refs = history
    repo = eng.repo()
    snapfile = sandbox.repo / "snapshots" / ids[3]
    good = snapfile.read_bytes()
    snapfile.write_bytes(good[:-1])
    before = listing(sandbox.repo)
    with pytest.raises(prune_op.PruneRefused, match=f"snapshots/{ids[3]}"):
        prune_op.prune(repo)
    assert listing(sandbox.repo) == before
    snapfile.write_bytes(good)
    # an index file lost: the packs it named look unreferenced, but snapshots need them
    for iid in repo.list_ids("index")[:1]:
        (sandbox.repo / "index" / iid).unlink()
    before = listing(sandbox.repo)
    with pytest.raises(prune_op.PruneRefused, match="not in the index|in no index"):
        prune_op.prune(repo, unreferenced_grace=0)
    assert listing(sandbox.repo) == before


def test_unreferenced_pack_of_a_killed_backup_is_removed(history, sandbox):
    eng, _ids, _refs = history
    repo = eng.repo()
    with repo.writer() as w:  # a backup killed after writing a pack, before its index
        w.save(DATA, os.urandom(100 * KIB))
        w.flush()
        (orphan, _size, _entries), = w.written
    repo.load_index()
    path = sandbox.repo / "data" / orphan[:2] / orphan
    assert path.exists()
    # a stale lock of a backup on another host (it may still be running, frozen): its
    # young packs are kept for the grace period; with no such lock they go at once
    # (tests/test_locks.py)
    locks = sandbox.repo / "locks"
    locks.mkdir(exist_ok=True)
    (locks / ("e" * 32)).write_text(json.dumps(
        {"exclusive": False, "purpose": "backup", "host": "frozen-host", "pid": 7,
         "time": time.time() - 3 * 3600, "when": "then"}))
    young = prune_op.prune(repo)  # too young: it may belong to a backup still writing
    assert path.exists() and young.packs_unreferenced == []
    assert any(orphan in s and "s old" in s for s in young.skipped)
    old = time.time() - 2 * 3600
    os.utime(path, (old, old))
    report = prune_op.prune(repo)
    assert report.packs_unreferenced == [orphan]
    assert not path.exists()
    assert report.index_written == []  # no index change was needed
    assert eng.verify(read_data=True).ok


def test_pin_survives_a_policy_that_would_forget_it(history, sandbox, tmp_path):
    eng, ids, refs = history
    repo = eng.repo()
    prune_op.pin(repo, ids[0], note="before the migration")
    assert prune_op.pinned(repo) == {ids[0]}
    assert prune_op.pins(repo)[ids[0]]["note"] == "before the migration"
    infos = [{"id": s["id"], "time": s["time"], "kind": s["kind"], "source": s["source"],
              "incomplete": s.get("incomplete", False)} for s in repo.snapshots()]
    decisions = plan(infos, lambda k, s: Policy(keep_last=1), prune_op.pinned(repo),
                     datetime.now(UTC), UTC)
    by_id = {d.snapshot_id: d for d in decisions}
    assert by_id[ids[0]].keep and by_id[ids[0]].reasons == ["pinned"]
    doomed = [d.snapshot_id for d in decisions if not d.keep]
    assert sorted(doomed) == sorted(ids[1:4])
    assert prune_op.forget(repo, doomed) == doomed
    skipped: list[str] = []
    assert prune_op.forget(repo, [ids[0]], skipped=skipped) == []  # forget refuses a pin
    assert "pinned" in skipped[0]
    prune_op.prune(repo)
    assert set(repo.list_ids("snapshots")) == {ids[0], ids[4]}
    assert eng.verify(read_data=True).ok
    assert_restores_as_before(eng, sandbox, {ids[0]: refs[ids[0]], ids[4]: refs[ids[4]]},
                              tmp_path)
    assert prune_op.unpin(repo, ids[0]) is True
    assert prune_op.unpin(repo, ids[0]) is False
    assert prune_op.pinned(repo) == set()
    with pytest.raises(EngineError):
        prune_op.pin(repo, "0" * 64)


def test_db_snapshot_stream_globals_and_tree_are_kept(sandbox):
    eng = sandbox.engine(init=True)
    repo = eng.repo()
    stream = [os.urandom(50 * KIB) for _ in range(3)]
    glob = os.urandom(10 * KIB)
    toc = os.urandom(5 * KIB)
    from engine.repo.tree import encode_tree

    with repo.writer() as w:
        stream_ids = [w.save(DATA, c) for c in stream]
        glob_id = w.save(DATA, glob)
        toc_id = w.save(DATA, toc)
        tree_id = w.save(TREE, encode_tree([{"name": "toc.dat", "type": "file", "mode": 0o600,
                                            "size": len(toc), "content": [toc_id]}]))
        w.commit()
    base = {"version": 1, "time": now_iso(), "kind": "db", "source": "shop", "host": "h",
            "tags": [], "parent": None, "incomplete": False}
    custom = repo.save_snapshot({**base, "stream": stream_ids, "globals": [glob_id]})
    directory = repo.save_snapshot({**base, "stream": [], "globals": [glob_id],
                                    "tree": tree_id})
    assert prune_op.used_blobs(repo) == {*stream_ids, glob_id, toc_id, tree_id}
    assert prune_op.prune(repo).packs_deleted == []
    prune_op.forget(repo, [custom])
    prune_op.prune(repo, repack_threshold=0.1)
    assert set(repo.index) == {glob_id, toc_id, tree_id}
    assert repo.load_blob(toc_id) == toc
    prune_op.forget(repo, [directory])
    report = prune_op.prune(repo)
    assert repo.index == {} and repo.list_ids("index") == []
    assert report.packs_deleted and not list((sandbox.repo / "data").rglob("*/*"))
