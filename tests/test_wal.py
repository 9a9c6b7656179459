"""WAL archiving: wal-push (archive_command) and wal-fetch (restore_command), issue 11 item 2.

The integration tests run a real PostgreSQL 15 cluster with ``archive_mode = on`` and
``archive_command`` pointing at the real CLI, run as the cluster's OS user (``postgres``)
by the server itself, in the shared layout the README documents: a repository folder
of group ``postgres`` (standing in for ``backup``) with mode 2770, made by this test.
The helpers at the top are unit tests of names, LSNs, the object format and the key
cache.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support import CHEAP_KDF, server_python

from engine import wal
from engine.errors import IntegrityError, NotFound, UsageError
from engine.repo import keycache
from engine.repo.crypto import Keys
from engine.repo.locks import RepoLock
from engine.sandbox import PgCluster
from engine.sandbox.common import free_port, reachable_tempdir
from engine.storage.local import LocalBackend
from engine.storage.memory import MemoryBackend

ROOT = Path(__file__).resolve().parent.parent
SEG = 16 * 1024 * 1024
FORBIDDEN = ("textual", "rich", "boto3", "botocore", "psycopg2", "apscheduler",
             "engine.facade", "engine.config", "sqlite3",
             "engine.api", "fastapi", "starlette", "uvicorn", "pydantic")  # the daemon's API


# ------------------------------------------------------------------ unit tests


def test_parse_lsn_and_segment_names_match_postgresql():
    assert wal.parse_lsn("0/3000028") == 0x3000028
    assert wal.parse_lsn("16/B374D848") == 0x16B374D848
    assert wal.format_lsn(0x16B374D848) == "16/B374D848"
    assert wal.parse_lsn(5) == 5
    # the values pg_walfile_name() gives on timeline 1 / 2 with 16 MiB segments
    assert wal.segment_name(1, "0/3000028") == "000000010000000000000003"
    assert wal.segment_name(2, "0/2FFFFFF") == "000000020000000000000002"
    assert wal.segment_name(1, "1/0") == "000000010000000100000000"
    assert wal.segment_name(1, "16/B374D848") == "0000000100000016000000B3"
    # 64 MiB segments: 64 per xlogid
    assert wal.segment_name(1, "1/4000000", 64 * 1024 * 1024) == "000000010000000100000001"
    assert wal.segment_number("0000000100000016000000B3") == 0x16 * 256 + 0xB3
    for bad in ("0/", "x/1", "1/2/3", "", "0/123456789"):
        with pytest.raises(UsageError):
            wal.parse_lsn(bad)
    with pytest.raises(UsageError):
        wal.segment_name(1, 0, 3 * 1024 * 1024)


def test_wal_kinds_and_object_names():
    assert wal.wal_kind("000000010000000000000003") == "segment"
    assert wal.wal_kind("00000002.history") == "history"
    assert wal.wal_kind("000000010000000000000002.00000028.backup") == "backup"
    assert wal.wal_kind("000000010000000000000005.partial") == "partial"
    for bad in ("RECOVERYXLOG", "00000001000000000000003", "../etc/passwd",
                "000000010000000000000003.tmp", "0000000g0000000000000003"):
        with pytest.raises(UsageError):
            wal.wal_kind(bad)
    assert wal.object_name("main", "00000002.history") == "wal/main/00000002/00000002.history"
    assert (wal.object_name("main", "000000020000000000000003")
            == "wal/main/00000002/000000020000000000000003")


def _store(backend, keys, cluster, name, raw):
    header = {"format": 1, "cluster": cluster, "name": name, "kind": wal.wal_kind(name),
              "timeline": int(name[:8], 16), "size": len(raw),
              "sha256": hashlib.sha256(raw).hexdigest(), "archived": time.time(),
              "system_identifier": "1", "host": "h"}
    backend.put(wal.object_name(cluster, name), wal.build_object(keys, header, raw, 3))


def test_list_wal_one_listing_sorted_with_kinds():
    b = MemoryBackend()
    keys = Keys(os.urandom(64))
    names = ["000000020000000000000005", "00000002.history", "000000010000000000000004",
             "000000010000000000000003.00000028.backup", "000000010000000000000003",
             "000000010000000000000005.partial"]
    for n in names:
        _store(b, keys, "main", n, b"x" * 100)
    b.put("wal/main/identity", b"...")
    b.put("wal/main/00000001/junk", b"...")
    b.put("wal/main/00000003/000000010000000000000009", b"...")  # wrong folder: skipped
    _store(b, keys, "other", "000000010000000000000001", b"y")
    calls = []
    real_list = b.list
    b.list = lambda prefix="": calls.append(prefix) or real_list(prefix)
    got = wal.list_wal(b, "main")
    assert calls == ["wal/main/"]
    assert [w.name for w in got] == [
        "000000010000000000000003", "000000010000000000000003.00000028.backup",
        "000000010000000000000004", "000000010000000000000005.partial",
        "00000002.history", "000000020000000000000005"]
    assert [w.kind for w in got] == ["segment", "backup", "segment", "partial", "history",
                                     "segment"]
    assert [w.segno for w in got] == [3, None, 4, 5, None, 5]
    assert [w.timeline for w in got] == [1, 1, 1, 1, 2, 2]
    assert all(w.size > 100 for w in got)  # stored bytes: header and seal


def test_wal_header_reads_only_the_header_and_the_object_is_authenticated():
    b = MemoryBackend()
    keys = Keys(os.urandom(64))
    raw = os.urandom(SEG // 4)  # incompressible: the object is about this big
    name = "000000010000000000000007"
    _store(b, keys, "main", name, raw)
    obj = wal.object_name("main", name)
    read = []
    real = b.get_range
    b.get_range = lambda n, o, length: read.append(length) or real(n, o, length)
    h = wal.wal_header(keys, b, "main", name)
    assert h["name"] == name and h["size"] == len(raw)
    assert h["sha256"] == hashlib.sha256(raw).hexdigest()
    assert sum(read) <= 4096 < b.stat(obj).size
    header, body = wal.read_object(keys, b.get(obj), obj, name)
    assert body == raw and header == h
    # tampering: a flipped body byte, a header opened with another key, a moved object
    data = bytearray(b.get(obj))
    data[-100] ^= 1
    with pytest.raises(IntegrityError):
        wal.read_object(keys, bytes(data), obj, name)
    with pytest.raises(IntegrityError):
        wal.wal_header(Keys(os.urandom(64)), b, "main", name)
    other = "000000010000000000000008"
    b.put(wal.object_name("main", other), b.get(obj))
    with pytest.raises(IntegrityError, match="moved or tampered"):
        wal.wal_header(keys, b, "main", other)
    with pytest.raises(NotFound):
        wal.wal_header(keys, b, "main", "000000010000000000000009")


def test_key_cache_is_bound_to_config_and_password(tmp_path):
    master = os.urandom(64)
    config = {"id": "abc", "mac": "m1"}
    pw = tmp_path / "pw"
    pw.write_text("secret")
    os.chmod(pw, 0o640)
    assert keycache.store(tmp_path, config, master, "secret", str(pw))
    path = keycache.cache_path(tmp_path)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == os.stat(pw).st_gid
    assert keycache.load(tmp_path, config, "secret") == master
    assert keycache.load(tmp_path, config, "other password") is None
    assert keycache.load(tmp_path, {"id": "abc", "mac": "m2"}, "secret") is None
    assert keycache.load(tmp_path, {"id": "xyz", "mac": "m1"}, "secret") is None
    os.chmod(pw, 0o600)
    assert keycache.store(tmp_path, {"id": "abc", "mac": "m2"}, master, "secret", str(pw))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text("{not json")
    assert keycache.load(tmp_path, config, "secret") is None
    assert not keycache.store(tmp_path / "missing", config, master, "secret")


def test_open_keys_uses_the_cache_and_checks_the_config(tmp_path):
    from engine.repo.repository import Repository

    backend = LocalBackend(tmp_path / "repo")
    repo = Repository.init(backend, "pw", kdf=CHEAP_KDF)
    state = tmp_path / "state"
    state.mkdir()
    keys, config = wal.open_keys(backend, "pw", str(state))
    assert keycache.load(state, config, "pw") == repo.keys.master_key()
    calls = []
    real = Repository._unwrap_any
    Repository._unwrap_any = staticmethod(lambda *a: calls.append(a) or real(*a))
    try:
        wal.open_keys(backend, "pw", str(state))
        assert calls == []  # from the cache: no key derivation
        # a cache holding another key for this config is not trusted
        keycache.store(state, config, os.urandom(64), "pw")
        keys2, _ = wal.open_keys(backend, "pw", str(state))
        assert len(calls) == 1 and keys2.master_key() == repo.keys.master_key()
    finally:
        Repository._unwrap_any = real


def test_settings_gate_on_configured_clusters(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[repository]\npath = "/r"\n[[cluster]]\nname = "a"\ndsn = "x"\n'
                   '[[cluster]]\nname = "b"\ndsn = "y"\n')
    s = wal.WalSettings.load(cfg)
    assert s.cluster("a") == "a"
    with pytest.raises(UsageError, match="more than one"):
        s.cluster(None)
    with pytest.raises(UsageError, match="no \\[\\[cluster\\]\\] named 'c'"):
        s.cluster("c")
    cfg.write_text('[repository]\npath = "/r"\n[[cluster]]\nname = "only"\ndsn = "x"\n')
    assert wal.WalSettings.load(cfg).cluster(None) == "only"
    cfg.write_text('[repository]\n')
    with pytest.raises(Exception, match="repository.path"):
        wal.WalSettings.load(cfg)


# ---------------------------------------------------------- the shared layout



def _postgres_can_run() -> str:
    if os.geteuid() != 0:
        return "needs root (runs the CLI as the postgres user)"
    try:
        grp.getgrnam("postgres")
    except KeyError:
        return "no postgres group"
    return ""


class Archive:
    """A repository in the shared layout, a config, and a real cluster archiving into it."""

    def __init__(self, base: Path, repo: Path | None = None):
        self.base = base
        self.gid = grp.getgrnam("postgres").gr_gid
        self.repo = repo or base / "repo"
        if not self.repo.exists():
            self.repo.mkdir()
        os.chown(self.repo, 0, self.gid)
        os.chmod(self.repo, 0o2770)  # made by this test: the documented layout
        self.state = base / "state"
        self.state.mkdir()
        os.chown(self.state, 0, self.gid)
        os.chmod(self.state, 0o2750)
        self.pwfile = base / "repo.pass"
        self.pwfile.write_text("wal-test-password")
        self._share(self.pwfile)
        self.config = base / "config.toml"
        self.pg: PgCluster | None = None
        self.inbox = base / "in"  # files the postgres user pushes by hand
        self.inbox.mkdir()
        shutil.chown(self.inbox, "postgres", "postgres")
        os.chmod(self.inbox, 0o700)

    def _share(self, path: Path) -> None:
        os.chown(path, 0, self.gid)
        os.chmod(path, 0o640)

    def toml(self, repo: Path | None = None, state: Path | None = None,
             replicas: str = "") -> str:
        pg = self.pg
        return "\n".join([
            "[repository]", f'path = "{repo or self.repo}"', f'password_file = "{self.pwfile}"',
            "[state]", f'dir = "{state or self.state}"',
            "[[cluster]]", 'name = "main"',
            f'dsn = "{pg.dsn() if pg else "postgresql://postgres@127.0.0.1:1/postgres"}"',
            f'pgdata = "{pg.data_dir if pg else "/nonexistent"}"', "", replicas])

    def write(self, path: Path | None = None, **kw) -> Path:
        path = path or self.config
        path.write_text(self.toml(**kw))
        self._share(path)
        return path

    def engine(self, config: Path | None = None):
        from engine.config import load_config
        from engine.facade import Engine

        return Engine(load_config(config or self.config), kdf=CHEAP_KDF)

    def init(self) -> None:
        self.write()
        self.engine().init()
        self.engine().repo()  # an admin command opens it: the key cache is written

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BACKUP_TUI"))}
        env["HOME"] = "/"
        return env

    def command(self, *args: str, config: Path | None = None) -> list[str]:
        """The CLI as the postgres user runs it (support.server_python: this checkout)."""
        return [*server_python(), "-m", "backup_tui.cli", "--config",
                str(config or self.config), *args]

    def as_postgres(self, *args: str, config: Path | None = None, timeout: float = 120,
                    python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--", *server_python(), *python_args,
               *self.command(*args, config=config)[len(server_python()):]]
        return subprocess.run(cmd, capture_output=True, env=self.env(), timeout=timeout,
                              cwd="/")

    def start_cluster(self) -> PgCluster:
        self.pg = PgCluster.create(self.base / "pg")
        self.write()
        self.set_archive_command(self.config)
        self.pg.restart()
        return self.pg

    def set_archive_command(self, config: Path) -> None:
        cmd = "env HOME=/ " + " ".join(self.command("wal-push", "%p", config=config))
        self.pg.psql(f"ALTER SYSTEM SET archive_mode = on; "
                     f"ALTER SYSTEM SET archive_command = '{cmd}'")
        if self.pg.running():
            self.pg.psql("SELECT pg_reload_conf()")

    def archiver(self) -> dict:
        row = self.pg.psql("SELECT row_to_json(a) FROM pg_stat_archiver a").strip()
        return json.loads(row)

    def make_wal(self, random_kib: int = 64) -> str:
        """Write some WAL, switch segments; the name of the segment that was closed."""
        # rows of 1 KiB of md5 text (about half of it entropy): WAL zstd cannot shrink much
        self.pg.psql("CREATE TABLE IF NOT EXISTS t (x text); "
                     "INSERT INTO t SELECT (SELECT string_agg(md5(random()::text || g || s), '')"
                     f" FROM generate_series(1, 32) s) FROM generate_series(1, {random_kib}) g")
        name = self.pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
        self.pg.psql("SELECT pg_switch_wal()")
        return name

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a = self.archiver()
            if a["last_archived_wal"] and a["last_archived_wal"] >= name:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} not archived in {timeout} s: {self.archiver()}\n"
                             f"{self.pg.log_tail()}")

    def keys(self):
        keys, _ = wal.open_keys(LocalBackend(self.repo), "wal-test-password", None)
        return keys

    def destroy(self) -> None:
        if self.pg is not None:
            self.pg.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def archive():
    why = _postgres_can_run()
    if why:
        pytest.skip(why)
    arch = Archive(reachable_tempdir("btwal-"))
    try:
        arch.start_cluster()
        arch.init()
        yield arch
    finally:
        arch.destroy()


def _sysid(pg: PgCluster) -> str:
    return pg.psql("SELECT system_identifier FROM pg_control_system()").strip()


def test_postgres_archives_through_wal_push_in_the_shared_layout(archive):
    cache = keycache.cache_path(archive.state)
    assert cache.exists()  # written by the admin command that opened the repository
    assert stat.S_IMODE(cache.stat().st_mode) == 0o640
    assert cache.stat().st_gid == archive.gid
    name = archive.make_wal()
    archive.wait_archived(name)
    backend = LocalBackend(archive.repo)
    obj = wal.object_name("main", name)
    path = archive.repo / obj
    st = path.stat()
    assert path.owner() == "postgres" and st.st_gid == archive.gid
    assert stat.S_IMODE(st.st_mode) == 0o660
    for folder in (archive.repo / "wal", archive.repo / "wal" / "main" / "00000001",
                   archive.repo / "locks"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2770, folder
        assert folder.stat().st_gid == archive.gid
    keys = archive.keys()
    header, body = wal.read_object(keys, backend.get(obj), obj, name)
    assert header["system_identifier"] == _sysid(archive.pg)
    assert len(body) == SEG and body[24:32] == int(_sysid(archive.pg)).to_bytes(8, "little")
    assert len(backend.get(obj)) < SEG // 4  # compressed
    ident = wal.read_identity(keys, backend, "main")
    assert ident["system_identifier"] == _sysid(archive.pg)
    assert not list(backend.list("locks/"))  # released
    assert name in [w.name for w in wal.list_wal(backend, "main")]
    # wal-fetch as postgres (restore_command) gives the same bytes, atomically
    dest = archive.inbox / "RECOVERYXLOG"
    r = archive.as_postgres("wal-fetch", name, str(dest))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == header["sha256"]
    assert [p.name for p in archive.inbox.iterdir()] == ["RECOVERYXLOG"]  # no temp left
    # the same file again: success, nothing rewritten
    mtime = path.stat().st_mtime_ns
    r = archive.as_postgres("wal-push", str(dest.rename(archive.inbox / name)))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert path.stat().st_mtime_ns == mtime
    # a .history file (what a promotion archives) goes to its own timeline's folder
    hist = archive.inbox / "00000002.history"
    hist.write_text("1\t0/3000000\tno recovery target specified\n")
    shutil.chown(hist, "postgres")
    r = archive.as_postgres("wal-push", str(hist))
    assert r.returncode == 0, r.stderr
    h = wal.wal_header(keys, backend, "main", "00000002.history")
    assert h["kind"] == "history" and h["timeline"] == 2 and h["size"] == hist.stat().st_size


def test_same_name_different_content_is_split_brain(archive):
    name = archive.make_wal()
    archive.wait_archived(name)
    f = archive.inbox / name
    r = archive.as_postgres("wal-fetch", name, str(f))
    assert r.returncode == 0, r.stderr
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    data = bytearray(f.read_bytes())
    data[SEG // 2] ^= 0xFF
    f.write_bytes(data)
    bad = hashlib.sha256(data).hexdigest()
    obj = archive.repo / wal.object_name("main", name)
    before = obj.read_bytes()
    r = archive.as_postgres("wal-push", str(f))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "SPLIT BRAIN" in err and good in err and bad in err, err
    assert obj.read_bytes() == before
    assert f.read_bytes() == bytes(data)  # the source is never touched


def test_segment_of_another_system_is_refused(archive, pg_cluster):
    # a real segment of another cluster (another initdb: another system identifier)
    pg_cluster.psql("SELECT pg_switch_wal()")
    wal_dir = pg_cluster.data_dir / "pg_wal"
    theirs = sorted(p for p in wal_dir.iterdir() if wal._SEGMENT.fullmatch(p.name))[0]
    name = "0000000100000000000000EE"  # not archived here: only the identity stops it
    f = archive.inbox / name
    shutil.copyfile(theirs, f)
    shutil.chown(f, "postgres")
    other = _sysid(pg_cluster)
    assert other != _sysid(archive.pg)
    r = archive.as_postgres("wal-push", str(f))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "refused" in err and other in err
    assert _sysid(archive.pg) in err
    assert not (archive.repo / wal.object_name("main", name)).exists()
    # not a WAL segment at all
    junk = archive.inbox / "0000000100000000000000EF"
    junk.write_bytes(b"\0" * SEG)
    shutil.chown(junk, "postgres")
    r = archive.as_postgres("wal-push", str(junk))
    assert r.returncode == 1 and b"not a WAL segment" in r.stderr


def test_wal_push_fails_fast_while_cleanup_holds_the_lock(archive):
    backend = LocalBackend(archive.repo)
    failed = archive.archiver()["failed_count"]
    lock = RepoLock(backend, exclusive=True, purpose="prune (test)").acquire()
    try:
        # by hand: exit 1 within about 2 s, naming the lock
        name = archive.make_wal()
        probe = archive.inbox / "0000000100000000000000ED"
        seg = archive.pg.data_dir / "pg_wal" / name
        shutil.copyfile(seg, probe)
        shutil.chown(probe, "postgres")
        t0 = time.monotonic()
        r = archive.as_postgres("wal-push", str(probe))
        took = time.monotonic() - t0
        assert r.returncode == 1 and b"prune (test)" in r.stderr, r.stderr
        assert r.stderr.count(b"\n") == 1
        assert took < 8, took  # 2 s of waiting plus the interpreter on a busy machine
        # PostgreSQL's archiver: fails, keeps the segment ready, retries
        deadline = time.monotonic() + 60
        while archive.archiver()["failed_count"] <= failed and time.monotonic() < deadline:
            time.sleep(0.2)
        a = archive.archiver()
        assert a["failed_count"] > failed and a["last_failed_wal"] == name
        assert (archive.pg.data_dir / "pg_wal" / "archive_status" / f"{name}.ready").exists()
        assert seg.exists()
        assert not (archive.repo / wal.object_name("main", name)).exists()
    finally:
        lock.release()
    archive.wait_archived(name)
    assert (archive.repo / wal.object_name("main", name)).exists()


def test_wal_push_imports_nothing_heavy(archive):
    name = archive.make_wal()
    archive.wait_archived(name)
    f = archive.inbox / "0000000100000000000000EC"
    r = archive.as_postgres("wal-fetch", name, str(f))
    assert r.returncode == 0, r.stderr
    # the real process, as PostgreSQL starts it: every module it imports
    r = archive.as_postgres("wal-push", str(f), python_args=("-X", "importtime"))
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert "engine.wal" in imported and "zstandard" in imported
    assert not [m for m in imported if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]
    # and sys.modules after a real push in the same interpreter
    code = ("import json, sys; from backup_tui import cli_wal; "
            f"rc = cli_wal.run(['--config', {str(archive.config)!r}, 'wal-push', {str(f)!r}]); "
            "print(json.dumps([rc, sorted(sys.modules)]))")
    r = subprocess.run(["runuser", "-u", "postgres", "--", *server_python(), "-c", code],
                       capture_output=True, env=archive.env(), timeout=120, cwd="/")
    rc, modules = json.loads(r.stdout)
    assert rc == 0, r.stderr
    assert not [m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]


def test_wal_push_through_the_installed_script(archive):
    """`backup-tui wal-push` as PostgreSQL runs it (the installed script, a fresh process
    per busy 16 MiB segment) stores each one readable. Its wall time is a benchmark
    figure (bench/pitr.py), not asserted here."""
    last = archive.make_wal(random_kib=40 * 1024)  # 40 MiB: full segments before it
    archive.wait_archived(last)
    name = wal.segment_name(1, (wal.segment_number(last) - 1) * SEG)
    src = archive.base / "seg"
    keys = archive.keys()
    obj = wal.object_name("main", name)
    shutil.copyfile(archive.repo / obj, archive.base / "obj")
    _h, body = wal.read_object(keys, (archive.base / "obj").read_bytes(), obj, name)
    script = ROOT / ".venv" / "bin" / "backup-tui"
    for i in range(5):
        f = archive.base / f"0000007F00000000000000{i:02X}"
        f.write_bytes(body)
        r = subprocess.run([str(script), "--config", str(archive.config), "wal-push", str(f)],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        pushed = wal.object_name("main", f.name)
        _h2, back = wal.read_object(keys, (archive.repo / pushed).read_bytes(), pushed, f.name)
        assert back == body
    src.unlink(missing_ok=True)
    assert len(archive.base.joinpath("obj").read_bytes()) > SEG // 4  # a busy segment


def test_wal_push_into_a_full_disk_keeps_the_segment(archive):
    base = archive.base / "full"
    base.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                        f"size=8m,mode=2770,gid={archive.gid}", "tmpfs", str(base)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        repo = base / "repo"
        repo.mkdir()
        os.chown(repo, 0, archive.gid)
        os.chmod(repo, 0o2770)
        state = archive.base / "state-full"
        state.mkdir()
        os.chown(state, 0, archive.gid)
        os.chmod(state, 0o2750)
        cfg = archive.write(archive.base / "full.toml", repo=repo, state=state)
        archive.engine(cfg).init()
        archive.engine(cfg).repo()
        # a first segment archived while there is room: lock and identity objects fit
        archive.set_archive_command(cfg)
        name = archive.make_wal()
        archive.wait_archived(name)
        failed = archive.archiver()["failed_count"]
        ballast = base / "ballast"
        with open(ballast, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        os.truncate(ballast, ballast.stat().st_size - 64 * 1024)  # room for a lock only
        name = archive.make_wal(random_kib=2048)  # ~2 MiB of random text: no 64 KiB object
        deadline = time.monotonic() + 60
        while archive.archiver()["failed_count"] <= failed and time.monotonic() < deadline:
            time.sleep(0.2)
        a = archive.archiver()
        assert a["failed_count"] > failed and a["last_failed_wal"] == name, a
        assert (archive.pg.data_dir / "pg_wal" / "archive_status" / f"{name}.ready").exists()
        log = archive.pg.log_path.read_text(errors="replace")
        assert "disk full" in log and "no space left on device" in log
        assert "Traceback" not in log
        backend = LocalBackend(repo)
        assert name not in [w.name for w in wal.list_wal(backend, "main")]
        assert not [p for p in repo.rglob(".tmp-*")]  # no partial object left
        ballast.unlink()
        archive.wait_archived(name)
        obj = wal.object_name("main", name)
        keys, _ = wal.open_keys(backend, "wal-test-password", None)
        header, body = wal.read_object(keys, backend.get(obj), obj, name)
        assert header["size"] == SEG
    finally:
        archive.set_archive_command(archive.config)
        if subprocess.run(["umount", str(base)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(base)], capture_output=True)


def test_wal_fetch_without_local_repository_tries_each_replica(archive, s3_server,
                                                               s3_buckets):
    name = archive.make_wal()
    archive.wait_archived(name)
    good = (f'[[replica]]\nname = "good"\nbucket = "{s3_buckets.euw1}"\n'
            f'region = "eu-west-1"\nendpoint_url = "{s3_server.endpoint_url}"\n')
    bad = (f'[[replica]]\nname = "down"\nbucket = "{s3_buckets.use1}"\n'
           f'region = "us-east-1"\nendpoint_url = "http://127.0.0.1:{free_port()}"\n')
    admin_cfg = archive.write(archive.base / "replicate.toml", replicas=good)
    results = archive.engine(admin_cfg).replicate("good")
    assert all(r.ok for r in results), [r.error for r in results]
    # the local repository and the state (its key cache) are gone: another path, no state
    cfg = archive.write(archive.base / "dr.toml", repo=archive.base / "gone",
                        state=archive.base / "no-state", replicas=bad + good)
    dest = archive.inbox / "RECOVERYXLOG"
    t0 = time.monotonic()
    r = archive.as_postgres("wal-fetch", name, str(dest), config=cfg)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took < 30, took
    keys = archive.keys()
    h = wal.wal_header(keys, LocalBackend(archive.repo), "main", name)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == h["sha256"]
    # --replica: that replica alone, even with the local repository there
    settings = wal.WalSettings.load(admin_cfg)
    assert wal.fetch(settings, name, str(archive.base / "r1")) == "local"
    assert wal.fetch(settings, name, str(archive.base / "r2"), replica="good") == "good"
    assert (archive.base / "r2").read_bytes() == dest.read_bytes()
    r = archive.as_postgres("wal-fetch", name, str(dest), "--replica", "nope",
                            config=admin_cfg)
    assert r.returncode == 126 and b"no [[replica]] named 'nope'" in r.stderr
    # a segment that exists nowhere: exit 1, quickly, so recovery ends
    t0 = time.monotonic()
    r = archive.as_postgres("wal-fetch", "0000000100000000000000FE", str(dest), config=cfg)
    assert r.returncode == 1
    assert time.monotonic() - t0 < 30
    assert b"0000000100000000000000FE" in r.stderr and r.stderr.count(b"\n") == 1
    assert b"down" in r.stderr  # the unreachable one is named
    # only the unreachable replica: exit 1 naming it
    only_bad = archive.write(archive.base / "bad.toml", repo=archive.base / "gone",
                             state=archive.base / "no-state", replicas=bad)
    # (exit 126: PostgreSQL stops recovery rather than take it for the end of the WAL)
    r = archive.as_postgres("wal-fetch", name, str(dest), config=only_bad)
    assert r.returncode == 126 and b"down" in r.stderr and b"unreachable" in r.stderr
    assert b"recovery stops" in r.stderr and r.stderr.count(b"\n") == 1
    # the password file unreadable: no copy can be read either
    broken = archive.write(archive.base / "broken.toml", replicas=good)
    broken.write_text(broken.read_text().replace(str(archive.pwfile), "/nonexistent/pass"))
    r = archive.as_postgres("wal-fetch", name, str(dest), config=broken)
    assert r.returncode == 126 and b"/nonexistent/pass" in r.stderr


# ------------------------------------------------------------------ the command line


def test_cli_usage_and_gate(sandbox, tmp_path):
    sandbox.extra = ('[[cluster]]\nname = "main"\n'
                     'dsn = "postgresql://postgres@127.0.0.1:1/postgres"\n')
    sandbox.write_config()
    sandbox.engine(init=True)
    seg = tmp_path / "000000010000000000000001"
    seg.write_bytes(b"\0" * 100)
    r = sandbox.cli("--help")
    assert r.returncode == 0 and b"wal-push" in r.stdout and b"wal-fetch" in r.stdout
    r = sandbox.cli("wal-push", "--help")
    assert r.returncode == 0 and b"--cluster" in r.stdout
    for args, code, words in [
        (("wal-push",), 2, b"usage: backup-tui [--config PATH] wal-push PATH"),
        (("wal-fetch", "000000010000000000000001"), 2, b"usage:"),
        (("wal-push", str(seg), "--cluster", "other"), 2, b"no [[cluster]] named 'other'"),
        (("wal-fetch", "../../etc/passwd", str(tmp_path / "x")), 126, b"not a WAL file name"),
        (("wal-push", str(tmp_path / "00000001000000000000000A")), 1, b"cannot read"),
        (("wal-push", str(seg)), 1, b"not a WAL segment"),
        (("wal-fetch", "000000010000000000000001", str(tmp_path / "x")), 1, b"not archived"),
        (("wal-fetch", "000000010000000000000001", str(tmp_path / "x"), "--cluster", "other"),
         126, b"no [[cluster]] named 'other'"),
    ]:
        r = sandbox.cli(*args)
        assert r.returncode == code and words in r.stderr, (args, r.stderr)
        assert r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    # main() handles them first too, in the same process
    from backup_tui import cli

    assert cli.main(["--config", str(sandbox.config_path), "wal-fetch",
                     "000000010000000000000001", str(tmp_path / "x")]) == 1
    # no [[cluster]] at all: a usage error naming the config
    sandbox.extra = ""
    sandbox.write_config()
    r = sandbox.cli("wal-push", str(seg))
    assert r.returncode == 2 and b"no [[cluster]] is configured" in r.stderr


def test_identity_comes_from_the_newest_base_backup_on_the_first_push():
    from engine.repo.repository import Repository

    b = MemoryBackend()
    repo = Repository.init(b, "pw", kdf=CHEAP_KDF)
    for when, sysid in (("2026-01-01T00:00:00+00:00", "111"),
                        ("2026-02-01T00:00:00+00:00", "222")):
        repo.save_record("snapshots", {"kind": "cluster", "source": "main", "time": when,
                                       "postgres": {"system_identifier": sysid}})
    repo.save_record("snapshots", {"kind": "cluster", "source": "other",
                                   "time": "2026-03-01T00:00:00+00:00",
                                   "postgres": {"system_identifier": "333"}})
    name = "000000010000000000000003"
    with pytest.raises(wal.WrongSystem, match="system 111.*cluster 'main' is system 222"):
        wal.check_identity(repo.keys, b, "main", 111, name)
    assert wal.read_identity(repo.keys, b, "main") is None  # a refused push records nothing
    assert wal.check_identity(repo.keys, b, "main", 222, name) == "222"
    ident = wal.read_identity(repo.keys, b, "main")
    assert ident["system_identifier"] == "222" and ident["from"].startswith("snapshot ")
    # from then on the record decides, without reading snapshots
    b.list = None  # type: ignore[assignment]
    with pytest.raises(wal.WrongSystem):
        wal.check_identity(repo.keys, b, "main", 333, name)
    assert wal.check_identity(repo.keys, b, "main", None, "00000002.history") == "222"


def _fake_segment(sysid: int, fill: bytes = b"") -> bytes:
    import struct

    seg = bytearray(SEG)
    struct.pack_into("<HHIQIIQII", seg, 0, 0xD110, 0x0002, 1, 0, 0, 0, sysid, SEG, 8192)
    seg[64:64 + len(fill)] = fill
    return bytes(seg)


@pytest.mark.parametrize("password,compression", [(None, "zstd:3"), ("pw", "none")])
def test_push_and_fetch_in_process(tmp_path, password, compression):
    """Unencrypted repositories, and `compression = "none"` (stored raw)."""
    from engine.repo.repository import Repository

    Repository.init(LocalBackend(tmp_path / "repo"), password, compression, kdf=CHEAP_KDF)
    settings = wal.WalSettings(repo_path=str(tmp_path / "repo"), state_dir=str(tmp_path),
                               cluster_names=("main",))
    env = os.environ.copy()
    try:
        if password:
            os.environ["BACKUP_TUI_PASSWORD"] = password
        else:
            os.environ.pop("BACKUP_TUI_PASSWORD", None)
        name = "000000010000000000000009"
        src = tmp_path / name
        src.write_bytes(_fake_segment(42, os.urandom(1000) + b"a" * 5000))
        assert wal.push(settings, str(src)) == "stored"
        assert wal.push(settings, str(src)) == "present"
        stored = (tmp_path / "repo" / wal.object_name("main", name)).stat().st_size
        assert (stored > SEG) == (compression == "none")
        assert wal.fetch(settings, name, str(tmp_path / "out")) == "local"
        assert (tmp_path / "out").read_bytes() == src.read_bytes()
        with pytest.raises(wal.WrongSystem):
            other = tmp_path / "00000001000000000000000A"
            other.write_bytes(_fake_segment(43))
            wal.push(settings, str(other))
        with pytest.raises(wal.WalNotFound):
            wal.fetch(settings, "00000001000000000000000A", str(tmp_path / "out2"))
        assert not (tmp_path / "out2").exists()
    finally:
        os.environ.clear()
        os.environ.update(env)
