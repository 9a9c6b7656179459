"""Repository locks: readers take a shared lock a prune respects (finding 2), stale
rules that survive clock skew and garbage (finding 13), `lock list` / `lock break`,
and what killed or failed writers leave behind (findings 7 and 8)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from test_files_backup import assert_same_tree, restored_root

from engine.errors import EngineError, LockedError
from engine.ops import prune as prune_op
from engine.repo import locks as repo_locks
from engine.repo.locks import STALE, RepoLock, judge
from engine.storage.local import LocalBackend

RETAIN_ONE = ("\n[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n"
              "keep_monthly = 0\n")


def write_lock(repo: Path, name: str, raw: bytes | None = None, **rec) -> Path:
    base = {"exclusive": False, "purpose": "backup files x", "host": socket.gethostname(),
            "pid": os.getpid(), "time": time.time(), "when": "test"}
    base.update(rec)
    (repo / "locks").mkdir(exist_ok=True)
    p = repo / "locks" / name
    p.write_bytes(raw if raw is not None else json.dumps(base).encode())
    return p


def lock_files(repo: Path) -> list[str]:
    d = repo / "locks"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def clock(monkeypatch):
    """This host's observation clock, moved by hand."""
    now = [time.monotonic()]
    monkeypatch.setattr(repo_locks.OBSERVATIONS, "clock", lambda: now[0])
    monkeypatch.setattr(repo_locks.OBSERVATIONS, "path", None)
    monkeypatch.setattr(repo_locks.OBSERVATIONS, "_mem", {})

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


def two_snapshots(sandbox):
    """Two files snapshots; with RETAIN_ONE a cleanup forgets the first."""
    sandbox.extra = RETAIN_ONE
    sandbox.write_config()
    (sandbox.src / "big").write_bytes(os.urandom(3 << 20))
    (sandbox.src / "small").write_text("one")
    eng = sandbox.engine(init=True)
    first = eng.backup("files", "src").id
    expected = sandbox.root / "expected"
    subprocess.run(["cp", "-a", str(sandbox.src), str(expected)], check=True)
    (sandbox.src / "big").write_bytes(os.urandom(3 << 20))  # the first's data is unique
    eng.backup("files", "src")
    return eng, first, expected


# ------------------------------------------------------------ finding 2


def test_cleanup_waits_for_a_restore_and_the_restore_is_complete(sandbox, tmp_path):
    eng, first, expected = two_snapshots(sandbox)
    plan = eng.plan_restore(first, target=str(tmp_path / "out"))
    started, go = threading.Event(), threading.Event()

    def slow(ev):  # the restore stops at its first event under its lock
        if not started.is_set() and lock_files(sandbox.repo):
            started.set()
            go.wait(30)

    results: dict = {}

    def restore():
        try:
            results["restore"] = eng.restore(plan, on_event=slow)
        except EngineError as e:
            results["restore"] = e

    def cleanup():
        try:
            results["cleanup"] = sandbox.engine().cleanup(lock_wait=60)
        except EngineError as e:
            results["cleanup"] = e

    t1 = threading.Thread(target=restore)
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=cleanup)
    t2.start()
    time.sleep(2.0)
    assert t2.is_alive(), "cleanup did not wait for the restore's lock"
    assert (sandbox.repo / "snapshots" / first).exists()
    go.set()
    t1.join(60)
    t2.join(120)
    assert not isinstance(results["restore"], Exception), results["restore"]
    assert_same_tree(expected, restored_root(tmp_path / "out", sandbox.src))
    assert results["cleanup"]["forgotten"] == [first]
    assert lock_files(sandbox.repo) == []
    assert eng.verify(read_data=True).ok


def test_cleanup_waits_for_a_dump_and_the_tar_is_whole(sandbox):
    eng, first, _expected = two_snapshots(sandbox)
    started, go = threading.Event(), threading.Event()

    class SlowOut(io.BytesIO):
        def write(self, b):
            if not started.is_set():
                started.set()
                go.wait(30)
            return super().write(b)

    out = SlowOut()
    res: dict = {}
    t1 = threading.Thread(target=lambda: res.setdefault("n", eng.dump(first, out)))
    t1.start()
    assert started.wait(30)
    # a second process's cleanup gives up with "busy, retry" while the dump reads
    with pytest.raises(LockedError, match=r"busy, retry.*dump .*lock break"):
        sandbox.engine().cleanup(lock_wait=1)
    go.set()
    t1.join(60)
    assert res["n"] > 0 and len(out.getvalue()) > 3 << 20
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
        assert any(n.endswith("/big") for n in names)
        member = next(m for m in tar.getmembers() if m.name.endswith("/big"))
        assert len(tar.extractfile(member).read()) == 3 << 20
    assert sandbox.engine().cleanup()["forgotten"] == [first]
    assert lock_files(sandbox.repo) == []


