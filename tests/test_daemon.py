"""The schedule and the headless daemon (--run-scheduler), notifications, health, audit,
the admin gate. The daemon runs as a real process against the real PostgreSQL and S3
harness; in-process tests drive engine.daemon.Scheduler directly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.daemon import Scheduler, SchedulerLock
from engine.errors import LockedError


def wait_for(pred, timeout: float = 60.0, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def jobs(sandbox) -> list[dict]:
    path = sandbox.state / "catalog.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY started")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def schedule_toml(**kinds) -> str:
    base = {"database": "off", "files": "off", "cleanup": "off", "verify": "off",
            "replicate": "off", "grace_seconds": 30}
    base.update(kinds)
    return "[schedule]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


def start_daemon(sandbox, log_path, extra_env=None):
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    env.update(extra_env or {})
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller through the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
         "--run-scheduler"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    proc.log_file = log
    return proc


def stop_daemon(proc, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    finally:
        proc.log_file.close()


# --------------------------------------------------------------------- the daemon
def test_daemon_runs_the_schedule_end_to_end(sandbox, pg_cluster, s3_server, s3_buckets,
                                             tmp_path):
    from test_db import SCHEMA
    from test_s3 import replica_toml

    db = f"shop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(db)
    pg_cluster.psql(SCHEMA, db)
    (sandbox.src / "a.txt").write_text("hello\n")
    (sandbox.src / "b.bin").write_bytes(os.urandom(1 << 20))
    metrics_file = tmp_path / "backup_tui.prom"
    sandbox.extra = (
        f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(db)}"\n'
        + replica_toml("euw1", s3_buckets.euw1, "eu-west-1", s3_server.endpoint_url,
                       replicate_after_backup=False)
        + schedule_toml(database="*/3 * * * * *", files="*/3 * * * * *",
                        replicate="*/4 * * * * *", verify="*/5 * * * * *")
        + f'[metrics]\ntextfile = "{metrics_file}"\n'
    )
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    aws_secret = f"s3cr3t-{uuid.uuid4().hex}"  # moto takes any; it must never be written
    proc = start_daemon(sandbox, tmp_path / "daemon.log",
                        {"AWS_SECRET_ACCESS_KEY": aws_secret})
    try:
        def done():
            ok = [j for j in jobs(sandbox) if j["state"] == "succeeded"]
            backups = {j["target"]: j["ended"] for j in ok if j["kind"] == "backup"}
            if set(backups) != {"db:shop", "files:src"}:
                return False
            after = max(backups.values())  # a replication and a verify that saw both
            return (any(j["kind"] == "replicate" and j["started"] > after for j in ok)
                    and any(j["kind"] == "verify" and j["started"] > after for j in ok))
        wait_for(done, timeout=90)
    finally:
        rc = stop_daemon(proc)
    log = (tmp_path / "daemon.log").read_text()
    assert rc == 0, log
    assert "scheduler started" in log and "job succeeded" in log and "scheduler stopped" in log
    assert all(j["state"] != "running" for j in jobs(sandbox))
    audit = json.loads(sandbox.cli("audit", "--json").stdout)
    assert {"backup", "replicate", "verify"} <= {a["action"] for a in audit}
    assert sandbox.cli("verify", "--read-data").returncode == 0
    listed = json.loads(sandbox.cli("list", "--json").stdout)
    assert {s["kind"] for s in listed} == {"db", "files"}
    assert any(s["replicas"]["euw1"] for s in listed)
    text = metrics_file.read_text()
    assert 'backup_tui_snapshots{kind="files",source="src"}' in text
    # no secret anywhere: password, AWS secret
    blobs = [log, text, (sandbox.state / "catalog.sqlite").read_bytes().decode("latin-1")]
    blobs += [p.read_bytes().decode("latin-1") for p in sandbox.state.rglob("*") if p.is_file()]
    for blob in blobs:
        assert sandbox.password not in blob
        assert aws_secret not in blob


def test_second_daemon_refuses_naming_the_pid(sandbox, tmp_path):
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    first = start_daemon(sandbox, tmp_path / "one.log")
    try:
        wait_for(lambda: "scheduler started" in (tmp_path / "one.log").read_text(), 30)
        second = sandbox.cli("--run-scheduler")
        assert second.returncode == 1
        assert f"pid {first.pid}".encode() in second.stderr
    finally:
        assert stop_daemon(first) == 0


def test_sigterm_during_a_backup_interrupts_it_cleanly(sandbox, tmp_path):
    for i in range(12):
        (sandbox.src / f"big{i}.bin").write_bytes(os.urandom(24 << 20))
    sandbox.extra = schedule_toml(files="*/2 * * * * *", grace_seconds=0)
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    proc = start_daemon(sandbox, tmp_path / "d.log")
    try:
        wait_for(lambda: any(j["state"] == "running" and j["bytes_done"] > 0
                             for j in jobs(sandbox)), timeout=60, step=0.05)
    finally:
        rc = stop_daemon(proc)
    assert rc == 0, (tmp_path / "d.log").read_text()
    states = [j["state"] for j in jobs(sandbox)]
    assert "interrupted" in states and "running" not in states
    assert sandbox.cli("verify").returncode == 0
    res = sandbox.cli("backup", "files", "src", "--json")
    assert res.returncode == 0, res.stderr


def test_run_now_request_reaches_the_daemon(sandbox, tmp_path):
    (sandbox.src / "x").write_text("x")
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    proc = start_daemon(sandbox, tmp_path / "d.log")
    try:
        wait_for(lambda: "scheduler started" in (tmp_path / "d.log").read_text(), 30)
        assert sandbox.cli("schedule", "run", "files").returncode == 0
        wait_for(lambda: any(j["state"] == "succeeded" for j in jobs(sandbox)), 30)
    finally:
        assert stop_daemon(proc) == 0
    assert "run now requested" in (tmp_path / "d.log").read_text()


# ------------------------------------------------------------ scheduler in-process
def test_a_failing_job_does_not_stop_the_scheduler(sandbox):
    import shutil

    (sandbox.src / "x").write_text("x")
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    sched = Scheduler(eng).start()
    try:
        shutil.rmtree(sandbox.src)
        assert sched.run_kind("files") == "failed"
        st = eng.catalog.schedule_states()["files"]
        assert st["last_result"] == "failed" and "does not exist" in st["last_error"]
        sandbox.src.mkdir()
        (sandbox.src / "y").write_text("y")
        assert sched.run_kind("files") == "succeeded"  # the next run happens
    finally:
        sched.stop(grace=5)
    assert [j["state"] for j in eng.jobs()] == ["succeeded", "failed"]


def test_missed_run_runs_once_at_start_and_says_so(sandbox, caplog):
    (sandbox.src / "x").write_text("x")
    sandbox.extra = schedule_toml(files="0 3 * * *")
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    eng.catalog.schedule_ran("files", "succeeded")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    with sqlite3.connect(sandbox.state / "catalog.sqlite") as db:
        db.execute("UPDATE schedule_state SET last_run=? WHERE kind='files'", (two_days_ago,))
    caplog.set_level("INFO", logger="backup_tui")
    sched = Scheduler(eng).start()
    try:
        wait_for(lambda: eng.snapshots(), timeout=30)
        wait_for(lambda: eng.catalog.schedule_states()["files"]["last_missed"], timeout=30)
    finally:
        sched.stop(grace=5)
    assert len(eng.snapshots()) == 1
    assert any("missed run" in r.getMessage() for r in caplog.records)


def test_clock_gone_backwards_catches_nothing_up(sandbox, caplog):
    sandbox.extra = schedule_toml(files="0 3 * * *")
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    eng.catalog.schedule_ran("files", "succeeded")
    future = (datetime.now(UTC) + timedelta(days=3)).timestamp()
    with sqlite3.connect(sandbox.state / "catalog.sqlite") as db:
        db.execute("UPDATE schedule_state SET last_run=? WHERE kind='files'", (future,))
    caplog.set_level("INFO", logger="backup_tui")
    sched = Scheduler(eng).start()
    try:
        time.sleep(1)
        assert sched.next_run_times()["files"] is not None
    finally:
        sched.stop(grace=5)
    assert eng.snapshots() == []
    assert any("clock went back" in r.getMessage() for r in caplog.records)


def test_scheduler_lock_is_exclusive(sandbox):
    eng = sandbox.engine(init=True)
    lock = SchedulerLock(eng.config.state_dir).acquire()
    try:
        assert SchedulerLock.holder(eng.config.state_dir) == os.getpid()
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            Scheduler(eng).start()
    finally:
        lock.release()
    assert SchedulerLock.holder(eng.config.state_dir) is None


def test_state_dir_not_writable_is_a_clear_error(sandbox, tmp_path):
    """As root, permissions are dropped with setpriv (no DAC override), as for any user."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's DAC override")
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    os.chmod(sandbox.state, 0o555)
    try:
        env = dict(os.environ)
        proc = subprocess.run(
            ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable,
             "-m", "backup_tui.cli", "--config", str(sandbox.config_path), "--run-scheduler"],
            capture_output=True, env=env, timeout=60)
    finally:
        os.chmod(sandbox.state, 0o755)
    assert proc.returncode != 0
    assert str(sandbox.state).encode() in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_bad_cron_expression_is_exit_2_naming_the_key(sandbox):
    sandbox.extra = schedule_toml(files="61 * * * *")
    sandbox.write_config()
    proc = sandbox.cli("status")
    assert proc.returncode == 2
    assert b"schedule.files" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ notifications
