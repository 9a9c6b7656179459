"""Engine.history: the dashboard's figures over time, read from a real repository and
catalog (engine/ops/status.py), and the status fields the dashboard reads per source."""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from engine.errors import EngineError
from engine.ops.status import history


def fill(src, n: int, tag: str = "") -> None:
    for i in range(n):
        (src / f"file-{tag}{i}.txt").write_text(f"{tag} line {i}\n" * 400)


@pytest.fixture
def two_backups(sandbox):
    """A files engine with two backups of one fileset, the second adding files."""
    fill(sandbox.src, 4)
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    fill(sandbox.src, 3, tag="more")
    engine.backup("files", "src")
    return engine


def test_history_counts_todays_backups_and_reads_the_size_back(two_backups):
    engine = two_backups
    snaps = engine.snapshots()
    hist = engine.history(days=7)
    assert hist["days"] == 7 and len(hist["daily"]) == 7
    today, yesterday = hist["daily"][-1], hist["daily"][-2]
    assert today["day"] == datetime.now(engine.timezone).date().isoformat()
    assert today["backups"] == 2 and today["failures"] == 0
    assert today["added"] == sum(s.added for s in snaps) > 0
    stored = engine.status()["repository_bytes"]
    assert hist["repository_bytes"] == stored == today["size"]
    # Before the first backup the repository held none of the bytes its snapshots added.
    assert yesterday["size"] == stored - today["added"]
    assert 0 <= yesterday["size"] < today["added"]
    assert all(d["backups"] == 0 and d["added"] == 0 for d in hist["daily"][:-1])


def test_history_lists_each_backup_with_its_duration_and_bytes(two_backups):
    engine = two_backups
    snaps = engine.snapshots()
    backups = engine.history()["backups"]
    assert [b["source"] for b in backups] == ["src", "src"]
    assert [b["added"] for b in backups] == [s.added for s in snaps]
    assert [b["size"] for b in backups] == [s.size for s in snaps]
    assert all(b["kind"] == "files" and b["complete"] for b in backups)
    assert all(isinstance(b["seconds"], float) and b["seconds"] >= 0 for b in backups)
    assert backups[0]["time"] <= backups[1]["time"]


def test_history_days_slide_with_now(two_backups):
    engine = two_backups
    later = datetime.now(UTC) + timedelta(days=3)
    hist = history(engine, days=5, now=later)
    assert [d["backups"] for d in hist["daily"]] == [0, 2, 0, 0, 0]
    assert hist["daily"][1]["size"] == hist["repository_bytes"]
    assert history(engine, days=2, now=later)["backups"] == []  # both outside the window


def test_failed_backup_counts_in_the_day_and_the_status(two_backups, sandbox):
    engine = two_backups
    shutil.rmtree(sandbox.src)
    with pytest.raises(EngineError):
        engine.backup("files", "src")
    assert engine.history(days=1)["daily"][-1]["failures"] == 1
    [entry] = engine.status()["sources"]
    assert entry["failures_24h"] == 1
    assert entry["last_failure"] is not None


def test_drills_of_the_window_oldest_first(two_backups):
    engine = two_backups
    now = time.time()
    for age_days, ok, rto in ((40, True, 50.0), (2, True, 31.5), (1, False, None)):
        engine.catalog.record_drill({
            "id": uuid.uuid4().hex, "kind": "files", "source": "src", "snapshot": None,
            "started": now - age_days * 86400, "finished": now - age_days * 86400 + 30,
            "ok": ok, "rto_seconds": rto, "error": "" if ok else "scratch server died"})
    drills = engine.history(days=30)["drills"]
    assert [(d["ok"], d["rto_seconds"]) for d in drills] == [(True, 31.5), (False, None)]
    assert all(d["kind"] == "files" and d["source"] == "src" for d in drills)


def test_status_says_verified_and_replicas_of_the_newest_backup(two_backups):
    engine = two_backups
    [entry] = engine.status()["sources"]
    assert entry["last_verified"] is None and entry["in_replicas"] == {}
    assert entry["failures_24h"] == 0
    engine.verify()
    [entry] = engine.status()["sources"]
    newest = engine.snapshots()[-1]
    assert entry["last_verified"] == newest.verified is not None
