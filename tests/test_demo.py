"""The demo (``backup-tui --demo``, backup_tui/demo/): its sandbox with files, the shop
database and the ``main`` cluster archiving WAL through ``wal-push``, the console
running its short schedule, and the sandbox folder removed when the demo ends (on
quit and on Ctrl+C alike, its servers stopped first).

``run_demo`` is the real entry point; only ``run_console`` is replaced, by the same
console run headless under Pilot for a moment. The sandbox is put in a folder of
the test's (``reachable_tempdir`` replaced), reachable by the ``postgres`` OS user
and removed at the end whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import CHEAP_KDF
from test_tui_jobs import until

from backup_tui import demo as demo_module
from backup_tui.app import OWN, BackupConsole
from backup_tui.demo import build_demo, demo_cluster
from backup_tui.demo.data import CLUSTER, DATABASE, SCHEDULE
from engine import wal
from engine.config import load_config
from engine.daemon import SchedulerLock
from engine.errors import EngineError
from engine.facade import Engine
from engine.repo.locks import pid_alive
from engine.sandbox import SandboxError, port_open, reachable_tempdir

SIZE = (100, 30)


@pytest.fixture(autouse=True)
def environment_undone():
    """The demo sets dummy AWS variables and $BACKUP_TUI_SERVER_PYTHON in the process
    environment: put it back as it was."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def base(monkeypatch) -> Path:
    """A folder the postgres OS user can reach; the demo's own temporary folder is made in
    it (``sandbox``). Anything left running in it is stopped, and it is removed."""
    base = reachable_tempdir("backup-tui-demo-test-")
    made = []

    def tempdir(prefix: str) -> Path:
        path = base / "sandbox"
        path.mkdir(mode=0o755)
        path.chmod(0o755)
        made.append(path)
        return path

    monkeypatch.setattr("backup_tui.demo.console.reachable_tempdir", tempdir)
    monkeypatch.delenv(demo_module.DEMO_DIR_ENV, raising=False)
    yield base
    for root in (base / "sandbox", base / "demo"):
        if (root / "config.toml").exists():
            cluster = demo_cluster(root)
            if cluster is not None:
                cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


def wait_for(pred, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_demo_archives_wal_runs_its_schedule_and_removes_its_sandbox(base, monkeypatch,
                                                                      capsys):
    root = base / "sandbox"
    seen: dict = {}

    def headless(engine: Engine, notice=None, run_scheduler=True) -> int:
        config = engine.config
        assert notice is None  # nothing missing: files, database, cluster, replicas
        assert run_scheduler is True  # the console runs the demo's schedule
        assert [fs.name for fs in config.filesets] == ["app-data", "app-config"]
        assert [s.name for s in config.sources if s.section == "database"] == [DATABASE]
        assert [s.name for s in config.sources if s.section == "cluster"] == [CLUSTER]
        assert [r.name for r in config.replicas] == ["us-east", "eu-west"]
        crons = {k: config.schedule.cron(k) for k, _ in SCHEDULE}
        assert crons.pop("drill").endswith("-59/7 * * * *")  # counted from the build
        assert crons == {k: c for k, c in SCHEDULE if k != "drill"}
        assert sorted((s.kind, s.source) for s in engine.snapshots()) == [
            ("cluster", CLUSTER), ("db", DATABASE), ("files", "app-data")]
        # WAL archiving works: the segment a switch closes arrives in the repository.
        cluster = demo_cluster(root)
        assert cluster is not None and cluster.answers()
        seen["postmaster"] = cluster.postmaster_pid()
        seen["s3_port"] = urlsplit(config.replicas[0].endpoint_url).port
        assert cluster.psql("SHOW archive_mode").strip() == "on"
        assert "wal-push %p --cluster main" in cluster.psql("SHOW archive_command")
        segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        wait_for(lambda: segment in {o.name for o in wal.list_wal(engine.backend, CLUSTER)},
                 60, f"{segment} archived")
        # The write load keeps adding rows.
        rows = int(cluster.psql("SELECT count(*) FROM activity", DATABASE))
        wait_for(lambda: int(cluster.psql("SELECT count(*) FROM activity", DATABASE)) > rows,
                 30, "the write load")
        app = BackupConsole(engine, notice, run_scheduler=run_scheduler)

        async def flow():
            async with app.run_test(size=SIZE) as pilot:
                # the sub-title follows once the scheduler's message reaches the screen
                await until(pilot, lambda: "scheduler: this console" in app.sub_title, 30,
                            "own scheduler")
                assert app.scheduler_host.mode == OWN
                assert SchedulerLock.holder(config.state_dir) == os.getpid()
                await pilot.press("j")
                await pilot.pause(0.5)
                await pilot.press("q")
                await until(pilot, lambda: not app.is_running, 30, "quit")

        asyncio.run(flow())
        assert SchedulerLock.holder(config.state_dir) is None
        return 0

    monkeypatch.setattr("backup_tui.app.run_console", headless)
    assert demo_module.run_demo() == 0
    # pg_ctl stop -w returns once postmaster.pid is gone, a moment before the process
    wait_for(lambda: not pid_alive(seen["postmaster"]), 30, "the postmaster gone")
    assert not port_open(seen["s3_port"])
    assert not root.exists()  # the sandbox folder is gone, the folder around it stays
    assert base.is_dir()
    out = capsys.readouterr().out
    assert f"The demo sandbox {root} is removed (its PostgreSQL and S3 servers are stopped)" \
        in out


def test_ctrl_c_removes_the_sandbox_too_and_no_postgres_means_files_only(base, monkeypatch,
                                                                        capsys):
    root = base / "sandbox"

    def no_server(*_args, **_kwargs):
        raise EngineError("PostgreSQL server binaries not found (Debian: apt-get install "
                          "postgresql)")

    def interrupted(engine: Engine, notice=None, run_scheduler=True) -> int:
        assert "not found" in notice and "files only" in notice
        assert [s.section for s in engine.config.sources] == ["fileset", "fileset"]
        assert root.is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "ScratchCluster", no_server)
    monkeypatch.setattr("backup_tui.app.run_console", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_module.run_demo()
    assert not root.exists() and base.is_dir()
    assert f"The demo sandbox {root} is removed" in capsys.readouterr().out


def test_no_python_for_the_server_user_means_no_cluster_and_says_why(base, monkeypatch):
    def nothing_runs(owner, bundle_dir=None):
        raise SandboxError(f"OS user {owner} cannot run backup-tui (no python here)")

    monkeypatch.setattr(demo_module, "server_python", nothing_runs)
    demo = build_demo(base / "demo", kdf=CHEAP_KDF, replicas=False)
    try:
        assert demo.cluster is not None
        assert demo.note.startswith("The demo's PostgreSQL has no WAL archiving (OS user ")
        assert "no point-in-time recovery" in demo.note
        config = load_config(demo.config_path)
        assert sorted(s.section for s in config.sources) == ["database", "fileset", "fileset"]
        assert demo.cluster.psql("SHOW archive_mode").strip() == "off"
        assert sorted(s.kind for s in Engine(config).snapshots()) == ["db", "files"]
    finally:
        demo.remove()
    assert not (base / "demo").exists()