def test_restore_of_a_snapshot_forgotten_since_its_plan_is_a_clean_error(sandbox, tmp_path):
    eng, first, _expected = two_snapshots(sandbox)
    plan = eng.plan_restore(first, target=str(tmp_path / "out"))
    eng.cleanup()
    with pytest.raises(EngineError, match="no longer exists"):
        eng.restore(plan)
    assert lock_files(sandbox.repo) == []


def test_a_reader_without_write_access_reads_unlocked_with_a_warning(engine, caplog):
    class ReadOnly(LocalBackend):
        def put(self, name, data):
            raise EngineError(f"cannot write {name}: read-only")

    backend = ReadOnly(engine.backend.root)
    with repo_locks.reading(backend, "restore x") as lock:
        assert lock is None
    assert "reading without it" in caplog.text


# ----------------------------------------------------------- finding 13


def test_a_future_dated_lock_from_another_host_goes_stale_after_the_timeout(engine, clock):
    repo = Path(engine.backend.root)
    write_lock(repo, "f" * 32, host="skewed-host", pid=99, exclusive=True,
               time=time.time() + 10 * 365 * 86400, purpose="cleanup")
    backend = engine.backend
    with pytest.raises(LockedError) as e:
        RepoLock(backend, exclusive=False, purpose="backup").acquire(wait=0)
    msg = str(e.value)
    assert "future" in msg and "skewed-host" in msg and f"lock break {'f' * 32}" in msg
    clock(STALE - 5)
    with pytest.raises(LockedError):
        RepoLock(backend, exclusive=False, purpose="backup").acquire(wait=0)
    clock(10)  # unchanged for the stale timeout on this host's clock
    with RepoLock(backend, exclusive=False, purpose="backup").acquire(wait=0) as lock:
        assert lock.removed_maybe_live and not lock.removed_maybe_live[0].dead_owner
    assert lock_files(repo) == []


def test_a_live_foreign_lock_that_keeps_changing_is_never_stale(engine, clock):
    repo = Path(engine.backend.root)
    for i in range(10):  # refreshed every 5 minutes, dated in the future
        write_lock(repo, "a" * 32, host="ahead", pid=5, seq=i,
                   time=time.time() + 3600 + i * 300)
        info = judge(engine.backend.location, f"locks/{'a' * 32}",
                     (repo / "locks" / ("a" * 32)).read_bytes())
        assert not info.stale, info.why
        clock(300)


def test_a_live_foreign_lock_with_a_clock_behind_is_kept_once_seen_changing(engine, clock):
    repo = Path(engine.backend.root)
    loc, name = engine.backend.location, f"locks/{'d' * 32}"
    behind = time.time() - 2 * STALE  # its clock is an hour behind ours

    def refresh(seq: int) -> bytes:
        write_lock(repo, "d" * 32, host="behind", pid=8, seq=seq, time=behind + seq * 300)
        return (repo / "locks" / ("d" * 32)).read_bytes()

    first = judge(loc, name, refresh(1))
    assert first.stale  # by its time; at first sight nothing else is known
    clock(300)
    second = judge(loc, name, refresh(2))  # but it was written again: its holder lives
    assert not second.stale and "behind" in second.why
    clock(STALE + 1)  # then silent for the stale timeout
    assert judge(loc, name, (repo / "locks" / ("d" * 32)).read_bytes()).stale


def test_a_garbage_lock_is_listed_blocks_and_goes_stale(sandbox, clock):
    eng = sandbox.engine(init=True)
    repo = sandbox.repo
    write_lock(repo, "9" * 32, raw=b"\x00\xffnot json{")
    rows = eng.locks()
    assert [(r["id"], r["readable"], r["stale"]) for r in rows] == [("9" * 32, False, False)]
    with pytest.raises(LockedError, match="unreadable"):
        RepoLock(eng.backend, exclusive=True, purpose="prune").acquire(wait=0)
    clock(STALE + 1)
    assert eng.locks()[0]["stale"]
    prune_op.prune(eng.repo(), lock_wait=0)
    assert lock_files(repo) == []


