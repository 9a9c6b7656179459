"""Restore drills against real PostgreSQL: the newest backup restored into a throwaway
server, validated, timed, torn down and recorded (engine/ops/drill.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import Sandbox, server_python

from engine.events import Event
from engine.sandbox import reachable_tempdir

SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users(id), total int);
CREATE INDEX orders_user ON orders(user_id);
CREATE SCHEMA "odd schema";
CREATE TABLE "odd schema"."a table" (x int);
INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 300) g;
INSERT INTO orders (user_id, total) SELECT 1 + (g % 300), g FROM generate_series(1, 700) g;
"""


@pytest.fixture
def shop(pg_cluster):
    """A database whose tables belong to a role of its own (the drill must apply the saved
    globals for the restore to succeed)."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    owner = f"owner_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql(f"CREATE ROLE {owner}")
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA + f"ALTER TABLE orders OWNER TO {owner};", name)
    return name


def configure(sandbox: Sandbox, pg_cluster, shop: str, extra: str = "") -> Sandbox:
    sandbox.extra = (f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(shop)}"\n'
                     'drill_tables = ["users", "public.orders"]\n' + extra)
    sandbox.write_config()
    sandbox.db = shop
    return sandbox


@pytest.fixture
def drill_sandbox(sandbox, pg_cluster, shop):
    return configure(sandbox, pg_cluster, shop)


def leftovers(eng) -> list[str]:
    """What drills left: scratch folders under state/drills, and in the temp directory."""
    drills = eng.config.state_dir / "drills"
    here = sorted(os.listdir(drills)) if drills.exists() else []
    tmp = [p for p in os.listdir("/tmp") if p.startswith("backup-tui-drill-")]
    return here + tmp


def test_db_drill_restores_validates_and_records(drill_sandbox, pg_cluster):
    eng = drill_sandbox.engine(init=True)
    snap = eng.backup("db", "shop").id
    before = set(leftovers(eng))
    events: list[Event] = []
    result = eng.drill("db", "shop", events.append)
    assert result.ok, result.error
    assert result.snapshot == snap
    assert result.rto_seconds is not None and 0 < result.rto_seconds < 300
    assert result.rows == {"users": 300, "public.orders": 700}
    checks = {c["name"]: c for c in result.checks}
    assert [c["name"] for c in result.checks] == ["restore", "connect", "tables", "rows",
                                                  "amcheck", "teardown"]
    assert all(c["ok"] for c in result.checks)
    # the archive's three tables, the one with spaces in its names included
    assert "3 of the 3 tables" in checks["tables"]["detail"]
    assert not checks["amcheck"].get("skipped")
    assert "btree index" in checks["amcheck"]["detail"]  # users_pkey, orders_pkey, ...
    # scratch space gone, no server left on it
    scratch = Path(result.details["scratch"])
    assert not scratch.exists()
    assert set(leftovers(eng)) <= before
    assert {e.phase for e in events} >= {"initdb", "restore", "validate", "teardown"}
    # recorded: catalog, job, audit
    rec = eng.drills()[0]
    assert rec["id"] == result.id and rec["ok"] and rec["snapshot"] == snap
    assert rec["rows"] == {"users": 300, "public.orders": 700}
    job = eng.catalog.job(result.id)
    assert job["kind"] == "drill" and job["state"] == "succeeded"
    audit = eng.audit_log(5)[0]
    assert audit["action"] == "drill" and audit["outcome"] == "succeeded"
    assert audit["snapshots"] == [snap]
    # the source database is untouched and the real server has no stray database
    assert pg_cluster.psql("SELECT count(*) FROM orders", drill_sandbox.db).strip() == "700"


def test_status_health_and_metrics_show_the_drill(drill_sandbox):
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    proc = drill_sandbox.cli("drill", "db", "shop", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["rto_seconds"] > 0 and out["rows"]["users"] == 300
    assert out["started"].endswith("+00:00")
    proc = drill_sandbox.cli("drill", "all", "--json")  # a second: the trend grows
    assert proc.returncode == 0, proc.stderr
    (second,) = json.loads(proc.stdout)  # every source with drills: the database
    assert second["kind"] == "db" and second["ok"]
    st = json.loads(drill_sandbox.cli("status", "--json").stdout)
    (src,) = [s for s in st["sources"] if s["kind"] == "db"]
    assert src["drill"]["last"]["ok"] and src["drill"]["last"]["error"] is None
    assert src["drill"]["last"]["id"] == second["id"]
    assert len(src["drill"]["rto_trend"]) == 2 and all(x > 0 for x in src["drill"]["rto_trend"])
    assert src["drill"]["max_age_hours"] == 192
    assert [s for s in st["sources"] if s["kind"] == "files"][0].get("drill") is None
    text = drill_sandbox.cli("status").stdout.decode()
    assert "last drill" in text and "RTO trend" in text
    health = drill_sandbox.cli("health", "--json")
    assert json.loads(health.stdout)["reasons"] == ["files src: no complete backup"]
    eng.backup("files", "src")
    health = drill_sandbox.cli("health", "--json")
    assert json.loads(health.stdout)["reasons"] == [] and health.returncode == 0
    from engine import metrics

    prom = metrics.render(drill_sandbox.engine())
    assert 'backup_tui_drill_ok{kind="db",source="shop"} 1' in prom
    assert 'backup_tui_drill_rto_seconds{kind="db",source="shop"}' in prom


def test_server_killed_mid_drill_fails_it_and_removes_scratch(drill_sandbox):
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    killed = []

    def kill_at_validation(ev: Event) -> None:
        if ev.phase == "validate" and not killed:
            data = ev.message.rsplit("scratch data directory ", 1)[1].rstrip(")")
            pid = int((Path(data) / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            for _ in range(100):  # until the postmaster is gone
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    result = eng.drill("db", "shop", kill_at_validation)
    assert killed
    assert not result.ok and result.rto_seconds is None
    assert "scratch server stopped during validation" in result.error, result.error
    assert not Path(result.details["scratch"]).exists()
    assert result.checks[-1]["name"] == "teardown" and result.checks[-1]["ok"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    job = eng.catalog.job(result.id)
    assert job["state"] == "failed" and "scratch server" in job["error"]
    health = eng.health()
    assert not health["ok"]
    assert any("db shop: last restore drill failed" in r for r in health["reasons"])
    from engine import metrics

    assert 'backup_tui_drill_ok{kind="db",source="shop"} 0' in metrics.render(eng)


def test_unreadable_snapshot_fails_the_drill_exit_1(drill_sandbox):
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    before = set(leftovers(eng))
    packs = [p for p in (drill_sandbox.repo / "data").rglob("*") if p.is_file()]
    assert packs
    for p in packs:  # every pack damaged: the dump cannot be read back
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    proc = drill_sandbox.cli("drill", "db", "shop")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "drill db:shop failed" in err and "Traceback" not in err
    assert "FAILED" in proc.stdout.decode()
    rec = eng.drills()[0]
    assert not rec["ok"] and "authentication failed" in rec["error"], rec["error"]
    assert set(leftovers(eng)) <= before
    health = drill_sandbox.cli("health")
    assert health.returncode == 1 and b"last restore drill failed" in health.stdout


def test_no_backup_is_a_failed_drill(drill_sandbox):
    eng = drill_sandbox.engine(init=True)
    result = eng.drill("db", "shop")
    assert not result.ok and "no complete backup of database shop" in result.error
    assert eng.drills()[0]["ok"] is False


def test_drill_of_a_kind_without_drills_is_usage_error(drill_sandbox):
    proc = drill_sandbox.cli("drill", "files", "src")
    assert proc.returncode == 2 and b"invalid choice" in proc.stderr


def test_scheduled_drill_runs_and_records(drill_sandbox):
    from engine.daemon import Scheduler

    drill_sandbox.extra += '[schedule]\ndrill = "0 5 * * sat"\n'
    drill_sandbox.write_config()
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    sched = Scheduler(eng)
    assert [t for t, _ in sched._targets("drill")] == ["drill db:shop"]
    assert sched.run_kind("drill", "run now") == "succeeded"
    (rec,) = eng.drills()
    assert rec["ok"] and rec["rto_seconds"] > 0
    st = eng.catalog.schedule_states()["drill"]
    assert st["last_result"] == "succeeded"
    assert {s["kind"] for s in eng.schedules()} >= {"drill"}
    # a failing drill is a failed scheduled run, with the reason
    for p in (drill_sandbox.repo / "snapshots").iterdir():
        p.unlink()
    assert sched.run_kind("drill", "run now") == "failed"
    st = eng.catalog.schedule_states()["drill"]
    assert "drill failed: no complete backup" in st["last_error"]


def test_health_limits(drill_sandbox):
    """Never drilled: no drill reason; a drill older than the limit (default 192 h, per
    source drill_max_age_hours) fails health."""
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    assert not [r for r in eng.health()["reasons"] if "drill" in r]
    assert eng.status()["sources"][0]["drill"] == {"last": None, "rto_trend": [],
                                                   "max_age_hours": 192}
    old = time.time() - 200 * 3600
    eng.catalog.record_drill({"id": "drill-old", "kind": "db", "source": "shop",
                              "snapshot": None, "started": old, "finished": old + 10,
                              "ok": True, "rto_seconds": 9.5, "error": ""})
    reasons = [r for r in eng.health()["reasons"] if "drill" in r]
    assert reasons == ["db shop: last restore drill is 200.0 h old (limit 192 h)"]
    drill_sandbox.extra = drill_sandbox.extra.replace(
        "drill_tables", "drill_max_age_hours = 300\ndrill_tables")
    drill_sandbox.write_config()
    eng = drill_sandbox.engine()
    assert not [r for r in eng.health()["reasons"] if "drill" in r]  # 200 h < 300 h
    assert eng.status()["sources"][0]["drill"]["rto_trend"] == [9.5]


def test_scratch_under_the_state_dir_and_leftovers_of_a_killed_drill(pg_cluster, shop):
    """A state directory the postgres user can reach holds the scratch space; what a drill
    whose process died left (its server and folder) is removed by the next drill."""
    root = reachable_tempdir("drill-sandbox-")
    try:
        sb = configure(Sandbox(root), pg_cluster, shop)
        eng = sb.engine(init=True)
        eng.backup("db", "shop")
        drills = sb.state / "drills"
        drills.mkdir()
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = drills / "drill-stale"
        (stale / "pg").mkdir(parents=True)
        (stale / "pg" / "junk").write_text("x")
        (drills / "drill-stale.json").write_text(json.dumps({
            "job": "drill-stale", "pid": dead.pid, "pid_start": "1", "host": os.uname()[1],
            "scratch": str(stale), "servers": [str(stale / "pg")]}))
        result = eng.drill("db", "shop")
        assert result.ok, result.error
        assert Path(result.details["scratch"]).parent == drills
        assert "scratch_note" not in result.details
        assert sorted(os.listdir(drills)) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_unreachable_state_dir_uses_a_temp_folder_and_says_so(drill_sandbox):
    """pytest's folders are 0700: as root, the postgres user cannot reach the state dir."""
    eng = drill_sandbox.engine(init=True)
    eng.backup("db", "shop")
    result = eng.drill("db", "shop")
    assert result.ok, result.error
    if os.geteuid() == 0:
        assert "cannot be reached by the OS user 'postgres'" in result.details["scratch_note"]
        assert Path(result.details["scratch"]).name.startswith("backup-tui-drill-")
    else:  # the server runs as we do
        assert "scratch_note" not in result.details
    assert not Path(result.details["scratch"]).exists()


