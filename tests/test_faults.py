"""Concurrency and crashes: each ends in a clear outcome and an intact repository.

Real CLI subprocesses: two backups of one source at once, and a backup killed with
SIGKILL in the middle (after its first pack reached the repository). Then verify,
back up again, and restore, and compare with the source. Stale locks (a dead
process on this host, an expired one from another host) must not block.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_files_backup import assert_same_tree, restored_root

from engine.errors import LockedError
from engine.repo.locks import STALE, RepoLock
from engine.storage.local import LocalBackend

MIB = 1024 * 1024


def popen_cli(sb, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    return subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def packs(repo: Path) -> list[Path]:
    data = repo / "data"
    if not data.is_dir():
        return []
    return [p for p in data.glob("*/*") if not p.name.startswith(".")]


def locks(repo: Path) -> list[Path]:
    d = repo / "locks"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def fill(src: Path, files: int, size: int) -> None:
    for i in range(files):
        (src / f"d{i % 4}").mkdir(exist_ok=True)
        (src / f"d{i % 4}" / f"f{i:03}.bin").write_bytes(os.urandom(size))


def test_two_backups_at_once(sandbox, tmp_path):
    fill(sandbox.src, 12, 2 * MIB)
    sandbox.cli("init", check=True)
    a = popen_cli(sandbox, "backup", "files", "src", "--json")
    b = popen_cli(sandbox, "backup", "files", "src", "--json")
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    results = []
    for rc, out, err in ((a.returncode, out_a, err_a), (b.returncode, out_b, err_b)):
        if rc == 0:
            results.append(json.loads(out))
        else:  # allowed only as a clear failure
            assert rc == 1 and err.strip() and b"Traceback" not in err, err
    assert results, (err_a, err_b)
    proc = sandbox.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = json.loads(sandbox.cli("list", "--json", check=True).stdout)
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in results)
    assert locks(sandbox.repo) == []
    target = tmp_path / "out"
    assert sandbox.cli("restore", "files", "latest", "--target", str(target)).returncode == 0
    assert_same_tree(sandbox.src, restored_root(target, sandbox.src))


@pytest.mark.slow
def test_sigkill_mid_backup(sandbox, tmp_path):
    fill(sandbox.src, 25, 8 * MIB)  # 200 MiB of incompressible data
    sandbox.cli("init", check=True)
    proc = popen_cli(sandbox, "backup", "files", "src")
    deadline = time.monotonic() + 120
    while not packs(sandbox.repo):
        assert proc.poll() is None, "backup ended before its first pack was seen"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # killed before its commit point: packs but no snapshot, and its lock is left behind
    snapshots = sandbox.repo / "snapshots"
    assert not snapshots.exists() or list(snapshots.iterdir()) == []
    stale = locks(sandbox.repo)
    assert len(stale) == 1
    assert json.loads(stale[0].read_text())["pid"] == proc.pid

    v = sandbox.cli("verify")
    assert v.returncode == 0, v.stdout + v.stderr
    assert b"not in any index" in v.stdout  # the killed backup's packs: a note, not a problem
    assert json.loads(sandbox.cli("list", "--json", check=True).stdout) == []

    again = sandbox.cli("backup", "files", "src", "--json")
    assert again.returncode == 0, again.stderr
    snap = json.loads(again.stdout)
    assert snap["size"] == 200 * MIB
    assert locks(sandbox.repo) == []  # the dead process's lock was removed as stale

    v = sandbox.cli("verify", "--read-data")
    assert v.returncode == 0, v.stdout + v.stderr
    target = tmp_path / "out"
    r = sandbox.cli("restore", "files", snap["id"], "--target", str(target))
    assert r.returncode == 0, r.stderr
    assert_same_tree(sandbox.src, restored_root(target, sandbox.src))


def write_lock(repo: Path, name: str, **rec) -> Path:
    base = {"exclusive": True, "purpose": "prune", "host": socket.gethostname(),
            "pid": os.getpid(), "time": time.time(), "when": "test"}
    base.update(rec)
    (repo / "locks").mkdir(exist_ok=True)
    p = repo / "locks" / name
    p.write_text(json.dumps(base))
    return p


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_locks_do_not_block(sandbox):
    (sandbox.src / "f").write_text("f")
    sandbox.cli("init", check=True)
    dead = write_lock(sandbox.repo, "a" * 32, pid=dead_pid())
    expired = write_lock(sandbox.repo, "b" * 32, host="some-other-host", pid=1,
                         time=time.time() - STALE - 60)
    t0 = time.monotonic()
    proc = sandbox.cli("backup", "files", "src")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 20  # no waiting on the stale locks
    assert not dead.exists() and not expired.exists()


def test_live_exclusive_lock_blocks_with_a_clear_error(sandbox):
    sandbox.cli("init", check=True)
    backend = LocalBackend(sandbox.repo)
    write_lock(sandbox.repo, "c" * 32, host="other-host", pid=4242, purpose="prune")
    with pytest.raises(LockedError) as e:
        RepoLock(backend, exclusive=False, purpose="backup").acquire(wait=0)
    msg = str(e.value)
    assert "locked" in msg and "prune" in msg and "4242" in msg and "other-host" in msg
    assert len(locks(sandbox.repo)) == 1  # ours was withdrawn, theirs kept


def test_shared_locks_coexist_and_exclusive_waits_for_them(sandbox):
    sandbox.cli("init", check=True)
    backend = LocalBackend(sandbox.repo)
    a = RepoLock(backend, exclusive=False, purpose="backup a").acquire()
    b = RepoLock(backend, exclusive=False, purpose="backup b").acquire()
    with pytest.raises(LockedError, match="backup"):
        RepoLock(backend, exclusive=True, purpose="prune").acquire(wait=0)
    a.release()
    b.release()
    with RepoLock(backend, exclusive=True, purpose="prune").acquire():
        assert len(locks(sandbox.repo)) == 1
    assert locks(sandbox.repo) == []
