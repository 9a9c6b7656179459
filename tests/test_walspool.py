"""wal-fetch's prefetch spool (engine/walspool.py): the CLI as PostgreSQL runs it, a fresh
process per segment, on a repository of generated segments (the PITR tests in
tests/test_pitr.py recover real servers through it: every ``restore pitr`` uses the spool).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import CHEAP_KDF

from engine import wal, walspool
from engine.repo.repository import Repository
from engine.storage.local import LocalBackend

ROOT = Path(__file__).resolve().parent.parent
SEG = 16 * 1024 * 1024
HEAVY = ("textual", "rich", "boto3", "botocore", "psycopg2", "apscheduler", "engine.wal",
         "engine.facade", "engine.config", "zstandard", "cryptography", "sqlite3")


def _segment(name: str, sysid: int = 4242) -> bytes:
    seg = bytearray(SEG)
    struct.pack_into("<HHIQIIQII", seg, 0, 0xD110, 0x0002, int(name[:8], 16), 0, 0, 0, sysid,
                     SEG, 8192)
    fill = (name.encode() * 64) + os.urandom(2048)
    seg[64:64 + len(fill)] = fill
    return bytes(seg)


def _name(tli: int, segno: int) -> str:
    return f"{tli:08X}{segno // 256:08X}{segno % 256:08X}"


class Arch:
    """A repository with segments 1..n of timeline 1, and the CLI's wal-fetch on it."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = root / "repo"
        self.pw = root / "repo.pass"
        self.pw.write_text("spool-test")
        os.chmod(self.pw, 0o600)
        Repository.init(LocalBackend(self.repo), "spool-test", "zstd:3", kdf=CHEAP_KDF)
        self.config = root / "config.toml"
        self.config.write_text(
            f'[repository]\npath = "{self.repo}"\npassword_file = "{self.pw}"\n'
            f'[state]\ndir = "{root / "state"}"\n'
            '[[cluster]]\nname = "main"\ndsn = "postgresql://postgres@127.0.0.1:1/x"\n')
        (root / "state").mkdir()
        self.settings = wal.WalSettings.load(self.config)
        self.spool = root / "pg_wal" / walspool.SPOOL_DIR
        self.spool.mkdir(parents=True, mode=0o700)
        self.src = root / "src"
        self.src.mkdir()
        self.content: dict[str, bytes] = {}

    def push(self, name: str, data: bytes | None = None) -> None:
        data = _segment(name) if data is None else data
        (self.src / name).write_bytes(data)
        assert wal.push(self.settings, str(self.src / name)) == "stored"
        self.content[name] = data

    def fetch(self, name: str, *extra: str, ahead: int = 4,
              python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        dest = self.root / "pg_wal" / "RECOVERYXLOG"
        dest.unlink(missing_ok=True)
        cmd = [sys.executable, *python_args, "-m", "backup_tui.cli", "--config",
               str(self.config), "wal-fetch", name, str(dest), "--spool", str(self.spool),
               "--prefetch", str(ahead), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_TUI")}
        return subprocess.run(cmd, capture_output=True, timeout=120, cwd=str(self.root),
                              env=env)

    def got(self) -> bytes:
        return (self.root / "pg_wal" / "RECOVERYXLOG").read_bytes()

    def idle(self, timeout: float = 60) -> dict:
        """Wait until no prefetcher runs; its final state."""
        sp = walspool.Spool(self.spool)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fd = sp.try_lock()
            if fd is not None:
                os.close(fd)
                return sp.state()
            time.sleep(0.02)
        raise AssertionError(f"the prefetcher still runs after {timeout} s: {sp.state()}")

    def settled(self, timeout: float = 60) -> dict:
        """Wait until the prefetcher has the spool full (it waits for recovery to take
        one) or no prefetcher runs; its state."""
        sp = walspool.Spool(self.spool)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = sp.state()
            if st.get("waiting") and len(sp.entries()) >= int(st.get("ahead", 0)):
                return st
            fd = sp.try_lock()
            if fd is not None:
                os.close(fd)
                return sp.state()
            time.sleep(0.02)
        raise AssertionError(f"the prefetcher did not settle in {timeout} s: {sp.state()}")

    def spooled(self) -> list[str]:
        return sorted(walspool.Spool(self.spool).entries())

    def file(self, name: str) -> Path:
        return Path(walspool.Spool(self.spool).ready) / name


@pytest.fixture
def arch(tmp_path):
    a = Arch(tmp_path)
    yield a
    walspool.remove(a.spool)


def test_prefetch_serve_and_the_end_of_the_archive(arch):
    for segno in range(1, 8):
        arch.push(_name(1, segno))
    first = _name(1, 1)
    r = arch.fetch(first)
    assert r.returncode == 0, r.stderr
    assert arch.got() == arch.content[first]
    st = arch.settled()
    # the next 4 of the same timeline, complete, in this boot's folder
    assert arch.spooled() == [_name(1, s) for s in (2, 3, 4, 5)], st
    assert st["fetched"] == 4 and st["seg_size"] == SEG and st["next"] == _name(1, 6)
    assert st["waiting"] and st["pid"] != os.getpid()
    for seg in arch.spooled():
        assert arch.file(seg).read_bytes() == arch.content[seg]
    assert Path(walspool.Spool(arch.spool).ready).name == walspool.boot_id() != "no-boot-id"

    # served by wal-fetch (the shell path missed it): nothing heavy imported (no
    # engine.wal, no crypto, no boto3)
    r = arch.fetch(_name(1, 2), python_args=("-X", "importtime"))
    assert r.returncode == 0, r.stderr
    assert arch.got() == arch.content[_name(1, 2)]
    imported = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert "engine.walspool" in imported
    assert not [m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY], imported
    assert _name(1, 2) not in arch.spooled()  # moved, not copied

    # the prefetcher still runs and fetches the next one as recovery takes one
    st = arch.settled()
    assert st["waiting"] and st["next"] == _name(1, 7) and st["consumed"] == 1, st
    assert arch.spooled() == [_name(1, s) for s in (3, 4, 5, 6)]
    for segno in (3, 4, 5, 6, 7):
        r = arch.fetch(_name(1, segno))
        assert r.returncode == 0, r.stderr
        assert arch.got() == arch.content[_name(1, segno)]
    # until the archive ends (segment 8)
    st = arch.idle()
    assert st["ended"] == "missing" and st.get("missing") == _name(1, 8), st
    assert st["fetched"] == 6
    # a segment the archive does not have ends recovery (exit 1), and the spool never
    # answers for it; no prefetcher starts for it
    r = arch.fetch(_name(1, 8))
    assert r.returncode == 1 and b"is not archived" in r.stderr
    assert r.stderr.count(b"\n") == 1
    assert not (arch.root / "pg_wal" / "RECOVERYXLOG").exists()
    assert arch.spooled() == []
    assert arch.idle()["missing"] == _name(1, 8)

    # the end: the spool counted what it served, then the folder goes
    assert walspool.served(arch.spool) == 6
    r = subprocess.run([sys.executable, "-m", "engine.walspool", "remove", str(arch.spool)],
                       capture_output=True, cwd=str(ROOT), timeout=60)
    assert r.returncode == 0 and b"6 segment(s) of this recovery came from it" in r.stderr, \
        r.stderr
    assert not arch.spool.exists()
    # without the folder, wal-fetch fetches each segment as before
    r = arch.fetch(_name(1, 6))
    assert r.returncode == 0 and arch.got() == arch.content[_name(1, 6)]
    assert not arch.spool.exists()


def test_history_files_timelines_and_size_bound(arch):
    for segno in range(1, 11):
        arch.push(_name(1, segno))
    # timeline 2 branches off timeline 1 in segment 4
    arch.push("00000002.history", b"1\t0/4000100\tno recovery target specified\n")
    for segno in (4, 5, 6):
        arch.push(_name(2, segno))
    r = arch.fetch("00000002.history")  # not a segment: fetched, nothing spooled
    assert r.returncode == 0 and arch.got() == arch.content["00000002.history"]
    assert arch.idle() == {} and arch.spooled() == []

    r = arch.fetch(_name(1, 1), ahead=8)
    assert r.returncode == 0, r.stderr
    st = arch.idle()
    # never past the switch on the old timeline, though segments 5..9 of it are archived
    assert arch.spooled() == [_name(1, s) for s in (2, 3, 4)], st
    assert st["last"] == _name(1, 4) and st["ended"] == "end of plan"
    # a spooled segment of timeline 1 is never the answer for timeline 2
    r = arch.fetch(_name(2, 2))
    assert r.returncode == 1
    assert _name(1, 2) in arch.spooled()
    # recovery moves to timeline 2: the old timeline's entries go, the new one's come
    r = arch.fetch(_name(2, 4), ahead=8)
    assert r.returncode == 0 and arch.got() == arch.content[_name(2, 4)]
    st = arch.idle()
    assert arch.spooled() == [_name(2, 5), _name(2, 6)], st
    assert st["missing"] == _name(2, 7)

    # the archive grows (a live source): once recovery passes the old end, fetching
    # ahead goes on; at most `ahead` segments in the spool
    for segno in range(7, 20):
        arch.push(_name(2, segno))
    for segno in (5, 6, 7):
        r = arch.fetch(_name(2, segno), ahead=3)
        assert r.returncode == 0 and arch.got() == arch.content[_name(2, segno)]
    st = arch.settled()
    assert st["waiting"] and st["next"] == _name(2, 11), st
    assert arch.spooled() == [_name(2, 8), _name(2, 9), _name(2, 10)]


def test_a_killed_prefetcher_leaves_nothing_served(arch):
    for segno in range(1, 6):
        arch.push(_name(1, segno))
    # what a prefetcher killed while writing leaves: a temporary file, and the state of a
    # dead process
    partial = arch.spool / f"{walspool.TMP}{_name(1, 2)}-dead"
    partial.write_bytes(arch.content[_name(1, 2)][:1000])
    (arch.spool / walspool.STATE).write_text(json.dumps({"after": _name(1, 1), "pid": 999999,
                                                          "time": time.time()}))
    r = arch.fetch(_name(1, 2))
    assert r.returncode == 0 and arch.got() == arch.content[_name(1, 2)]
    arch.idle()
    assert not partial.exists()
    assert arch.spooled() == [_name(1, s) for s in (3, 4, 5)]

    # a prefetcher stopped in the middle (a slow copy: SIGTERM by `remove`)
    for segno in range(6, 40):
        arch.push(_name(1, segno))
    r = arch.fetch(_name(1, 3), ahead=30)
    assert r.returncode == 0
    assert walspool.remove(arch.spool)
    assert not arch.spool.exists()
    time.sleep(0.5)
    assert not arch.spool.exists()  # nothing recreated it


def test_cli_flags(arch):
    arch.push(_name(1, 1))
    r = arch.fetch(_name(1, 1), ahead=999)
    assert r.returncode == 2 and b"--prefetch" in r.stderr
    r = arch.fetch(_name(1, 1), ahead=0)  # 0: no prefetch
    assert r.returncode == 0 and arch.got() == arch.content[_name(1, 1)]
    assert walspool.Spool(arch.spool).state() == {}
    r = subprocess.run([sys.executable, "-m", "backup_tui.cli", "wal-fetch", "--help"],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert r.returncode == 0 and "--spool" in r.stdout and "--prefetch" in r.stdout


# ------------------------------------------------------------ a real recovery through it


@pytest.mark.parametrize("setup", ["wal_prefetch = 3\n"], indirect=True)
def test_pitr_through_the_spool_reaches_the_exact_target(setup):
    """restore pitr on a real server: wal-fetch runs with the spool (3 segments ahead, so
    several prefetchers start one after another), recovery stops exactly at the target,
    and the spool is gone when the server is promoted."""
    from pitr_support import CLUSTER, mark_time, restored_sql, stop_server

    s = setup
    s.cli("backup", "cluster", CLUSTER)
    for i in range(8):
        s.pg.psql(f"INSERT INTO t VALUES ({2000 + i}, 'segment {i}')")
        s.switch_and_wait()
    s.pg.psql("INSERT INTO t VALUES (2100, 'before the target')")
    when = mark_time(s)
    s.pg.psql("INSERT INTO t VALUES (2101, 'after the target')")
    s.switch_and_wait()
    out: dict = {}
    try:
        out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", when,
                               "--pgdata", str(s.root / "spooled"), "--start",
                               "--json").stdout)
        assert out["promoted"]
        spool = Path(out["spool"])
        assert spool == s.root / "spooled" / "pg_wal" / walspool.SPOOL_DIR
        assert f"--spool {spool} --prefetch 3" in out["settings"]["restore_command"]
        assert out["settings"]["recovery_end_command"].endswith(f"walspool remove {spool}")
        rows = restored_sql(out["port"], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t "
                            "WHERE id >= 2000")
        assert rows == ",".join([str(2000 + i) for i in range(8)] + ["2100"])
        assert not spool.exists()
        log = Path(out["log"]).read_text()
        served = re.findall(r"(\d+) segment\(s\) of this recovery came from it", log)
        assert served and int(served[0]) >= 4, log[-3000:]
    finally:
        stop_server(out)


def test_remove_signals_only_the_spool_owners_processes(tmp_path):
    """The state file is the server OS user's to write: run as root, `remove` must not be
    made to kill another user's process through it; nor follow a planted lock link."""
    import pwd
    import signal

    if os.geteuid() != 0:
        pytest.skip("needs root (a spool owned by another user)")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    pg = pwd.getpwnam("postgres")
    os.chown(spool, pg.pw_uid, pg.pw_gid)
    victim = subprocess.Popen(["sleep", "60"])  # root's
    try:
        sp = walspool.Spool(spool)
        fd = sp.try_lock()  # "a prefetcher runs"
        assert fd is not None
        (spool / walspool.STATE).write_text(json.dumps({"pid": victim.pid}))
        assert not walspool._signal_ok(sp, victim.pid)
        assert not walspool._signal_ok(sp, 1) and not walspool._signal_ok(sp, "12")
        walspool.remove(spool, wait=0.3)
        assert victim.poll() is None  # still running
        os.close(fd)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    # a lock that is a link: not followed (nothing made where it points)
    spool.mkdir(exist_ok=True)
    (spool / walspool.LOCK).unlink(missing_ok=True)
    os.symlink(tmp_path / "elsewhere", spool / walspool.LOCK)
    assert walspool.Spool(spool).try_lock() is None
    assert not (tmp_path / "elsewhere").exists()
    assert walspool.remove(spool, wait=0.2) and not spool.exists()
