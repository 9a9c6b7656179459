"""WAL retention (engine/ops/wal_retention.py): cleanup expires archived WAL older than the
oldest kept base backup of its cluster, never WAL a kept or pinned backup needs, and the
dry run says how much would go. Against a real cluster archiving through wal-push."""

from __future__ import annotations

import json

import pytest
from pitr_support import CLUSTER, Setup

from engine.ops.wal_retention import horizons
from engine.wal import segment_number

KEEP_ONE = ("[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n"
            "keep_monthly = 0\n")



def test_horizon_is_the_oldest_remaining_start_and_unknown_starts_stop_expiry():
    snaps = [
        {"id": "a" * 64, "kind": "cluster", "source": "main",
         "postgres": {"start_wal": "000000010000000000000009"}},
        {"id": "b" * 64, "kind": "cluster", "source": "main",
         "postgres": {"start_wal": "000000020000000000000005"}},
        {"id": "c" * 64, "kind": "cluster", "source": "other", "postgres": {}},
        {"id": "d" * 64, "kind": "db", "source": "main"},
    ]
    bounds, stopped = horizons(snaps)
    assert bounds == {"main": ("000000020000000000000005", 5)}
    assert "other" in stopped and "no start segment" in stopped["other"]


def _backup(s: Setup) -> dict:
    out = json.loads(s.cli("backup", "cluster", CLUSTER, "--json").stdout)
    snap = json.loads(s.cli("show", out["id"], "--json").stdout)
    return snap


def _segments(s: Setup) -> set[str]:
    return {n for n in s.archived() if len(n) == 24}


@pytest.mark.parametrize("setup", [KEEP_ONE], indirect=True)
def test_cleanup_expires_wal_before_the_oldest_kept_base_backup(setup):
    s = setup
    b1 = _backup(s)
    for i in range(3):
        s.pg.psql(f"INSERT INTO t SELECT g, 'more' FROM generate_series({1001 + 3000 * i}, "
                  f"{3000 + 3000 * i}) g")
        s.switch_and_wait()
    b2 = _backup(s)
    s.switch_and_wait()
    start1 = segment_number(b1["postgres"]["start_wal"])
    horizon = b2["postgres"]["start_wal"]
    before = _segments(s)
    old = {n for n in before if segment_number(n) < segment_number(horizon)}
    assert len(old) >= 3 and min(segment_number(n) for n in old) <= start1 + 1

    # with the .backup files (the backup history PostgreSQL archives) below the horizon
    old_all = {n for n in s.archived() if not n.endswith(".history")
               and segment_number(n[:24]) < segment_number(horizon)}
    assert old < old_all
    dry = json.loads(s.cli("cleanup", "--dry-run", "--json").stdout)
    (w,) = dry["wal"]
    assert w["source"] == CLUSTER and w["horizon"] == horizon
    assert w["expired"] == len(old_all) and w["bytes"] > 0
    assert _segments(s) == before  # the dry run deleted nothing
    text = s.cli("cleanup", "--dry-run").stdout
    assert f"wal {CLUSTER}: would expire {len(old_all)} file(s)" in text

    done = json.loads(s.cli("cleanup", "--json").stdout)
    assert done["forgotten"] == [b1["id"]]
    assert done["wal"][0]["expired"] == len(old_all)
    assert _segments(s) == before - old
    assert all(segment_number(n) >= segment_number(horizon) for n in _segments(s))

    # a pinned base backup keeps its WAL, however old
    s.cli("pin", b2["id"])
    s.pg.psql("INSERT INTO t SELECT g, 'late' FROM generate_series(20001, 21000) g")
    s.switch_and_wait()
    b3 = _backup(s)
    s.switch_and_wait()
    kept = _segments(s)
    again = json.loads(s.cli("cleanup", "--json").stdout)
    assert again["forgotten"] == [] and again["wal"][0]["expired"] == 0
    assert _segments(s) == kept
    # and the archive still reaches the newest point from the kept backups
    plan = json.loads(s.cli("pitr-plan", "--cluster", CLUSTER, "--target", "immediate",
                            "--json").stdout)
    assert plan["base_backup"]["id"] == b3["id"]