# ------------------------------------------------------------------ cluster drills
class ClusterSetup:
    """A repository and state the postgres OS user may write (it runs wal-push), and a
    PostgreSQL cluster archiving into it through the CLI's wal-push."""

    def __init__(self, root: Path):
        import pwd

        from engine.ops import pitr
        from engine.sandbox import PgCluster

        self.root = root
        self.sb = Sandbox(root)
        self.pg = PgCluster.create(root / "pg")
        gid = pwd.getpwnam("postgres").pw_gid
        for d in (self.sb.repo, self.sb.state):  # the shared layout of the README
            d.mkdir()
            os.chown(d, -1, gid)
            os.chmod(d, 0o2770)
        os.chown(self.sb.pwfile, -1, gid)
        os.chmod(self.sb.pwfile, 0o640)
        self.sb.extra = (f'[[cluster]]\nname = "main"\ndsn = "{self.pg.dsn()}"\n'
                         f'pgdata = "{self.pg.data_dir}"\ndrill_delay_minutes = 1\n'
                         'drill_tables = ["t", "postgres.public.t"]\n')
        self.sb.write_config()
        self.sb.engine(init=True)
        server_python()  # $BACKUP_TUI_SERVER_PYTHON: what command_python finds
        python = " ".join(pitr.command_python("postgres"))
        push = (f"{python} -m backup_tui.cli --config {self.sb.config_path} wal-push %p "
                "--cluster main")
        self.pg.psql("ALTER SYSTEM SET archive_mode = on")
        self.pg.psql(f"ALTER SYSTEM SET archive_command = '{push}'")
        self.pg.restart()

    def switch_and_wait(self, timeout: float = 60) -> None:
        from engine import wal

        seg = self.pg.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = {o.name for o in wal.list_wal(self.sb.engine().backend, "main")}
            if seg in names:
                return
            time.sleep(0.2)
        raise AssertionError(f"{seg} not archived in {timeout} s:\n{self.pg.log_tail()}")