class Hook(BaseHTTPRequestHandler):
    received: list = []
    mode = "ok"

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        if Hook.mode == "hang":
            time.sleep(5)
        self.send_response(500 if Hook.mode == "error" else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    Hook.mode = "ok"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.mark.parametrize("mode", ["ok", "error", "hang"])
def test_failure_notifications_never_fail_the_job(sandbox, webhook, tmp_path, mode, caplog):
    Hook.mode = mode
    out = tmp_path / "cmd.json"
    sandbox.filesets = {"src": [str(sandbox.src)], "gone": [str(tmp_path / "missing")]}
    sandbox.extra = (f'[notify]\nwebhook_url = "{webhook}"\ncommand = "cat > {out}"\n'
                     "timeout_seconds = 1\n")
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    (sandbox.src / "a").write_text("a")
    eng.backup("files", "src")  # success: no notification (on_success = false)
    assert Hook.received == []
    caplog.set_level("WARNING", logger="backup_tui")
    start = time.monotonic()
    with pytest.raises(Exception, match="does not exist"):
        eng.backup("files", "gone")
    assert time.monotonic() - start < 10
    sent = Hook.received[-1]
    assert "files:gone failed" in sent["text"] and sent["job"]["state"] == "failed"
    assert json.loads(out.read_text())["job"]["target"] == "files:gone"
    if mode != "ok":
        assert any("notification failed" in r.getMessage() for r in caplog.records)
    assert sandbox.password not in json.dumps(sent)


# ------------------------------------------------------------------ health, admin
def test_health_reports_reasons_and_exit_codes(sandbox):
    sandbox.extra = "[health]\nmax_age_hours = 1\n"
    sandbox.write_config()
    sandbox.engine(init=True)
    proc = sandbox.cli("health", "--json")
    assert proc.returncode == 1
    assert "files src: no complete backup" in json.loads(proc.stdout)["reasons"]
    (sandbox.src / "a").write_text("a")
    assert sandbox.cli("backup", "files", "src").returncode == 0
    proc = sandbox.cli("health")
    assert proc.returncode == 0 and b"healthy" in proc.stdout


def test_health_and_metrics_over_http(sandbox, tmp_path):
    from engine.sandbox import free_port

    port = free_port()
    sandbox.extra = schedule_toml() + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    sandbox.write_config()
    assert sandbox.cli("init").returncode == 0
    proc = start_daemon(sandbox, tmp_path / "d.log")
    import urllib.error
    import urllib.request

    try:
        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except OSError:
                return None

        status, body = wait_for(lambda: get("/health"), 30)
        assert status == 503 and json.loads(body)["ok"] is False
        status, body = get("/metrics")
        assert status == 200 and b"backup_tui_healthy 0" in body
        req = urllib.request.Request(f"http://127.0.0.1:{port}/health", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=5)
    finally:
        assert stop_daemon(proc) == 0


def test_non_admin_is_read_only():
    """A user outside admin_group: listing works, mutating is refused with a clear message."""
    import shutil
    import tempfile
    from pathlib import Path

    from support import Sandbox, python_for_anyone

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    base = Path(tempfile.mkdtemp(prefix="nonadmin-"))  # reachable by others, unlike tmp_path
    os.chmod(base, 0o755)
    try:
        _non_admin_checks(Sandbox(base), python_for_anyone)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_admin_gate_in_process(sandbox, monkeypatch, capsys):
    """The gate itself, for a user who is neither root nor in admin_group."""
    from backup_tui import cli
    from engine import security

    assert security.is_admin("backup-admins", uid=65534, gids=[65534]) is False
    assert security.is_admin("backup-admins", uid=0, gids=[]) is True
    (sandbox.src / "a").write_text("a")
    sandbox.engine(init=True)
    monkeypatch.setattr(security, "is_admin", lambda group, uid=None, gids=None: False)
    base = ["--config", str(sandbox.config_path)]
    assert cli.main([*base, "list", "--json"]) == 0
    for args in (["backup", "files", "src"], ["schedule", "pause", "files"],
                 ["cleanup"], ["replicate"]):
        capsys.readouterr()
        assert cli.main([*base, *args]) == 1, args
        err = capsys.readouterr().err
        assert "permission denied" in err and "backup-admins" in err, (args, err)


def _non_admin_checks(sandbox, python_for_anyone):
    (sandbox.src / "a").write_text("a")
    sandbox.engine(init=True).backup("files", "src")
    for path in (sandbox.root, sandbox.repo, sandbox.state, sandbox.src):
        for dirpath, _dirs, files in os.walk(path):
            os.chmod(dirpath, 0o777)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o666)
    os.chmod(sandbox.pwfile, 0o644)

    python, path = python_for_anyone()  # the checkout may sit where nobody cannot enter
    env = {**os.environ, "PYTHONPATH": ":".join(path)}

    def as_nobody(*args):
        return subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             python, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
             *args], capture_output=True, timeout=60, cwd="/", env=env)

    listed = as_nobody("list", "--json")
    assert listed.returncode == 0, listed.stderr
    refused = as_nobody("backup", "files", "src")
    assert refused.returncode == 1
    assert b"permission denied" in refused.stderr and b"backup-admins" in refused.stderr
    assert as_nobody("schedule", "pause", "files").returncode == 1


