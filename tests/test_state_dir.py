"""The state directory, the catalog and the audit log under hostile conditions (issue 10).

Non-UTF-8 file names reach the catalog (finding 1); ``init`` over a repository that
lost its config (6); a full state directory (7, on a real tmpfs mount); jobs of
killed processes (9); a real local non-admin user against the catalog and the audit
store (11); the console from a script (12); a password for an unencrypted
repository (small items). Every CLI run is a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from support import Sandbox, python_for_anyone

from engine.catalog import Catalog, process_start, safe_text
from engine.events import Event


def one_line(proc, code: int) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err, proc.stdout[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def jobs_of(state: Path) -> list[dict]:
    db = sqlite3.connect(state / "catalog.sqlite", timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY started")]
    finally:
        db.close()


# ------------------------------------------------------------- finding 1: names
def test_safe_text_escapes_undecodable_bytes():
    raw = b"d\xff/f\xfe.txt".decode("utf-8", "surrogateescape")
    assert safe_text(raw) == "d\\xff/f\\xfe.txt"
    assert safe_text("caf\u00e9 \ud800") == "caf\u00e9 \\ud800"  # a surrogate of no byte
    assert safe_text("plain") == "plain"


def test_catalog_stores_non_utf8_text(tmp_path):
    """Progress message, job target, error and audit lines with surrogate escapes."""
    cat = Catalog(tmp_path / "state")
    name = b"/src/d\xff/f\xfe".decode("utf-8", "surrogateescape")
    cat.start_job("j1", "backup", "files:" + name)
    cat.progress(Event("j1", "backup", message=name, final=True))
    cat.end_job("j1", "failed", error=f"cannot read {name}")
    cat.audit("backup", name, "failed", detail=f"cannot read {name}")
    job = cat.job("j1")
    assert job["target"] == "files:/src/d\\xff/f\\xfe"
    assert job["message"] == "/src/d\\xff/f\\xfe"
    assert job["error"] == "cannot read /src/d\\xff/f\\xfe"
    line = cat.audit_log()[0]
    assert line["target"] == "/src/d\\xff/f\\xfe" and "\\xfe" in line["detail"]


def test_backup_of_non_utf8_names_through_the_cli(sandbox):
    """A tree whose names are not UTF-8, big enough for progress to reach the catalog
    mid-file: the backup completes and restores byte-identical names and contents."""
    src = bytes(sandbox.src)
    os.makedirs(os.path.join(src, b"d\xff\xfe"))
    for i in range(3):
        with open(os.path.join(src, b"d\xff\xfe", b"big\xe9%d.bin" % i), "wb") as f:
            f.write(os.urandom(24 << 20))
    for i in range(200):
        with open(os.path.join(src, b"small\x80\xff-%d" % i), "wb") as f:
            f.write(b"x" * i)
    assert sandbox.cli("init").returncode == 0
    proc = sandbox.cli("backup", "files", "src", "--json")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    snap = json.loads(proc.stdout)
    assert snap["complete"], snap
    job = [j for j in jobs_of(sandbox.state) if j["kind"] == "backup"][-1]
    assert job["state"] == "succeeded"
    target = sandbox.root / "restored"
    proc = sandbox.cli("restore", "files", snap["id"], "--target", str(target))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    restored = _restored_root(target, sandbox.src)
    diff = subprocess.run(["rsync", "-a", "-n", "-i", "-c", "--delete", f"{sandbox.src}/",
                           f"{restored}/"], capture_output=True)
    assert diff.returncode == 0 and diff.stdout == b"", (restored, diff.stdout[:2000])


def _restored_root(target: Path, src: Path) -> Path:
    """Where the restore put the source folder: under its full path, or its last name."""
    for cand in (target / str(src).lstrip("/"), target / src.name, target):
        if (cand / os.fsdecode(b"d\xff\xfe")).exists():
            return cand
    raise AssertionError(f"restored tree not found under {target}: {list(target.iterdir())}")


# ------------------------------------------------------- finding 6: lost config
@pytest.mark.parametrize("with_replica", [False, True])
def test_init_refuses_a_repository_that_lost_its_config(sandbox, with_replica):
    if with_replica:  # named only: nothing contacts it
        sandbox.extra = ('[[replica]]\nname = "offsite"\nbucket = "b"\nregion = "us-east-1"\n'
                         'endpoint_url = "http://127.0.0.1:9"\nreplicate_after_backup = false\n')
        sandbox.write_config()
    (sandbox.src / "a").write_text("a")
    assert sandbox.cli("init").returncode == 0
    assert sandbox.cli("backup", "files", "src").returncode == 0
    config = (sandbox.repo / "config").read_bytes()
    (sandbox.repo / "config").unlink()
    before = sorted(str(p) for p in sandbox.repo.rglob("*"))

    line = one_line(sandbox.cli("list"), 1)
    assert "config is missing" in line and "do not run init" in line
    if with_replica:
        assert "backup-tui repository adopt --from offsite" in line
    line = one_line(sandbox.cli("init"), 1)
    assert "init refused" in line and "data/" in line and "snapshots/" in line
    assert ("repository adopt --from offsite" in line) is with_replica
    assert not (sandbox.repo / "config").exists()
    assert sorted(str(p) for p in sandbox.repo.rglob("*")) == before

    (sandbox.repo / "config").write_bytes(config)  # the way back: every snapshot readable
    assert len(json.loads(sandbox.cli("list", "--json").stdout)) == 1
    assert "already exists" in one_line(sandbox.cli("init"), 1)


def test_init_refuses_keys_alone(sandbox):
    (sandbox.repo / "keys").mkdir(parents=True)
    (sandbox.repo / "keys" / "k1").write_text("{}")
    line = one_line(sandbox.cli("init"), 1)
    assert "init refused" in line and "keys/" in line


def test_unfinished_adoption_names_the_resume_not_init(sandbox):
    (sandbox.repo / "keys").mkdir(parents=True)
    (sandbox.repo / "keys" / "k1").write_text("{}")
    (sandbox.repo / ".adopting").write_text('{"replica": "offsite"}')
    for args in (["list"], ["init"]):
        line = one_line(sandbox.cli(*args), 1)
        assert "adoption from offsite is unfinished" in line, line
        assert "backup-tui repository adopt --from offsite" in line
    assert not (sandbox.repo / "config").exists()


def test_init_in_an_empty_folder_still_works(sandbox):
    sandbox.repo.mkdir()
    (sandbox.repo / "data").mkdir()  # empty folders are no data
    assert sandbox.cli("init").returncode == 0


# ---------------------------------------------------- finding 7: full state dir
@pytest.fixture
def small_mount(tmp_path):
    """A 2 MiB tmpfs of our own (root only), unmounted after."""
    point = tmp_path / "smallfs"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs",
                           str(point)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem takes not one more byte."""
    for name, size in (("filler", 65536), ("filler2", 512), ("filler3", 1)):
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            while os.write(fd, b"\0" * size):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)


