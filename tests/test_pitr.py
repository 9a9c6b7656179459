"""Point-in-time recovery: ``pitr-plan`` and ``restore pitr`` (engine/ops/pitr.py).

Real parts only: a PostgreSQL cluster archiving through the CLI's ``wal-push``, base
backups through ``backup cluster``, recovery through ``wal-fetch`` as the
restore_command of a server started by ``restore pitr --start``; the replica is a
moto_server bucket. THE test of the issue's "done when" is
``test_recover_to_a_time_locally_and_from_a_replica_alone``.
"""

from __future__ import annotations

import json
import pwd
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pitr_support import CLUSTER, mark_time, restored_sql, stop_server

from engine.errors import EngineError, UsageError
from engine.ops import pitr
from engine.sandbox import PgCluster


# ------------------------------------------------------------------- pure parts
def test_targets_parse_and_become_recovery_settings():
    berlin = ZoneInfo("Europe/Berlin")
    t = pitr.Target.parse("time", "2026-11-30T07:00:00", berlin)
    assert t.value == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # read in the schedule's zone
    assert t.settings() == [("recovery_target_time", "2026-11-30 06:00:00.000000+00"),
                            ("recovery_target_inclusive", "true")]
    t = pitr.Target.parse("time", "2026-11-30T07:00:00+00:00", berlin, inclusive=False)
    assert t.value.hour == 7 and ("recovery_target_inclusive", "false") in t.settings()
    assert pitr.Target.parse("lsn", "1/3000028", berlin).value == (1 << 32) | 0x3000028
    assert pitr.Target.parse("lsn", "1/3000028", berlin).settings()[0] == \
        ("recovery_target_lsn", "1/3000028")
    assert pitr.Target.parse("xid", "1234", berlin).settings()[0] == ("recovery_target_xid",
                                                                        "1234")
    assert pitr.Target.parse("name", "before-migration", berlin).settings()[0] == \
        ("recovery_target_name", "before-migration")
    assert pitr.Target.parse("immediate", None, berlin).settings() == \
        [("recovery_target", "immediate")]
    for kind, bad in [("time", "yesterday"), ("lsn", "3000028"), ("lsn", "0/xyz"),
                      ("xid", "-5"), ("xid", "12a"), ("name", "x" * 64), ("name", ""),
                      ("when", "now")]:
        with pytest.raises(UsageError):
            pitr.Target.parse(kind, bad, berlin)


def test_segment_names_and_history_files():
    assert pitr.segment_name(1, 3) == "000000010000000000000003"
    assert pitr.segment_name(2, 256 + 5) == "000000020000000100000005"
    assert pitr.parse_segment("000000020000000100000005") == (2, 261)
    assert pitr.parse_segment("00000002.history") is None
    assert pitr.parse_segment("000000010000000000000002.00000028.backup") is None
    assert pitr.format_lsn(pitr.parse_lsn("a/FF000028")) == "A/FF000028"
    text = "1\t0/5000098\tno recovery target specified\n\n2\t0/7000000\tbefore 2026\n"
    assert pitr.parse_history(text) == [(1, 0x5000098), (2, 0x7000000)]
    with pytest.raises(EngineError):
        pitr.parse_history("1 nonsense\n")
    # the timeline each segment is read from: the newest whose switch is at or before it
    chain = [(1, 0), (2, 5), (3, 7)]
    assert [pitr._timeline_for(chain, s) for s in (2, 4, 5, 6, 7, 9)] == [1, 1, 2, 2, 3, 3]


