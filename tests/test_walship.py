"""WAL shipping (engine/ops/walship.py): the daemon copies new WAL to every replica within
its interval; status, health and metrics show per cluster and copy the newest archived WAL
(the recovery point). A real cluster archiving through wal-push, replicas on moto_server,
one of them a bucket that does not exist."""

from __future__ import annotations

import json
import time

import pytest
from pitr_support import CLUSTER, Setup

from engine import metrics, wal
from engine.daemon import Scheduler
from engine.ops import walship
from engine.sources import registry


def _wait_for(cond, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _replicas(s: Setup, s3_server, good: str) -> str:
    return (f'[[replica]]\nname = "r1"\nbucket = "{good}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{s3_server.endpoint_url}"\nreplicate_after_backup = false\n'
            f'[[replica]]\nname = "gone"\nbucket = "no-such-bucket-anywhere"\n'
            f'region = "us-east-1"\nendpoint_url = "{s3_server.endpoint_url}"\n'
            f'replicate_after_backup = false\n')


@pytest.mark.parametrize("setup", ["ship_interval_seconds = 1\nwal_max_age_minutes = 30\n"],
                         indirect=True)
def test_daemon_ships_new_wal_within_its_interval_and_status_shows_each_copy(
        setup, s3_server, s3_buckets):
    s = setup
    s.extra += _replicas(s, s3_server, s3_buckets.use1)
    s.write_config()
    s.cli("backup", "cluster", CLUSTER)
    first = s.switch_and_wait()
    eng = s.engine()
    (src,) = [x for x in registry.sources(eng.config) if x.archives_wal]
    assert walship.interval(eng) == 1.0
    r1 = eng.replica_backend("r1")

    def shipped(name: str) -> bool:
        return name in {w.name for w in wal.list_wal(r1, CLUSTER)}

    assert not shipped(first)  # wal-push writes only locally
    sched = Scheduler(eng, poll_seconds=0.5).start()
    try:
        _wait_for(lambda: shipped(first), 20, f"{first} in r1")
        second = s.switch_and_wait()
        t0 = time.monotonic()
        _wait_for(lambda: shipped(second), 20, f"{second} in r1")
        lag = time.monotonic() - t0
    finally:
        sched.stop(grace=5)
    assert lag < 10, f"shipping took {lag:.1f} s with a 1 s interval"

    st = json.loads(s.cli("status", "--json").stdout)
    (entry,) = [x for x in st["sources"] if x["name"] == CLUSTER and x.get("wal")]
    w = entry["wal"]
    assert w["newest"] >= second and w["age_seconds"] < 600
    assert w["replicas"]["r1"]["newest"] == w["newest"]
    assert w["replicas"]["r1"]["behind"] is False and not w["replicas"]["r1"]["error"]
    assert w["replicas"]["gone"]["newest"] is None
    assert "does not exist" in w["replicas"]["gone"]["error"]

    health = s.cli("health", "--json", check=False)
    assert health.returncode == 1
    reasons = json.loads(health.stdout)["reasons"]
    assert any("no WAL shipped to replica gone" in r for r in reasons), reasons
    assert not any("replica r1" in r and "WAL" in r for r in reasons), reasons
    # an hour from now, with nothing archived meanwhile, the recovery point is too old
    later = walship.health_reasons(eng, src, time.time() + 3600)
    assert any("newest archived WAL" in r and "limit 30 min" in r for r in later), later
    assert any("newest WAL in replica r1" in r for r in later), later

    text = metrics.render(eng)
    assert f'backup_tui_wal_newest_archived_timestamp_seconds{{source="{CLUSTER}",copy="r1"}}' \
        in text
    assert f'backup_tui_wal_newest_archived_age_seconds{{source="{CLUSTER}",copy="local"}}' \
        in text


@pytest.mark.parametrize("setup", [""], indirect=True)
def test_no_wal_archived_is_unhealthy_and_replicate_records_the_wal_state(
        setup, s3_server, s3_buckets):
    s = setup
    s.extra += (_replicas(s, s3_server, s3_buckets.use1).split("[[replica]]\nname = \"gone\"")[0]
                + f'[[cluster]]\nname = "idle"\ndsn = "{s.pg.dsn()}"\n'
                f'pgdata = "{s.pg.data_dir}"\n')
    s.write_config()
    eng = s.engine()
    src, idle = [x for x in registry.sources(eng.config) if x.archives_wal]
    assert idle.name == "idle"
    reasons = walship.health_reasons(eng, idle)  # nothing archives into "idle"
    assert reasons == ["cluster idle: no WAL archived (is archive_command set to wal-push?)"]
    s.cli("backup", "cluster", CLUSTER)
    newest = s.switch_and_wait()
    s.cli("replicate")  # a full replicate copies wal/ too and records it
    st = walship.state(s.engine(), src)
    assert st["replicas"]["r1"]["newest"] >= newest
    assert not walship.health_reasons(s.engine(), src)