def test_observations_add_up_across_runs_of_the_cli(sandbox):
    """Each run waits a minute at most; what it saw is kept in the state directory, so a
    future-dated lock stops blocking once this host has seen it unchanged long enough."""
    (sandbox.src / "f").write_text("f")
    sandbox.cli("init", check=True)
    write_lock(sandbox.repo, "b" * 32, host="skewed-host", pid=1, exclusive=True,
               time=time.time() + 86400, purpose="cleanup")
    listed = json.loads(sandbox.cli("lock", "list", "--json", check=True).stdout)
    assert listed[0]["host"] == "skewed-host" and not listed[0]["stale"]
    assert "future" in listed[0]["why"] and listed[0]["age"] < 0
    obs = sandbox.state / "lock-observations.json"
    table = json.loads(obs.read_text())
    (entry,) = table.values()
    entry["since"] -= STALE + 1  # as if the first look was half an hour ago
    obs.write_text(json.dumps(table))
    t0 = time.monotonic()
    proc = sandbox.cli("backup", "files", "src")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 30
    assert lock_files(sandbox.repo) == []


def test_same_host_rules_dead_pid_reused_pid_and_live(engine):
    loc = engine.backend.location
    mine = repo_locks.pid_start(os.getpid())

    def info(**rec):
        base = {"exclusive": False, "purpose": "p", "host": socket.gethostname(),
                "pid": os.getpid(), "time": time.time(), "when": "w"}
        base.update(rec)
        return judge(loc, "locks/x", json.dumps(base).encode())

    live = info(start=mine)
    assert not live.stale and live.alive
    gone = info(pid=dead_pid())
    assert gone.stale and gone.dead_owner and gone.alive is False
    reused = info(start=(mine or 0) + 12345)
    assert reused.stale and "another program" in reused.why
    rebooted = info(boot="not-this-boot")
    if repo_locks.boot_id():
        assert rebooted.stale and "boot" in rebooted.why
    frozen = info(time=time.time() - STALE - 10)
    assert frozen.stale and not frozen.dead_owner  # alive but silent: maybe live


def test_waiting_says_who_holds_the_lock_and_how_to_break_it(engine, caplog):
    repo = Path(engine.backend.root)
    write_lock(repo, "c" * 32, host="db-host", pid=4242, exclusive=True, purpose="cleanup")
    with pytest.raises(LockedError):
        RepoLock(engine.backend, exclusive=False, purpose="backup").acquire(wait=1.2)
    assert "waiting up to 1 s" in caplog.text
    assert "cleanup" in caplog.text and "db-host" in caplog.text and "4242" in caplog.text
    assert f"backup-tui lock break {'c' * 32}" in caplog.text


# ------------------------------------------------------- lock list / break


