"""cleanup (retention + prune) through the facade and the CLI, on the local repository and
on S3 replicas; pins; cleanup while a backup runs; the scheduler's cleanup kind."""

from __future__ import annotations

import json
import os
import threading
import time

from test_s3 import replica_toml


def backups(eng, sandbox, n: int) -> list[str]:
    ids = []
    for i in range(n):
        (sandbox.src / f"f{i}.bin").write_bytes(os.urandom(200_000 + i))
        ids.append(eng.backup("files", "src").id)
    return ids


def test_cli_cleanup_keeps_last_and_pins(sandbox):
    sandbox.extra = "[retention]\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n" \
                    "keep_monthly = 0\n"
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    ids = backups(eng, sandbox, 5)
    assert sandbox.cli("pin", ids[0][:10], "--note", "before the migration").returncode == 0
    dry = sandbox.cli("cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = {d["id"]: d for d in json.loads(dry.stdout)["decisions"]}
    assert [i for i in ids if not plan[i]["keep"]] == ids[1:3]
    assert "pinned" in plan[ids[0]]["reasons"] and "last 2" in plan[ids[4]]["reasons"]
    assert len(eng.snapshots()) == 5  # a dry run changes nothing
    done = sandbox.cli("cleanup", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert sorted(out["forgotten"]) == sorted(ids[1:3]) and out["prune"]["bytes_freed"] > 0
    assert [s.id for s in sandbox.engine().snapshots()] == [ids[0], ids[3], ids[4]]
    assert sandbox.cli("verify", "--read-data").returncode == 0
    audit = json.loads(sandbox.cli("audit", "--json").stdout)
    assert {"pin", "cleanup"} <= {a["action"] for a in audit}


def test_per_source_retention_override(sandbox, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    sandbox.filesets = {"src": [str(sandbox.src)], "other": [str(other)]}
    sandbox.extra = "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n" \
                    "keep_monthly = 0\n"
    sandbox.write_config()
    text = sandbox.config_path.read_text().replace(
        'name = "other"', 'name = "other"\nretention = { keep_last = 3 }')
    sandbox.config_path.write_text(text)
    eng = sandbox.engine(init=True)
    backups(eng, sandbox, 3)
    for i in range(3):
        (other / "x").write_text(str(i))
        eng.backup("files", "other")
    eng.cleanup()
    counts = {}
    for s in eng.snapshots():
        counts[s.source] = counts.get(s.source, 0) + 1
    assert counts == {"src": 1, "other": 3}


def test_cleanup_waits_for_a_running_backup(sandbox):
    eng = sandbox.engine(init=True)
    backups(eng, sandbox, 2)
    for i in range(6):
        (sandbox.src / f"big{i}.bin").write_bytes(os.urandom(16 << 20))
    other = sandbox.engine()
    started = threading.Event()
    result = {}

    def run_backup():
        def on_event(ev):
            if ev.phase == "backup" and ev.bytes_done > 0:
                started.set()
                time.sleep(0.01)  # keep the backup going a little longer
        result["backup"] = other.backup("files", "src", on_event=on_event)

    t = threading.Thread(target=run_backup)
    t.start()
    assert started.wait(30)
    out = eng.cleanup()  # takes the exclusive lock only when the backup's shared lock is gone
    t.join(60)
    assert out["prune"] is not None
    fresh = sandbox.engine()
    assert result["backup"].id in {s.id for s in fresh.snapshots()}
    assert fresh.verify(read_data=True).ok


def test_cleanup_applies_to_replicas_and_skips_locked_objects(sandbox, s3_server, s3_buckets):
    bucket = "locked-" + s3_buckets.use1[2:]
    s3_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    sandbox.extra = (replica_toml("euw1", s3_buckets.euw1, "eu-west-1", s3_server.endpoint_url)
                     + replica_toml("locked", bucket, "us-east-1", s3_server.endpoint_url,
                                    object_lock_days=1)
                     + "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n"
                       "keep_monthly = 0\n")
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    ids = backups(eng, sandbox, 3)
    out = eng.cleanup()
    assert sorted(out["forgotten"]) == sorted(ids[:2])
    reps = {r["where"]: r for r in out["replicas"]}
    assert sorted(reps["euw1"]["forgotten"]) == sorted(ids[:2])
    assert [s.id for s in eng.for_replica("euw1").snapshots()] == [ids[2]]
    assert eng.for_replica("euw1").verify(read_data=True).ok
    # under Object Lock nothing can be deleted: skipped and reported, not a failure
    assert "error" not in reps["locked"] and reps["locked"]["skipped"]
    assert any("locked" in s or "not deletable" in s for s in reps["locked"]["skipped"])
    assert eng.for_replica("locked").verify().ok


def test_scheduler_runs_cleanup(sandbox):
    from engine.daemon import Scheduler

    sandbox.extra = "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n" \
                    "keep_monthly = 0\n[schedule]\ncleanup = \"off\"\n"
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    backups(eng, sandbox, 3)
    sched = Scheduler(eng).start()
    try:
        assert sched.run_kind("cleanup") == "succeeded"
    finally:
        sched.stop(grace=5)
    assert len(eng.snapshots()) == 1


def test_cleanup_passes_over_a_replica_never_replicated_to(sandbox, s3_server, s3_buckets):
    """A replica holding no repository yet (nothing replicated to it, as while the first
    backup runs) has nothing to clean: said, and not a failure; a missing bucket still is."""
    sandbox.extra = (replica_toml("euw1", s3_buckets.euw1, "eu-west-1", s3_server.endpoint_url,
                                  replicate_after_backup=False)
                     + replica_toml("gone", "no-such-bucket-btui", "us-east-1",
                                    s3_server.endpoint_url, replicate_after_backup=False)
                     + "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n"
                       "keep_monthly = 0\n")
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    ids = backups(eng, sandbox, 2)
    reps = {r["where"]: r for r in eng.cleanup()["replicas"]}
    assert reps["euw1"] == {"where": "euw1", "empty": True}
    assert "error" in reps["gone"]
    proc = sandbox.cli("cleanup")
    out = proc.stdout.decode()
    assert "== euw1: no repository there yet (nothing replicated to it): nothing to clean" in out
    assert proc.returncode == 1 and b"cleanup of gone: FAILED" in proc.stderr
    assert [s.id for s in eng.snapshots()] == ids[1:]