def test_recovery_settings_are_quoted_for_postgresql(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postgresql.auto.conf").write_text("archive_command = 'old'\n")
    (pgdata / "standby.signal").touch()
    settings = [("restore_command", "python -m x --config '/a b/c' wal-fetch %f %p"),
                ("recovery_target_name", "it's \\ here"), ("archive_mode", "off")]
    pitr.write_recovery(pgdata, settings, None)
    text = (pgdata / "postgresql.auto.conf").read_text()
    assert text.startswith("archive_command = 'old'\n")  # kept; the later lines win
    assert "restore_command = 'python -m x --config ''/a b/c'' wal-fetch %f %p'" in text
    assert "recovery_target_name = 'it''s \\\\ here'" in text
    assert (pgdata / "recovery.signal").exists()
    assert not (pgdata / "standby.signal").exists()
    assert oct((pgdata / "postgresql.auto.conf").stat().st_mode & 0o777) == "0o600"


# --------------------------------------------------------------- THE done-when
@pytest.mark.parametrize("setup", [""], indirect=True)
def test_recover_to_a_time_locally_and_from_a_replica_alone(setup, s3_buckets, s3_server):
    s = setup
    s.extra = (f'[[replica]]\nname = "r1"\nbucket = "{s3_buckets.use1}"\n'
               f'region = "us-east-1"\nendpoint_url = "{s3_server.endpoint_url}"\n')
    s.write_config()
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(1001, 1500) g")
    when = mark_time(s)
    s.pg.psql("UPDATE t SET note = 'CHANGED' WHERE id <= 10")
    s.pg.psql("CREATE TABLE later (x int)")
    s.switch_and_wait()

    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--json").stdout)
    assert plan["feasible"] and plan["gaps"] == []
    places = {p["name"]: p for p in plan["places"]}
    assert places["local"]["complete"] and places["local"]["reads"]
    # the backup's replication shipped the WAL there was; the newer is not there yet
    assert not places["r1"]["complete"] and plan["wal"]["last"] in places["r1"]["missing"]
    assert plan["newest_reachable"]["time"] >= when

    out: dict = {}
    try:
        res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", when,
                    "--pgdata", str(s.root / "restored"), "--start", "--json")
        out = json.loads(res.stdout)
        assert out["promoted"] is True and out["seconds_to_promotion"] > 0
        port = out["port"]
        assert restored_sql(port, "SELECT count(*) FROM t") == "1500"
        assert restored_sql(port, "SELECT count(*) FROM t WHERE note = 'CHANGED'") == "0"
        assert restored_sql(port, "SELECT to_regclass('later') IS NULL") == "t"
        assert restored_sql(port, "SELECT pg_is_in_recovery()") == "f"
        assert restored_sql(port, "SHOW archive_mode") == "off"
    finally:
        stop_server(out)
    # the next plan estimates from that restore; once a drill ran, from the drills
    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--json").stdout)
    assert plan["estimate_basis"] == "median of the last 1 point-in-time restore(s)"
    assert plan["estimate_seconds"] > 0
    s.engine().catalog.record_drill({"id": "d1", "kind": "cluster", "source": CLUSTER,
                                     "started": time.time(), "ok": True, "rto_seconds": 42.0})
    plan = s.engine().pitr_plan(CLUSTER, s.engine().pitr_target("time", when))
    assert (plan.estimate_seconds, plan.estimate_basis) == \
        (42.0, "median RTO of the last 1 drill(s)")

    # every segment in the replica once replicated
    s.cli("replicate")
    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--json").stdout)
    assert all(p["complete"] for p in plan["places"]), plan["places"]

    # the same from the S3 replica alone: the local repository and state are gone
    s.pg.stop()  # nothing archives into the repository any more
    shutil.rmtree(s.repo)
    shutil.rmtree(s.state)
    assert not s.repo.exists()
    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--replica", "r1", "--json").stdout)
    assert plan["feasible"], plan
    out = {}
    try:
        res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", when,
                    "--pgdata", str(s.root / "from-replica"), "--start", "--replica", "r1",
                    "--json")
        out = json.loads(res.stdout)
        port = out["port"]
        assert out["promoted"] and out["replica"] == "r1"
        assert out["settings"]["restore_command"].endswith(" --cluster main --replica r1")
        assert restored_sql(port, "SELECT count(*) FROM t") == "1500"
        assert restored_sql(port, "SELECT count(*) FROM t WHERE note = 'CHANGED'") == "0"
        assert restored_sql(port, "SELECT to_regclass('later') IS NULL") == "t"
    finally:
        stop_server(out)
    assert not s.repo.exists()  # wal-fetch read the replica, never made a local repository


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("setup", [""], indirect=True)
def test_bad_targets_missing_wal_and_bad_data_directories(setup):
    s = setup
    eng = s.engine()
    too_early = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t VALUES (5001, 'x')")
    for _ in range(3):
        s.pg.psql("INSERT INTO t VALUES ((SELECT max(id) + 1 FROM t), 'y')")
        newest = s.switch_and_wait()

    # a target before the oldest base backup
    res = s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", too_early, check=False)
    assert res.returncode == 1 and "before the oldest base backup" in res.stderr

    # a target after the newest archived WAL: refused, the point named
    future = "2099-01-01T00:00:00+00:00"
    res = s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", future, check=False)
    assert res.returncode == 1
    assert "past the newest reachable point" in res.stderr and newest in res.stderr
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", future,
                "--pgdata", str(s.root / "never"), check=False)
    assert res.returncode == 1 and "past the newest reachable point" in res.stderr
    assert not (s.root / "never").exists()
    res = s.cli("pitr-plan", "--cluster", CLUSTER, "--target-lsn", "FF/0", check=False)
    assert res.returncode == 1 and "past the newest reachable point" in res.stderr

    # a target reachable now: immediate and the newest time
    plan = eng.pitr_plan(CLUSTER, eng.pitr_target("immediate", None))
    assert plan.feasible and plan.segments[0] == plan.postgres["start_wal"]
    now = datetime.now(UTC).isoformat()
    plan = eng.pitr_plan(CLUSTER, eng.pitr_target("time", now))
    assert not plan.feasible  # nothing archived at or after now
    middle_plan = eng.pitr_plan(CLUSTER, eng.pitr_target("name", "anything"))
    assert middle_plan.feasible and middle_plan.segments[-1] == newest

    # a segment missing in the middle: the plan names it, restore refuses
    segs = middle_plan.segments
    assert len(segs) >= 3
    gone = segs[len(segs) // 2]
    eng.backend.delete(f"wal/{CLUSTER}/{gone[:8]}/{gone}")
    res = s.cli("pitr-plan", "--cluster", CLUSTER, "--target-name", "x", "--json",
                check=False)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert gone in doc["gaps"] and not doc["feasible"]
    assert gone in doc["places"][0]["missing"]
    assert doc["newest_reachable"]["wal"] == segs[segs.index(gone) - 1]
    assert gone in res.stderr
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-name", "x",
                "--pgdata", str(s.root / "gap"), check=False)
    assert res.returncode == 1 and gone in res.stderr and not (s.root / "gap").exists()

    # data directories: not empty; in use; the cluster's own without --replace
    full = s.root / "full"
    full.mkdir()
    (full / "somefile").write_text("x")
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target", "immediate",
                "--pgdata", str(full), check=False)
    assert res.returncode == 1 and "not empty" in res.stderr
    assert (full / "somefile").read_text() == "x"
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target", "immediate",
                "--pgdata", str(s.pg.data_dir), check=False)
    assert res.returncode == 1 and "in use" in res.stderr
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target", "immediate",
                "--pgdata", str(s.pg.data_dir), "--replace", check=False)
    assert res.returncode == 1 and "in use" in res.stderr
    assert s.pg.answers()
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target", "immediate",
                "--pgdata", str(full), "--replace", check=False)
    assert res.returncode == 2 and "--replace only" in res.stderr


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_replace_moves_the_stopped_cluster_aside_and_recovers_in_place(setup):
    s = setup
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t VALUES (7001, 'kept')")
    s.pg.psql("SELECT pg_create_restore_point('before-drop')")
    s.pg.psql("DROP TABLE t")
    s.switch_and_wait()
    s.pg.stop()
    res = s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-name", "before-drop",
                "--pgdata", str(s.pg.data_dir), check=False)
    assert res.returncode == 1 and "--replace" in res.stderr
    out: dict = {}
    try:
        out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-name",
                               "before-drop", "--pgdata", str(s.pg.data_dir), "--replace",
                               "--start", "--json").stdout)
        aside = Path(out["moved_aside"])
        assert aside.name.startswith("data.before-pitr-") and (aside / "PG_VERSION").exists()
        assert pwd.getpwuid(s.pg.data_dir.stat().st_uid).pw_name == "postgres"
        assert oct(s.pg.data_dir.stat().st_mode & 0o777) == "0o700"
        assert restored_sql(out["port"], "SELECT count(*) FROM t WHERE id = 7001") == "1"
        assert "before-drop" in out.get("stopped", "")
    finally:
        stop_server(out)


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_wal_of_another_cluster_is_refused(setup):
    """A base backup whose system identifier differs from the archive's WAL."""
    s = setup
    s.cli("backup", "cluster", CLUSTER)
    s.switch_and_wait()
    other = PgCluster.create(s.root / "other")
    try:
        s.pg.stop()
        # the same [[cluster]] name now points at another server: its base backup does
        # not belong to the WAL archived so far
        first = s.pg
        s.pg = other
        s.write_config()
        s.cli("backup", "cluster", CLUSTER)
        s.pg = first
        res = s.cli("pitr-plan", "--cluster", CLUSTER, "--target", "immediate", check=False)
        assert res.returncode == 1
        assert "different clusters" in res.stderr and "database system" in res.stderr
    finally:
        other.destroy()


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_recovery_follows_a_timeline_switch(setup):
    """Recover in place to a restore point (timeline 2 begins), archive on the new
    timeline, then recover a new copy to a time on timeline 2 from the timeline-1 base
    backup: the plan names the switch, the copy holds timeline 2's rows, not the
    abandoned branch's."""
    s = setup
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t VALUES (8001, 'A')")
    s.pg.psql("SELECT pg_create_restore_point('rp')")
    s.pg.psql("INSERT INTO t VALUES (8002, 'B abandoned')")
    s.switch_and_wait()
    s.pg.stop()
    out: dict = {}
    try:
        out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-name", "rp",
                               "--pgdata", str(s.pg.data_dir), "--replace", "--start",
                               "--json").stdout)
        assert out.get("timeline") == 2
    finally:
        stop_server(out)
    assert "port" not in out["settings"]  # a port chosen for --start is not kept
    assert "archive_mode" not in out["settings"]  # in place: the cluster archives on
    s.pg.start()
    assert s.pg.psql("SELECT count(*) FROM t WHERE id IN (8001, 8002)").strip() == "1"
    s.pg.psql("INSERT INTO t VALUES (8003, 'C on timeline 2')")
    when = mark_time(s)
    s.pg.psql("INSERT INTO t VALUES (8004, 'D after the target')")
    s.switch_and_wait()
    assert "00000002.history" in s.archived()

    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target-time", when,
                            "--json").stdout)
    assert plan["feasible"], plan
    assert [(x["parent"], x["timeline"]) for x in plan["timeline_switches"]] == [(1, 2)]
    assert plan["wal"]["first"].startswith("00000001")
    assert plan["wal"]["last"].startswith("00000002")
    out = {}
    try:
        out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, "--target-time", when,
                               "--pgdata", str(s.root / "tl2"), "--start", "--json").stdout)
        rows = restored_sql(out["port"], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t "
                         "WHERE id > 8000")
        assert rows == "8001,8003"
        assert out.get("timeline") == 3
    finally:
        stop_server(out)


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_recover_to_an_lsn_and_to_a_transaction(setup):
    s = setup
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t VALUES (9001, 'before the lsn')")
    lsn = s.pg.psql("SELECT pg_current_wal_lsn()").strip()
    xid = s.pg.psql("BEGIN; INSERT INTO t VALUES (9002, 'the xid'); SELECT txid_current(); "
                    "COMMIT;").strip()
    s.pg.psql("INSERT INTO t VALUES (9003, 'after the xid')")
    s.switch_and_wait()
    text = s.cli("pitr-plan", "--cluster", CLUSTER, "--target-xid", xid).stdout
    lines = text.splitlines()
    assert lines[0] == f"cluster {CLUSTER}: recover to xid {xid}"
    assert lines[1].split()[:2] == ["base", "backup"] and lines[-1] == "  feasible"
    assert any(line.split()[0] == "local" and line.endswith("all present") for line in lines)
    for args, expected in [(["--target-lsn", lsn, "--exclusive"], "9001"),
                           (["--target-xid", xid], "9001,9002")]:
        plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, *args, "--json").stdout)
        assert plan["feasible"] and plan["target"]["inclusive"] == ("--exclusive" not in args)
        out: dict = {}
        try:
            out = json.loads(s.cli("restore", "pitr", "--cluster", CLUSTER, *args, "--pgdata",
                                   str(s.root / f"to-{args[0][2:]}"), "--start",
                                   "--json").stdout)
            rows = restored_sql(out["port"], "SELECT string_agg(id::text, ',' ORDER BY id) "
                             "FROM t WHERE id > 9000")
            assert rows == expected, (args, out.get("stopped"))
        finally:
            stop_server(out)


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_recovery_that_cannot_reach_the_target_fails_with_the_server_log(setup):
    """The plan was feasible, then a segment it needs went missing: recovery does not
    pretend. The server stops short of the target, restore fails with the log's last
    lines, the server and its folders are gone, the data directory stays for a look."""
    s = setup
    eng = s.engine()
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t VALUES (9501, 'x')")
    s.switch_and_wait()
    s.pg.psql("INSERT INTO t VALUES (9502, 'y')")
    when = mark_time(s)
    s.pg.psql("INSERT INTO t VALUES (9503, 'z')")
    s.switch_and_wait()
    plan = eng.pitr_plan(CLUSTER, eng.pitr_target("time", when))
    assert plan.feasible
    gone = plan.segments[-1]
    eng.backend.delete(f"wal/{CLUSTER}/{gone[:8]}/{gone}")
    before = set(Path(tempfile.gettempdir()).glob("backup-tui-pitr-*"))
    pgdata = s.root / "short"
    with eng._reading("test", plan.snapshot["id"]):
        with pytest.raises(EngineError) as err:
            pitr.restore(eng, plan, pgdata, start=True, wait_seconds=120)
    text = str(err.value)
    assert "stopped during recovery" in text and "recovery ended before" in text, text
    assert "server log's last lines" in text and "left as it is" in text
    assert (pgdata / "PG_VERSION").exists() and not (pgdata / "postmaster.pid").exists()
    assert set(Path(tempfile.gettempdir()).glob("backup-tui-pitr-*")) == before