@pytest.fixture
def cluster_setup():
    if os.geteuid() != 0:
        pytest.fail("cluster drills run PostgreSQL as the postgres OS user: run as root")
    root = reachable_tempdir("drill-cluster-")
    setup = None
    try:
        setup = ClusterSetup(root)
        yield setup
    finally:
        if setup is not None:
            setup.pg.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_cluster_drill_recovers_to_now_minus_the_delay(cluster_setup):
    s = cluster_setup
    s.pg.psql("CREATE TABLE t (id int PRIMARY KEY, note text)")
    s.pg.psql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g")
    eng = s.sb.engine()
    backup = eng.backup("cluster", "main")
    s.pg.psql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(1001, 1200) g")
    s.switch_and_wait()
    time.sleep(63)  # drill_delay_minutes = 1: the target is a minute ago, after the rows above
    s.pg.psql("INSERT INTO t SELECT g, 'too late' FROM generate_series(1201, 1300) g")
    s.switch_and_wait()  # WAL past the target is archived: the target is reachable
    result = eng.drill("cluster", "main")
    assert result.ok, result.error
    assert result.snapshot == backup.id
    assert result.rows == {"t": 1200, "postgres.public.t": 1200}  # not the late rows
    assert [c["name"] for c in result.checks] == ["restore", "connect", "tables", "rows",
                                                  "amcheck", "teardown"]
    assert all(c["ok"] for c in result.checks)
    assert result.rto_seconds and result.details["recovery"]["seconds_to_promotion"] > 0
    scratch = Path(result.details["scratch"])
    assert scratch.parent == s.sb.state / "drills" and not scratch.exists()
    assert os.listdir(s.sb.state / "drills") == []
    assert not [p for p in os.listdir("/tmp") if p.startswith(f"backup-tui-drill-{result.id}")]
    st = eng.status()
    (src,) = [x for x in st["sources"] if x["kind"] == "cluster"]
    assert src["drill"]["last"]["ok"] and src["drill"]["max_age_hours"] == 192
    assert s.pg.psql("SELECT count(*) FROM t").strip() == "1300"  # the source untouched