def test_lock_list_and_break_through_the_cli(sandbox):
    sandbox.cli("init", check=True)
    repo = sandbox.repo
    me = write_lock(repo, "1" * 32, purpose="restore abc")  # this process: alive
    dead = write_lock(repo, "2" * 32, pid=dead_pid(), purpose="backup files src")
    far = write_lock(repo, "3" * 32, host="far-host", pid=77, exclusive=True,
                     purpose="cleanup", time=time.time() - 120)
    rows = {r["id"][0]: r for r in json.loads(sandbox.cli("lock", "list", "--json",
                                                          check=True).stdout)}
    assert rows["1"]["alive"] is True and not rows["1"]["stale"]
    assert rows["2"]["alive"] is False and rows["2"]["stale"] and "gone" in rows["2"]["why"]
    assert rows["3"]["alive"] is None and not rows["3"]["stale"] and rows["3"]["exclusive"]
    assert 100 < rows["3"]["age"] < 600 and rows["3"]["host"] == "far-host"
    text = sandbox.cli("lock", "list", check=True).stdout.decode()
    assert "far-host" in text and "STALE" in text and "restore abc" in text

    proc = sandbox.cli("lock", "break", "--stale")
    assert proc.returncode == 0, proc.stderr
    assert not dead.exists() and me.exists() and far.exists()
    # a live-looking lock needs --yes
    proc = sandbox.cli("lock", "break", "333")
    assert proc.returncode == 2 and b"looks live" in proc.stderr and far.exists()
    proc = sandbox.cli("lock", "break", "333", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not far.exists()
    assert sandbox.cli("lock", "break", "999").returncode == 1  # no such lock
    assert sandbox.cli("lock", "break").returncode == 2
    audit = json.loads(sandbox.cli("audit", "--json", check=True).stdout)
    breaks = [a for a in audit if a["action"] == "lock break"]
    done = [a for a in breaks if a["outcome"] == "succeeded"]
    assert len(done) == 2 and any("far-host" in a["detail"] for a in done)
    assert [a["outcome"] for a in breaks if a not in done] == ["failed"]  # the unknown id
    me.unlink()


# ------------------------------------------------------ findings 7 and 8


def test_partial_objects_of_killed_writers_are_reclaimed(engine):
    repo = Path(engine.backend.root)
    (repo / "data" / "ab").mkdir(parents=True, exist_ok=True)
    old = repo / "data" / "ab" / ".tmp-0123456789abcdef"
    old.write_bytes(b"x" * 5000)
    (repo / "index").mkdir(exist_ok=True)
    young = repo / "index" / ".tmp-fedcba9876543210"
    young.write_bytes(b"y" * 10)
    os.utime(old, (time.time() - 600, time.time() - 600))
    dry = prune_op.prune(engine.repo(), dry_run=True)
    assert dry.temp_deleted == ["data/ab/.tmp-0123456789abcdef"] and old.exists()
    report = prune_op.prune(engine.repo())
    assert report.temp_deleted == ["data/ab/.tmp-0123456789abcdef"]
    assert report.temp_bytes == 5000 and not old.exists()
    assert young.exists() and any(".tmp-fedcba" in s for s in report.skipped)
    # a possibly-live owner (a stale lock of another host): only past the stale timeout
    os.utime(young, (time.time() - 600, time.time() - 600))
    write_lock(repo, "4" * 32, host="frozen", pid=3, time=time.time() - STALE - 60)
    assert prune_op.prune(engine.repo()).temp_deleted == [] and young.exists()
    os.utime(young, (time.time() - STALE - 60,) * 2)
    assert prune_op.prune(engine.repo()).temp_deleted == ["index/.tmp-fedcba9876543210"]
    with pytest.raises(EngineError):
        engine.backend.delete_temp("data/ab/not-a-temp")
    with pytest.raises(EngineError):
        engine.backend.delete_temp("../.tmp-x")


def test_packs_of_a_failed_backup_are_freed_by_the_next_cleanup(sandbox):
    """The state or repository disk fills up mid-backup: the backup fails, and cleanup
    frees its packs at once (no backup lock can own them), so the retry has room."""
    (sandbox.src / "data").write_bytes(os.urandom(20 << 20))
    base = sandbox.engine(init=True)

    class FullAtIndex(LocalBackend):
        def put(self, name, data):
            if name.startswith("index/"):
                raise EngineError(f"disk full writing {name}: no space left on device")
            super().put(name, data)

    failing = type(base)(base.config, backend=FullAtIndex(sandbox.repo))
    with pytest.raises(EngineError, match="disk full"):
        failing.backup("files", "src")
    packs = [p for p in (sandbox.repo / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in packs) > 20 << 20
    assert lock_files(sandbox.repo) == []
    out = base.cleanup()
    assert out["prune"]["packs_unreferenced"] == len(packs)
    assert not [p for p in (sandbox.repo / "data").rglob("*") if p.is_file()]
    assert base.backup("files", "src").id
    assert base.verify(read_data=True).ok


def test_packs_of_a_killed_backup_go_at_once_when_its_process_is_gone(engine):
    repo = engine.repo()
    from engine.repo.pack import DATA

    with repo.writer() as w:
        w.save(DATA, os.urandom(100_000))
        w.flush()
        (orphan, _size, _entries), = w.written
    write_lock(Path(engine.backend.root), "5" * 32, pid=dead_pid())  # its lock, left behind
    report = prune_op.prune(repo)
    assert report.packs_unreferenced == [orphan]
    assert lock_files(Path(engine.backend.root)) == []


def test_release_never_fails_the_operation_it_ends(engine, caplog):
    class Unreachable(LocalBackend):
        down = False

        def delete(self, name):
            if self.down:
                raise EngineError(f"delete {name}: connection failed")
            super().delete(name)

    backend = Unreachable(engine.backend.root)
    lock = RepoLock(backend, exclusive=False, purpose="replicate to use1").acquire()
    backend.down = True
    lock.release()  # no exception: the replication's own result stands
    assert f"lock break {lock.id}" in caplog.text
    assert lock_files(Path(engine.backend.root)) == [lock.id]


def test_a_backup_whose_lock_was_broken_commits_nothing(sandbox, monkeypatch):
    """If another process judged our lock stale (or an admin broke it) while the backup
    ran, a prune may have deleted packs it counts on: no index, no snapshot."""
    from engine.sources.fileset import FilesSource

    eng = sandbox.engine(init=True)
    (sandbox.src / "f").write_bytes(os.urandom(1 << 20))
    real = FilesSource.backup

    def backup_then_lose_the_lock(self, ctx):
        out = real(self, ctx)
        for obj in ctx.repo.backend.list("locks/"):
            ctx.repo.backend.delete(obj.name)  # what 'lock break' or a stale judgement does
        return out

    monkeypatch.setattr(FilesSource, "backup", backup_then_lose_the_lock)
    with pytest.raises(EngineError, match="lock was removed while it ran"):
        eng.backup("files", "src", replicate=False)
    assert eng.snapshots() == [] and list(eng.backend.list("index/")) == []
