"""Point-in-time recovery of a [[cluster]] through the daemon's HTTP API: a base backup
triggered over the API, the plan (a viewer may read it), a target past the newest
reachable point refused with that point named, a replace refused without its typed
confirmation, and an executed recovery whose server holds exactly what was committed
before the target (psql on the recovered server, not our own reader).

A real PostgreSQL cluster archiving through ``wal-push`` (the ``setup`` fixture,
tests/pitr_support.py) and a real ``backup-tui --run-scheduler`` process serving the API
over the same repository and state (tests/api_support.py).
"""

from __future__ import annotations

import pytest
from api_support import ApiDaemon, api, schedule_toml
from pitr_support import CLUSTER, mark_time, restored_sql, stop_server


class ClusterDaemon(ApiDaemon):
    """The daemon over the ``setup`` fixture's repository, state and archiving cluster."""

    def __init__(self, setup) -> None:
        self.setup = setup
        super().__init__(setup.root / "api")

    def write_config(self) -> None:
        s = self.setup
        self.config_path.write_text(
            f'[repository]\npath = "{s.repo}"\npassword_file = "{s.pwfile}"\n'
            f'[state]\ndir = "{s.state}"\n'
            f'[[cluster]]\nname = "{CLUSTER}"\ndsn = "{s.pg.dsn()}"\n'
            f'pgdata = "{s.pg.data_dir}"\n' + schedule_toml(self.grace_seconds) + self.api)


@pytest.fixture
def daemon(setup):
    d = ClusterDaemon(setup)
    for name, role in (("mon", "viewer"), ("deploy", "operator"), ("root", "admin")):
        d.create_key(name, role)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_cluster_recovery_to_a_time_through_the_api(setup, daemon):
    s = setup
    with daemon.client("deploy") as deploy, daemon.client("mon") as mon, \
            daemon.client("root") as root:
        r = deploy.post(api("trigger"), json={"source": CLUSTER})
        assert r.status_code == 202, r.text
        backup = daemon.wait_job(mon, r.json()["job_id"], timeout=300)
        assert backup["state"] == "succeeded", backup
        base = backup["result"]["id"]

        s.pg.psql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(1001, 1500) g")
        when = mark_time(s)
        s.pg.psql("UPDATE t SET note = 'CHANGED' WHERE id <= 10")
        s.switch_and_wait()

        # the plan: a viewer reads it; it names the base backup and the WAL it needs
        r = mon.post(api("point-in-time-recovery"), json={"source": CLUSTER,
                                                          "target_time": when})
        assert r.status_code == 200, r.text
        plan = r.json()
        assert plan["feasible"] and plan["gaps"] == []
        assert plan["base_backup"]["id"] == base
        assert plan["newest_reachable"]["time"] >= when

        # past the newest reachable point: refused, naming it
        r = mon.post(api("point-in-time-recovery"), json={
            "source": CLUSTER, "target_time": "2099-01-01T00:00:00Z"})
        assert r.status_code == 409, r.text
        assert "past the newest reachable point" in r.json()["detail"], r.text

        # executing needs an operator; replacing the cluster's own data directory an admin
        # who types its path
        target = s.root / "restored"
        body = {"source": CLUSTER, "target_time": when, "execute": True,
                "pgdata": str(target), "start": True}
        assert mon.post(api("point-in-time-recovery"), json=body).status_code == 403
        r = root.post(api("point-in-time-recovery"),
                      json={**body, "pgdata": str(s.pg.data_dir), "replace": True})
        assert r.status_code == 400 and "confirm" in r.json()["detail"], r.text

        r = deploy.post(api("point-in-time-recovery"), json=body)
        assert r.status_code == 202, r.text
        assert r.headers["location"].endswith(r.json()["job_id"])
        job = daemon.wait_job(mon, r.json()["job_id"], timeout=600)
        out = job.get("result") or {}
        try:
            assert job["state"] == "succeeded", (job, daemon.log_tail())
            assert job["kind"] == "pitr" and out["promoted"] is True
            port = out["port"]
            assert restored_sql(port, "SELECT count(*) FROM t") == "1500"
            assert restored_sql(port, "SELECT count(*) FROM t WHERE note = 'CHANGED'") == "0"
            assert restored_sql(port, "SELECT pg_is_in_recovery()") == "f"
        finally:
            stop_server(out)

    audit = daemon.cli("audit", "--json").stdout
    assert "api:deploy@127.0.0.1" in audit and "api point-in-time-recovery" in audit
