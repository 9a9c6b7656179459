"""The spool's fast path (engine/walspool.py): restore pitr's restore_command serves a
spooled segment with sh and one ``mv``, no Python process; the continuous prefetcher keeps
the spool filled, follows recovery, and ends; ``restore pitr --start`` starts it before
the base backup is written.

The restore_command is the one engine.ops.pitr writes, run as PostgreSQL runs it: ``%f``,
``%p`` and ``%%`` replaced, ``sh -c`` in the data directory. Its python is a wrapper that
notes each start, so the tests count the segments that needed Python.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_walspool import SEG, Arch, _name

from engine import wal, walspool
from engine.ops import pitr

RECOVERYXLOG = "pg_wal/RECOVERYXLOG"


def pg_command(cmd: str, f: str, p: str = RECOVERYXLOG) -> str:
    """What PostgreSQL hands to sh for ``cmd`` (its %-substitution)."""
    out, i = [], 0
    while i < len(cmd):
        if cmd[i] == "%" and i + 1 < len(cmd):
            out.append({"f": f, "p": p, "%": "%"}.get(cmd[i + 1], cmd[i:i + 2]))
            i += 2
        else:
            out.append(cmd[i])
            i += 1
    return "".join(out)


def wrapper(folder: Path, real: list[str]) -> tuple[list[str], Path]:
    """An argv prefix that runs ``real`` and appends its arguments to a log first."""
    log = folder / "python-starts.log"
    log.touch()
    os.chmod(log, 0o666)
    script = folder / "python-wrapper.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>{shlex.quote(str(log))}\n'
                      f'exec {shlex.join(real)} "$@"\n')
    os.chmod(script, 0o755)
    return ["sh", str(script)], log


class Fast(Arch):
    """Arch with restore pitr's restore_command, its spool in a folder whose name needs
    quoting (a space, a quote, a %)."""

    def __init__(self, root: Path, ahead: int = 4):
        super().__init__(root)
        self.spool.rmdir()
        self.spool = root / "sp ace 'q' %p" / walspool.SPOOL_DIR
        self.spool.mkdir(parents=True, mode=0o700)
        self.python, self.starts_log = wrapper(root, [sys.executable])
        from engine.config import load_config
        from engine.facade import Engine

        engine = Engine(load_config(self.config))
        self.command = pitr.restore_command(engine, "main", None, self.python, self.spool,
                                            ahead)

    def restore(self, name: str) -> subprocess.CompletedProcess:
        """restore_command for ``name``, as PostgreSQL runs it (cwd: the data directory)."""
        (self.root / RECOVERYXLOG).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_TUI")}
        return subprocess.run(["/bin/sh", "-c", pg_command(self.command, name)],
                              capture_output=True, timeout=120, cwd=str(self.root), env=env)

    def starts(self) -> list[str]:
        """The names wal-fetch was started for."""
        return [line.split("wal-fetch ", 1)[1].split()[0]
                for line in self.starts_log.read_text().splitlines() if "wal-fetch " in line]

    def served_lines(self) -> list[str]:
        try:
            return (self.spool / walspool.SERVED).read_text().split()
        except FileNotFoundError:
            return []


@pytest.fixture
def arch(tmp_path):
    a = Arch(tmp_path)
    yield a
    walspool.remove(a.spool)


@pytest.fixture
def fast(tmp_path):
    a = Fast(tmp_path)
    yield a
    walspool.remove(a.spool)


def test_the_command_line(fast):
    cmd = fast.command
    # the spool's path quoted for sh and its % doubled for PostgreSQL; wal-fetch exec'd
    assert cmd.startswith("f=%f; case $f in *[!0-9A-F]*) ;; " + "?" * 24 + ") ")
    quoted = shlex.quote(str(fast.spool)).replace("%", "%%")
    assert "'" in quoted and f'{quoted}/"$b/$f" %p 2>/dev/null' in cmd
    assert f"exec sh {fast.python[1]} -m backup_tui.cli" in cmd
    assert cmd.endswith(f" --spool {quoted} --prefetch 4 --cluster main")


def test_spooled_segments_are_served_without_python(fast):
    for segno in range(1, 13):
        fast.push(_name(1, segno))
    r = fast.restore(_name(1, 1))  # nothing spooled: wal-fetch fetches it, a prefetcher starts
    assert r.returncode == 0, r.stderr
    assert (fast.root / RECOVERYXLOG).read_bytes() == fast.content[_name(1, 1)]
    assert fast.starts() == [_name(1, 1)]
    for segno in range(2, 13):
        st = fast.settled()
        assert _name(1, segno) in fast.spooled(), st
        r = fast.restore(_name(1, segno))
        assert r.returncode == 0 and r.stderr == b"", r.stderr
        assert (fast.root / RECOVERYXLOG).read_bytes() == fast.content[_name(1, segno)]
        assert _name(1, segno) not in fast.spooled()  # moved
    assert fast.starts() == [_name(1, 1)]  # segments 2 to 12: no Python process
    assert fast.served_lines() == [_name(1, s) for s in range(2, 13)]
    assert walspool.served(fast.spool) == 11
    st = fast.idle()
    assert st["ended"] == "missing" and st["missing"] == _name(1, 13)
    assert st["fetched"] == 11 and st["consumed"] >= 7
    # the end of the archive: wal-fetch answers 1, the spool has nothing for it
    r = fast.restore(_name(1, 13))
    assert r.returncode == 1 and b"is not archived" in r.stderr
    assert not (fast.root / RECOVERYXLOG).exists()
    assert fast.starts() == [_name(1, 1), _name(1, 13)]


def test_only_complete_segments_of_this_boot_are_served(fast):
    for segno in range(1, 4):
        fast.push(_name(1, segno))
    fast.push("00000002.history", b"1\t0/9000000\tno recovery target specified\n")
    ready = Path(walspool.Spool(fast.spool).ready)
    ready.mkdir(mode=0o700)
    junk = b"not the archive's bytes"
    # a prefetcher killed while writing; the old naming; a segment of another boot (its
    # bytes may never have reached the disk); names that are not plain segments
    tmp = fast.spool / f"{walspool.TMP}{_name(1, 1)}-dead"
    other_boot = fast.spool / "0a1b2c3d-0000-4000-8000-000000000000"
    other_boot.mkdir()
    for p in (tmp, fast.spool / _name(1, 1), fast.spool / f"{_name(1, 2)}.{'0' * 64}",
              other_boot / _name(1, 2), ready / "00000002.history",
              ready / f"{_name(1, 3)}.partial", ready / "00000003.history"):
        p.write_bytes(junk)
    for name in (_name(1, 1), _name(1, 2), "00000002.history"):
        r = fast.restore(name)
        assert r.returncode == 0, r.stderr
        assert (fast.root / RECOVERYXLOG).read_bytes() == fast.content[name]
        if name == _name(1, 1):  # the prefetcher it started: segments 2 and 3, the end
            assert fast.idle()["missing"] == _name(1, 4)
            assert fast.spooled() == [_name(1, 2), _name(1, 3)]
            # the next prefetcher deleted the temporary file and the other boot's folder
            assert not tmp.exists() and not other_boot.exists()
    for name in (f"{_name(1, 3)}.partial", "00000003.history"):  # not archived: exit 1
        r = fast.restore(name)
        assert r.returncode == 1 and b"is not archived" in r.stderr, r.stderr
        assert not (fast.root / RECOVERYXLOG).exists()
    assert fast.starts() == [_name(1, 1), "00000002.history", f"{_name(1, 3)}.partial",
                             "00000003.history"]
    assert fast.served_lines() == [_name(1, 2)]  # the archive's bytes (above)
    assert fast.spooled() == [_name(1, 3)]
    r = fast.restore(_name(1, 3))
    assert r.returncode == 0 and fast.served_lines()[-1] == _name(1, 3)
    assert (fast.root / RECOVERYXLOG).read_bytes() == fast.content[_name(1, 3)]
    assert _name(1, 3) not in fast.starts()


def test_a_killed_prefetcher(fast):
    for segno in range(1, 21):
        fast.push(_name(1, segno))
    r = fast.restore(_name(1, 1))
    assert r.returncode == 0, r.stderr
    st = fast.settled()
    assert fast.spooled() == [_name(1, s) for s in (2, 3, 4, 5)], st
    os.kill(st["pid"], signal.SIGKILL)
    fast.idle()  # the lock went with it
    # what it may have left halfway: never served, deleted by the next one
    tmp = fast.spool / f"{walspool.TMP}{_name(1, 6)}-killed"
    tmp.write_bytes(fast.content[_name(1, 6)][:SEG // 3])
    for segno in range(2, 6):  # what it had spooled is served
        r = fast.restore(_name(1, segno))
        assert r.returncode == 0 and \
            (fast.root / RECOVERYXLOG).read_bytes() == fast.content[_name(1, segno)]
    assert fast.starts() == [_name(1, 1)]
    # the spool ran dry: wal-fetch fetches it and starts a new prefetcher
    r = fast.restore(_name(1, 6))
    assert r.returncode == 0 and \
        (fast.root / RECOVERYXLOG).read_bytes() == fast.content[_name(1, 6)]
    assert fast.starts() == [_name(1, 1), _name(1, 6)]
    st = fast.settled()
    assert st["pid"] != os.getpid() and fast.spooled() == [_name(1, s) for s in (7, 8, 9, 10)]
    assert not tmp.exists()
    for segno in range(7, 11):
        assert fast.restore(_name(1, segno)).returncode == 0
    assert fast.starts() == [_name(1, 1), _name(1, 6)]


# ------------------------------------------------ the prefetcher itself, in this process


def run_prefetch(arch: Arch, after: str, ahead: int, **kw) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def body() -> None:
        copies = wal.Copies(arch.settings)
        out.update(walspool.prefetch(walspool.Spool(arch.spool), after, ahead, copies, SEG,
                                     **kw))

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def wait_for(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def take(arch: Arch, name: str) -> bytes:
    dest = arch.root / "taken"
    assert walspool.Spool(arch.spool).take(name, str(dest))
    return dest.read_bytes()


def test_the_prefetcher_follows_recovery_and_ends_with_it(arch):
    for segno in range(1, 31):
        arch.push(_name(1, segno))
    signal_file = arch.root / "recovery.signal"
    # before recovery began (no recovery.signal yet): no idle end, however long
    t, out = run_prefetch(arch, _name(1, 1), 3, watch=str(signal_file), idle=0.2)
    wait_for(lambda: arch.spooled() == [_name(1, s) for s in (2, 3, 4)])
    time.sleep(0.5)
    assert t.is_alive()
    signal_file.touch()
    for segno in (2, 3, 4, 5):  # recovery takes them: each is replaced by the next
        wait_for(lambda segno=segno: _name(1, segno) in arch.spooled())
        assert take(arch, _name(1, segno)) == arch.content[_name(1, segno)]
    wait_for(lambda: arch.spooled() == [_name(1, s) for s in (6, 7, 8)])
    # recovery asked for a segment further on (wal-fetch fetched it): passed ones go, the
    # prefetcher goes on after it
    walspool.Spool(arch.spool).ask(_name(1, 20))
    wait_for(lambda: arch.spooled() == [_name(1, s) for s in (21, 22, 23)])
    # a segment taken out of order: the ones before it were passed
    assert take(arch, _name(1, 22)) == arch.content[_name(1, 22)]
    wait_for(lambda: arch.spooled() == [_name(1, s) for s in (23, 24, 25)])
    signal_file.unlink()  # PostgreSQL ended recovery
    t.join(10)
    assert not t.is_alive() and out["ended"] == "recovery ended", out
    assert out["consumed"] == 5 and out["fetched"] == 12


def test_the_prefetcher_ends_idle_or_with_its_spool_or_with_the_restore(arch):
    for segno in range(1, 10):
        arch.push(_name(1, segno))
    t, out = run_prefetch(arch, _name(1, 1), 2, idle=0.5)  # no recovery.signal watched
    t.join(10)
    assert out["ended"] == "idle" and arch.spooled() == [_name(1, 2), _name(1, 3)]

    # the restore that started it died before recovery began
    gone = subprocess.Popen(["true"])
    gone.wait()
    t, out = run_prefetch(arch, _name(1, 1), 2, watch=str(arch.root / "recovery.signal"),
                          parent=gone.pid)
    t.join(10)
    assert out["ended"] == "the restore that started it is gone"

    t, out = run_prefetch(arch, _name(1, 3), 2)
    wait_for(lambda: arch.spooled() == [_name(1, 4), _name(1, 5)])
    while arch.spool.exists():  # (no lock held here: `remove` is for another process)
        shutil.rmtree(arch.spool, ignore_errors=True)
    t.join(10)
    assert not t.is_alive() and out["ended"] == "the spool was removed"
    assert not arch.spool.exists()


def test_a_plan_of_names_started_before_recovery(arch):
    """restore pitr's way: ``python -m engine.walspool prefetch`` with the plan on stdin,
    the spool beside the data directory while the base backup is written, then renamed
    into pg_wal; the prefetcher goes on in it."""
    for segno in range(1, 9):
        arch.push(_name(1, segno))
    pgdata = arch.root / "pgdata"
    early = arch.root / ".pgdata.backup-tui-spool-x"
    early.mkdir(mode=0o700)
    plan = [_name(1, s) for s in range(3, 9)]
    starter = subprocess.run(
        [sys.executable, "-m", "engine.walspool", "prefetch", str(early), "--config",
         str(arch.config), "--ahead", "3", "--seg-size", str(SEG), "--pgdata", str(pgdata),
         "--parent", str(os.getpid())], input="\n".join(plan), capture_output=True,
        text=True, timeout=60, cwd=str(arch.root))
    assert starter.returncode == 0, starter.stderr
    sp = walspool.Spool(early)
    wait_for(lambda: sp.state().get("waiting"))
    assert sorted(sp.entries()) == plan[:3]
    pgdata.mkdir()
    (pgdata / "pg_wal").mkdir()
    final = pgdata / "pg_wal" / walspool.SPOOL_DIR
    os.rename(early, final)  # the base backup is written
    (pgdata / "recovery.signal").touch()
    sp = walspool.Spool(final)
    for name in plan:
        wait_for(lambda name=name: name in sp.entries())
        assert sp.take(name, str(arch.root / "x"))
        assert (arch.root / "x").read_bytes() == arch.content[name]
    wait_for(lambda: sp.state().get("ended") is not None)
    st = sp.state()
    assert st["ended"] == "end of plan" and st["fetched"] == 6 and st["last"] == plan[-1], st
    assert walspool.served(final) == 6
    assert walspool.remove(final)


# ------------------------------------------------------------ a real recovery through it


@pytest.mark.parametrize("setup", [""], indirect=True)  # wal_prefetch: 16
def test_restore_pitr_serves_most_segments_without_python(setup, monkeypatch):
    """restore pitr --start: the prefetcher of the plan starts before the base backup is
    written, recovery takes almost every segment from the spool through sh (the python
    of restore_command is a wrapper that notes each start), and stops exactly at the
    target; nothing of the spool is left. (The plan's 13 segments fit in the spool: these
    mostly empty segments replay faster than they are fetched, so with fewer ahead the
    prefetcher would be behind, and wal-fetch would wait for it.)"""
    from pitr_support import CLUSTER, mark_time, restored_sql, stop_server
    from support import SERVER_PYTHON_ENV, server_python

    s = setup
    python, log = wrapper(s.root, server_python())
    monkeypatch.setenv(SERVER_PYTHON_ENV, shlex.join(python))
    s.cli("backup", "cluster", CLUSTER)
    for i in range(10):
        s.pg.psql(f"INSERT INTO t VALUES ({3000 + i}, 'segment {i}')")
        s.switch_and_wait()
    s.pg.psql("INSERT INTO t VALUES (3100, 'before the target')")
    when = mark_time(s)
    s.pg.psql("INSERT INTO t VALUES (3101, 'after the target')")
    s.switch_and_wait()
    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--json").stdout)
    assert plan["wal"]["segments"] >= 10
    log.write_text("")
    out: dict = {}
    try:
        out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", when,
                               "--pgdata", str(s.root / "fast"), "--start",
                               "--json").stdout)
        assert out["promoted"]
        spool = Path(out["spool"])
        assert spool == s.root / "fast" / "pg_wal" / walspool.SPOOL_DIR
        assert out["settings"]["restore_command"].startswith("f=%f; case $f in")
        rows = restored_sql(out["port"], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t "
                            "WHERE id >= 3000")
        assert rows == ",".join([str(3000 + i) for i in range(10)] + ["3100"])
        assert not spool.exists()
        assert not list(s.root.glob(".fast.backup-tui-spool-*"))  # the early folder moved
        text = Path(out["log"]).read_text()
        served = re.findall(r"(\d+) segment\(s\) of this recovery came from it", text)
        starts = [line for line in log.read_text().splitlines() if "wal-fetch " in line]
        names = [line.split("wal-fetch ", 1)[1].split()[0] for line in starts]
        python = [n for n in names if walspool.is_segment(n)]
        # every segment of the plan came from the spool (the first ones were fetched while
        # the base backup was written), most through sh; wal-fetch (Python) ran for the history
        # files PostgreSQL probes, for a segment the prefetcher was still fetching (these
        # mostly empty segments replay faster than they are fetched), and as recovery
        # ended for the segment after the plan's last (PostgreSQL reads ahead) and the
        # last again
        count = plan["wal"]["segments"]
        assert served and int(served[0]) >= count, (served, names)
        first_ones = [n for n in names if walspool.is_segment(n) and n < plan["wal"]["last"]]
        assert len(first_ones) <= count // 2, names
        assert all(n.endswith(".history") or n in python for n in names), names
        assert any("engine.walspool prefetch" in line for line in log.read_text()
                   .splitlines())
    finally:
        stop_server(out)