def test_full_state_dir_says_so_and_reads_still_work(sandbox, small_mount):
    sandbox.state = small_mount / "state"
    sandbox.write_config()
    (sandbox.src / "a").write_text("a")
    assert sandbox.cli("init").returncode == 0
    proc = sandbox.cli("backup", "files", "src", "--json")
    assert proc.returncode == 0, proc.stderr
    sid = json.loads(proc.stdout)["id"]
    fill(small_mount)

    line = one_line(sandbox.cli("backup", "files", "src"), 1)
    assert f"no space left on device in {sandbox.state}" in line, line
    assert "move it aside" not in line
    for args in (["list", "--json"], ["status", "--json"], ["show", sid[:8], "--json"],
                 ["verify", "--json"], ["audit", "--json"]):
        proc = sandbox.cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)
        assert b"Traceback" not in proc.stderr
    assert b"no space left" in sandbox.cli("verify").stderr  # said, once

    sandbox.state = small_mount / "fresh-state"  # a state directory begun on a full disk
    sandbox.write_config()
    proc = sandbox.cli("list", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1, proc.stderr
    line = one_line(sandbox.cli("backup", "files", "src"), 1)
    assert "no space left on device in" in line and "fresh-state" in line, line
    sandbox.state = small_mount / "state"
    sandbox.write_config()

    for filler in small_mount.glob("filler*"):  # space again: everything as before
        filler.unlink()
    assert sandbox.cli("backup", "files", "src").returncode == 0
    assert len(json.loads(sandbox.cli("list", "--json").stdout)) == 2


def test_read_only_state_dir_says_so_and_reads_still_work(sandbox, small_mount):
    sandbox.state = small_mount / "state"
    sandbox.write_config()
    (sandbox.src / "a").write_text("a")
    assert sandbox.cli("init").returncode == 0
    assert sandbox.cli("backup", "files", "src").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    line = one_line(sandbox.cli("backup", "files", "src"), 1)
    assert f"the file system of {sandbox.state} is mounted read-only" in line, line
    for args in (["list", "--json"], ["status", "--json"], ["verify", "--json"]):
        proc = sandbox.cli(*args)
        assert proc.returncode == 0 and proc.stderr == b"", (args, proc.stderr)
    subprocess.run(["mount", "-o", "remount,rw", str(small_mount)], check=True)


def test_catalog_layer_full_disk_is_named(tmp_path, monkeypatch):
    """The classification itself, for SQLITE_FULL raised by any write."""
    from engine.catalog import StateDirError

    cat = Catalog(tmp_path / "state")
    err = sqlite3.OperationalError("database or disk is full")
    err.sqlite_errorcode = 13

    def full(*_a, **_k):
        raise err

    monkeypatch.setattr(cat, "_conn", full)
    with pytest.raises(StateDirError, match=f"no space left on device in {tmp_path / 'state'}"):
        cat.start_job("j", "backup", "files:x")
    cat.lenient().start_job("j", "backup", "files:x")  # a read-only command carries on


# ------------------------------------------------------- finding 9: dead jobs
def test_jobs_of_dead_processes_are_marked_interrupted_on_open(tmp_path, monkeypatch):
    state = tmp_path / "state"
    Catalog(state)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    host = socket.gethostname()
    rows = [("dead", dead.pid, host, None), ("reused", alive, host, "1"),
            ("mine", alive, host, process_start(alive)), ("elsewhere", dead.pid, "other", None),
            ("legacy", dead.pid, None, None)]
    with sqlite3.connect(state / "catalog.sqlite") as db:
        for jid, pid, h, start in rows:
            db.execute("INSERT INTO jobs (id, kind, target, state, started, pid, host, "
                       "pid_start) VALUES (?, 'backup', 't', 'running', ?, ?, ?, ?)",
                       (jid, time.time(), pid, h, start))
    expected = {"dead": "interrupted", "reused": "interrupted", "mine": "running",
                "elsewhere": "running", "legacy": "interrupted"}
    with monkeypatch.context() as m:  # a reader who may not write sees them so too
        m.setattr(Catalog, "_can_write", lambda self: False)
        reader = Catalog(state)
        assert reader.read_only
        assert {j["id"]: j["state"] for j in reader.jobs()} == expected
        assert reader.job("dead")["state"] == "interrupted"
    assert {r["state"] for r in jobs_of(state)} == {"running"}  # it changed nothing
    cat = Catalog(state)  # whoever opens it next records it
    assert {j["id"]: j["state"] for j in cat.jobs()} == expected
    assert {r["id"]: r["state"] for r in jobs_of(state)} == expected


def test_killed_backup_shows_interrupted_in_status(sandbox):
    for i in range(8):
        (sandbox.src / f"f{i}").write_bytes(os.urandom(32 << 20))
    assert sandbox.cli("init").returncode == 0
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    proc = subprocess.Popen([sys.executable, "-m", "backup_tui.cli", "--config",
                             str(sandbox.config_path), "backup", "files", "src"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(j["state"] == "running" for j in jobs_of(sandbox.state)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    status = json.loads(sandbox.cli("status", "--json").stdout)
    assert status["running"] == []
    job = [j for j in jobs_of(sandbox.state) if j["kind"] == "backup"][-1]
    assert job["state"] == "interrupted" and job["pid"] == proc.pid


# ------------------------------------------------ finding 11: a local non-admin
def _python_for_others() -> list[str]:
    """An interpreter another user can run, then the PYTHONPATH entries with this checkout's
    packages and their dependencies (tests/support.py ``python_for_anyone``)."""
    exe, path = python_for_anyone()
    return [exe, *path]


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway OS user needs root")
    if not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("useradd and setpriv are needed to run as another user")
    name = f"btna{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd

        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def test_non_admin_reads_but_cannot_write_audit_or_requests(other_user):
    python = _python_for_others()
    base = Path(tempfile.mkdtemp(prefix="btna-"))
    os.chmod(base, 0o755)  # ours: mkdtemp made it 0700
    try:
        sandbox = Sandbox(base)
        (sandbox.src / "a").write_text("a")
        sandbox.extra = '[security]\nadmin_group = "btna-admins-none"\n'
        sandbox.write_config()
        eng = sandbox.engine(init=True)
        eng.backup("files", "src")
        eng.request_run("files")
        audit_rows = len(eng.audit_log())
        assert (sandbox.state / "admin.sqlite").exists()
        # The repository is made readable to them (its objects are 0600: the admin decides
        # who may read backups), and they know its password, not the admin's password
        # file. The state directory keeps the modes the tool gave it.
        for dirpath, _dirs, files in os.walk(sandbox.repo):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        their_config = base / "their-config.toml"
        their_config.write_text("\n".join(
            line for line in sandbox.config_path.read_text().splitlines()
            if not line.startswith("password_file")) + "\n")
        env = {"PATH": "/usr/bin:/bin", "BACKUP_TUI_PASSWORD": sandbox.password,
               "PYTHONPATH": ":".join(python[1:]), "HOME": "/"}

        def as_other(*argv, code=None):
            return subprocess.run(
                ["setpriv", "--reuid", str(other_user.pw_uid), "--regid",
                 str(other_user.pw_gid), "--clear-groups", *argv], capture_output=True,
                timeout=120, cwd="/", env=env, input=code)

        def cli(*args):
            return as_other(python[0], "-m", "backup_tui.cli", "--config",
                            str(their_config), *args)

        for args in (["list", "--json"], ["status", "--json"], ["verify", "--json"],
                     ["audit", "--json"], ["show", "latest", "--json"]):
            proc = cli(*args)
            assert proc.returncode == 0, (args, proc.stderr.decode())
            json.loads(proc.stdout)
        assert len(json.loads(cli("list", "--json").stdout)) == 1
        refused = cli("schedule", "run", "files")
        assert refused.returncode == 1 and b"permission denied" in refused.stderr

        # plain sqlite3, as a hostile local user would
        attack = f"""
import os, sqlite3, sys
state = {str(sandbox.state)!r}
fails = []
for path, sql in [
    ("admin.sqlite", "DELETE FROM audit"),
    ("admin.sqlite", "DROP TRIGGER audit_no_delete"),
    ("admin.sqlite", "INSERT INTO run_requests (kind, requested, user) "
                     "VALUES ('files', 0, 'root')"),
    ("catalog.sqlite", "UPDATE jobs SET state='succeeded'"),
]:
    try:
        db = sqlite3.connect(os.path.join(state, path), timeout=2, isolation_level=None)
        db.execute(sql)
        print("WROTE", path, sql)
    except sqlite3.Error as e:
        fails.append(str(e))
for name in ("admin.sqlite", "catalog.sqlite"):
    try:
        os.rename(os.path.join(state, name), os.path.join(state, name + ".x"))
        print("RENAMED", name)
    except OSError:
        pass
    try:
        open(os.path.join(state, name), "ab").close()
        print("OPENED FOR WRITING", name)
    except OSError:
        pass
print(len(fails))
""".encode()
        proc = as_other(python[0], "-", code=attack)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().split() == ["4"], proc.stdout.decode()
        assert len(eng.audit_log()) == audit_rows
        assert len(eng.catalog.take_requests()) == 1  # only the admin's own request
        for name in ("admin.sqlite", "catalog.sqlite"):
            st = os.stat(sandbox.state / name)
            assert st.st_uid == 0 and not st.st_mode & 0o002, (name, oct(st.st_mode))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_admin_group_member_writes_with_default_modes(other_user):
    """With [security] admin_group existing: the state directory and both stores (and their
    -wal and -shm) are the group's to write from the start; a member who is not root
    changes a schedule and is audited under their own name; the same user without the
    group is refused."""
    import grp
    import stat

    python = _python_for_others()
    group = f"btg{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="btag-"))
    os.chmod(base, 0o755)  # ours: mkdtemp made it 0700
    try:
        gid = grp.getgrnam(group).gr_gid
        sandbox = Sandbox(base)
        sandbox.extra = f'[security]\nadmin_group = "{group}"\n'
        sandbox.write_config()
        eng = sandbox.engine(init=True)
        eng.pause("files")  # an open writer: -wal and -shm exist now
        st = os.stat(sandbox.state)
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o2775, oct(st.st_mode)
        for name in ("catalog.sqlite", "admin.sqlite"):
            for suffix in ("", "-wal", "-shm"):
                path = sandbox.state / (name + suffix)
                if suffix and not path.exists():
                    continue
                st = os.stat(path)
                assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o664, (
                    path.name, oct(st.st_mode))
        their_config = base / "their-config.toml"
        their_config.write_text("\n".join(
            line for line in sandbox.config_path.read_text().splitlines()
            if not line.startswith("password_file")) + "\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "PYTHONPATH": ":".join(python[1:])}

        def cli(groups: list[str], *args):
            return subprocess.run(
                ["setpriv", "--reuid", str(other_user.pw_uid), "--regid",
                 str(other_user.pw_gid), *groups, python[0], "-m", "backup_tui.cli",
                 "--config", str(their_config), *args],
                capture_output=True, timeout=120, cwd="/", env=env)

        member = cli(["--groups", str(gid)], "schedule", "resume", "files")
        assert member.returncode == 0, member.stderr.decode()
        outsider = cli(["--clear-groups"], "schedule", "pause", "files")
        assert outsider.returncode == 1 and b"permission denied" in outsider.stderr
        lines = eng.audit_log()
        assert (lines[0]["action"], lines[0]["user"]) == ("resume", other_user.pw_name)
        assert not eng.catalog.schedule_states()["files"]["paused"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


def test_a_state_dir_open_to_all_is_warned(sandbox):
    sandbox.state.mkdir()
    os.chmod(sandbox.state, 0o777)  # ours (made just above): an admin loosening it
    (sandbox.src / "a").write_text("a")
    assert sandbox.cli("init").returncode == 0
    err = sandbox.cli("list").stderr.decode()
    assert "writable by every local user" in err and "forge the audit log" in err, err


def test_old_catalog_moves_its_audit_log_to_the_admin_store(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "catalog.sqlite") as db:
        db.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,
              state TEXT NOT NULL, started REAL NOT NULL, ended REAL, phase TEXT DEFAULT '',
              bytes_done INTEGER DEFAULT 0, bytes_total INTEGER DEFAULT 0,
              items_done INTEGER DEFAULT 0, items_total INTEGER DEFAULT 0,
              message TEXT DEFAULT '', error TEXT DEFAULT '', result TEXT DEFAULT '',
              pid INTEGER, updated REAL);
            CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
              user TEXT NOT NULL, uid INTEGER NOT NULL, action TEXT NOT NULL,
              target TEXT NOT NULL, snapshots TEXT NOT NULL, outcome TEXT NOT NULL,
              detail TEXT DEFAULT '');
            CREATE TABLE run_requests (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
              requested REAL NOT NULL, user TEXT NOT NULL, taken REAL);
            INSERT INTO audit (time, user, uid, action, target, snapshots, outcome)
              VALUES (1, 'root', 0, 'init', '/repo', '[]', 'succeeded');
            INSERT INTO run_requests (kind, requested, user) VALUES ('files', 2, 'root');
        """)
    cat = Catalog(state)
    assert [a["action"] for a in cat.audit_log()] == ["init"]
    assert [r["kind"] for r in cat.take_requests()] == ["files"]
    cat.audit("backup", "files:src", "succeeded")
    assert [a["action"] for a in cat.audit_log()] == ["backup", "init"]
    cat.start_job("j", "backup", "files:src")  # the old jobs table gained its columns
    assert cat.job("j")["host"] == socket.gethostname()


# ------------------------------------------------ finding 12: console from a script
@pytest.mark.parametrize("argv", [["--json"], [], ["--demo"]])
def test_console_never_starts_without_a_terminal(sandbox, argv):
    proc = subprocess.run([sys.executable, "-m", "backup_tui.cli", "--config",
                           str(sandbox.config_path), *argv], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)
    line = one_line(proc, 2)
    assert "needs a terminal" in line
    assert proc.stdout == b"" and b"\x1b" not in proc.stderr


# ------------------------------------------ small: a password with no encryption
def test_password_for_an_unencrypted_repository_is_warned_once(sandbox_factory):
    sb = sandbox_factory(password=None)
    (sb.src / "a").write_text("a")
    assert sb.cli("init").returncode == 0
    assert sb.cli("backup", "files", "src").returncode == 0
    quiet = sb.cli("list", "--json")
    assert quiet.returncode == 0 and quiet.stderr == b""
    proc = sb.cli("list", "--json", env={"BACKUP_TUI_PASSWORD": "unused-secret"})
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert err.count("NOT encrypted") == 1 and "unused-secret" not in err, err
    json.loads(proc.stdout)
    proc = sb.cli("backup", "files", "src", env={"BACKUP_TUI_PASSWORD": "unused-secret"})
    assert proc.returncode == 0 and proc.stderr.decode().count("NOT encrypted") == 1


# ---------------------------------------- small: advice names commands that exist
def test_every_command_a_message_recommends_exists():
    """'backup-tui forget SNAPSHOT', 'backup-tui repair', ...: each command word any
    message of the engine or the CLI recommends is a subcommand of the parser."""
    import re

    from backup_tui.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)
    root = Path(__file__).resolve().parent.parent
    named: dict[str, str] = {}
    for path in [*(root / "engine").rglob("*.py"), *(root / "backup_tui").rglob("*.py")]:
        for m in re.finditer(r"['`]backup-tui ([a-z][a-z-]+)", path.read_text()):
            named.setdefault(m.group(1), str(path.relative_to(root)))
    assert {"forget", "repair"} <= set(named)
    missing = {c: where for c, where in named.items() if c not in commands}
    assert not missing, missing


def test_a_backup_whose_end_cannot_be_recorded_still_succeeds(sandbox, monkeypatch, caplog):
    """The snapshot is committed before the job's end is written: a state directory that
    fills at that moment is logged, and the backup's result is not undone."""
    from engine.catalog import Catalog, StateDirError

    eng = sandbox.engine(init=True)
    (sandbox.src / "f").write_text("data")

    def full(self, *args, **kwargs):
        raise StateDirError("no space left on device in the state directory")

    monkeypatch.setattr(Catalog, "end_job", full)
    res = eng.backup("files", "src", replicate=False)
    assert res.complete and [s.id for s in eng.snapshots()] == [res.id]
    assert "could not be recorded in the catalog" in caplog.text