def test_pause_and_resume_are_audited(sandbox):
    eng = sandbox.engine(init=True)
    eng.pause("files")
    assert next(s for s in eng.schedules() if s["kind"] == "files")["next_run"] is None
    eng.pause("files", False)
    assert next(s for s in eng.schedules() if s["kind"] == "files")["next_run"]
    actions = [a["action"] for a in eng.audit_log()]
    assert actions[:2] == ["resume", "pause"]


def test_scheduler_cancels_a_running_scheduled_backup(sandbox):
    """Scheduler.cancel(job id), the catalog's id as the console's jobs screen knows it: the
    scheduled backup ends interrupted, no snapshot, and the schedule runs on."""
    for i in range(12):
        (sandbox.src / f"big{i}.bin").write_bytes(os.urandom(24 << 20))
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    sched = Scheduler(eng).start()
    outcome = []
    try:
        assert sched.cancel("backup-19700101T000000-000000") is False  # no such job
        run = threading.Thread(target=lambda: outcome.append(sched.run_kind("files")))
        run.start()
        job = wait_for(lambda: next((j for j in jobs(sandbox) if j["state"] == "running"),
                                    None), timeout=60, step=0.01)
        assert job["pid"] == os.getpid() and sched.running() == ["files:src"]
        assert sched.cancel(job["id"]) is True
        run.join(120)
        assert not run.is_alive() and outcome == ["failed"]
        assert sched.cancel(job["id"]) is False  # ended: nothing to cancel
        [ended] = jobs(sandbox)
        assert (ended["id"], ended["state"], ended["error"]) == (
            job["id"], "interrupted", "cancelled by request")
        assert eng.snapshots() == []
        st = eng.catalog.schedule_states()["files"]
        assert st["last_result"] == "failed" and "cancelled by request" in st["last_error"]
        for i in range(10):
            (sandbox.src / f"big{i}.bin").unlink()
        assert sched.run_kind("files") == "succeeded"  # the next run happens as usual
    finally:
        sched.stop(grace=5)
    assert [s.source for s in eng.snapshots()] == ["src"]
