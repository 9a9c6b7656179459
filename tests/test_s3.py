"""S3 replicas against a real S3-protocol server (moto_server) with buckets in two regions."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.errors import EngineError
from engine.ops.replicate import replicate_one
from engine.sandbox import FaultProxy
from engine.storage.s3 import S3Backend, S3Error


def replica_toml(name, bucket, region, endpoint, **extra) -> str:
    lines = ["[[replica]]", f'name = "{name}"', f'bucket = "{bucket}"', f'region = "{region}"',
             f'endpoint_url = "{endpoint}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def s3_sandbox(sandbox, s3_server, s3_buckets):
    sandbox.extra = (replica_toml("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url)
                     + replica_toml("euw1", s3_buckets.euw1, "eu-west-1",
                                    s3_server.endpoint_url))
    sandbox.write_config()
    sandbox.buckets = s3_buckets
    (sandbox.src / "a.txt").write_text("alpha\n")
    (sandbox.src / "sub").mkdir()
    (sandbox.src / "sub" / "b.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("a.txt", sandbox.src / "link")
    return sandbox


def backend(s3_server, bucket, region="us-east-1", endpoint=None, prefix="repo/"):
    return S3Backend(bucket, region, prefix=prefix, endpoint_url=endpoint or s3_server.endpoint_url)


def same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


# ------------------------------------------------------------------ S3 only
# (the Backend contract itself runs for S3 in tests/test_backends.py)
def test_s3_objects_live_under_the_prefix(s3_server, s3_buckets):
    b = backend(s3_server, s3_buckets.use1, prefix="/repo/")
    b.put("config", b"c")
    client = s3_server.client()
    client.put_object(Bucket=s3_buckets.use1, Key="other/x", Body=b"o")
    client.put_object(Bucket=s3_buckets.use1, Key="repox", Body=b"o")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_buckets.use1)["Contents"]]
    assert sorted(keys) == ["other/x", "repo/config", "repox"]
    assert [o.name for o in b.list()] == ["config"]
    assert not b.exists("other/x")


def test_s3_list_paginates_past_1000_objects(s3_server, s3_buckets):
    b = backend(s3_server, s3_buckets.use1)
    names = [f"data/{i % 256:02x}/{i:064x}" for i in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: b.put(n, b"x"), names))
    before = b.requests["list"]
    assert sorted(o.name for o in b.list("data/")) == sorted(names)
    assert b.requests["list"] - before == 2  # two pages


def test_missing_bucket_is_clear(s3_server):
    b = backend(s3_server, "no-such-bucket-here")
    with pytest.raises(S3Error, match="does not exist"):
        b.check_bucket()
    with pytest.raises(S3Error, match="does not exist"):
        list(b.list("data/"))


def test_wrong_region_is_clear(s3_server, s3_buckets):
    b = backend(s3_server, s3_buckets.euw1, region="us-east-1")
    with pytest.raises(S3Error, match="is in region 'eu-west-1', not 'us-east-1'"):
        b.check_bucket()


def test_access_denied_is_clear(s3_server, s3_buckets):
    proxy = FaultProxy(s3_server.port, deny=True)
    try:
        b = backend(s3_server, s3_buckets.use1, endpoint=proxy.endpoint_url)
        with pytest.raises(S3Error, match="access denied"):
            b.put("config", b"x")
    finally:
        proxy.close()


# ------------------------------------------------------------------ replication
def test_replicate_to_two_regions_and_list_shows_presence(s3_sandbox):
    eng = s3_sandbox.engine(init=True)
    res = eng.backup("files", "src", replicate=False)
    assert all(v is False for v in eng.snapshots()[0].replicas.values())
    results = eng.replicate()
    assert [r.replica for r in results] == ["use1", "euw1"] and all(r.ok for r in results)
    assert all(r.snapshots == [res.id] for r in results)
    proc = s3_sandbox.cli("list", "--json")
    assert json.loads(proc.stdout)[0]["replicas"] == {"use1": True, "euw1": True}
    for name in ("use1", "euw1"):
        remote = eng.for_replica(name)
        assert [s.id for s in remote.snapshots()] == [res.id]
        assert remote.verify(read_data=True).ok


def test_no_change_replicate_makes_no_puts(s3_sandbox):
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src", replicate=False)
    remote = eng.replica_backend("use1")
    first = replicate_one(eng.backend, remote, "use1", "job", lambda e: None)
    assert first.uploaded > 0
    before = dict(remote.requests)
    again = replicate_one(eng.backend, remote, "use1", "job", lambda e: None)
    assert again.uploaded == 0 and remote.requests["put"] == before["put"]
    # one LIST per object class; besides, only the bucket check and one GET of the config
    assert remote.requests["list"] - before["list"] == 6
    assert remote.requests["get"] - before["get"] == 1


class _BackupAfterList:
    """The local backend, with a whole backup completing right after its k-th LIST."""

    def __init__(self, eng, src, k):
        self._eng, self._src, self._k, self._calls = eng, src, k, 0
        self.ran = None

    def __getattr__(self, name):
        return getattr(self._eng.backend, name)

    def list(self, prefix=""):
        out = list(self._eng.backend.list(prefix))
        self._calls += 1
        if self._calls == self._k:
            (self._src / f"new{self._k}.bin").write_bytes(
                os.urandom(1 << 20))
            self.ran = self._eng.backup("files", "src", replicate=False).id
        return out


@pytest.mark.parametrize("k", range(1, 7))
def test_replicate_beside_a_finishing_backup_sends_only_whole_snapshots(s3_sandbox, k):
    """A backup may finish between replicate's listings (both hold shared locks): the
    replica must never receive a snapshot without its index or packs, whichever
    listing the backup slips in after."""
    eng = s3_sandbox.engine(init=True)
    first = eng.backup("files", "src", replicate=False).id
    local = _BackupAfterList(eng, s3_sandbox.src, k)
    res = replicate_one(local, eng.replica_backend("use1"), "use1", "job", lambda e: None)
    assert res.ok and local.ran
    assert first in res.snapshots
    replica = eng.for_replica("use1")
    report = replica.verify(read_data=False)
    assert report.ok, [p.message for p in report.problems]
    again = replicate_one(eng.backend, eng.replica_backend("use1"), "use1", "job",
                          lambda e: None)
    assert sorted(again.snapshots) == sorted([first, local.ran])
    assert replica.verify(read_data=True).ok


def test_backup_replicates_automatically(s3_sandbox):
    proc = s3_sandbox.cli("init")
    assert proc.returncode == 0, proc.stderr
    proc = s3_sandbox.cli("backup", "files", "src", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["replica"] for r in out["replication"]] == ["use1", "euw1"]
    assert all(r["ok"] for r in out["replication"])


def test_restore_from_a_replica_without_local_repository(s3_sandbox, tmp_path):
    eng = s3_sandbox.engine(init=True)
    res = eng.backup("files", "src")
    shutil.rmtree(s3_sandbox.repo)
    proc = s3_sandbox.cli("restore", "files", res.id, "--replica", "euw1", "--target",
                          str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert same_tree(s3_sandbox.src, tmp_path / "out" / str(s3_sandbox.src).lstrip("/"))
    proc = s3_sandbox.cli("list", "--replica", "use1", "--json")
    assert [s["id"] for s in json.loads(proc.stdout)] == [res.id]


def test_one_failing_region_does_not_stop_the_other(s3_sandbox, s3_server):
    s3_sandbox.extra = s3_sandbox.extra.replace(s3_sandbox.buckets.use1, "bucket-that-is-gone")
    s3_sandbox.write_config()
    eng = s3_sandbox.engine(init=True)
    res = eng.backup("files", "src")
    by_name = {r.replica: r for r in res.replication}
    assert not by_name["use1"].ok and "does not exist" in by_name["use1"].error
    assert by_name["euw1"].ok
    proc = s3_sandbox.cli("replicate", "--json")
    assert proc.returncode == 1
    states = {r["replica"]: r for r in json.loads(proc.stdout)}
    assert states["euw1"]["ok"] and not states["use1"]["ok"]


def test_replica_holding_another_repository_is_refused(s3_sandbox, sandbox_factory):
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src")
    other = sandbox_factory()
    other.extra = s3_sandbox.extra
    other.write_config()
    other_eng = other.engine(init=True)
    results = other_eng.replicate()
    assert all(not r.ok and "different repository" in r.error for r in results)


def test_server_stops_mid_replication_then_next_run_completes(s3_sandbox, s3_server):
    proxy = FaultProxy(s3_server.port)
    s3_sandbox.extra = replica_toml("use1", s3_sandbox.buckets.use1, "us-east-1",
                                    proxy.endpoint_url)
    s3_sandbox.write_config()
    for i in range(6):
        (s3_sandbox.src / f"f{i}.bin").write_bytes(os.urandom(6 << 20))
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src", replicate=False)
    seen = []

    def on_event(ev):
        seen.append(ev)
        if ev.phase == "replicate" and ev.items_done == 1:
            proxy.down()

    try:
        [res] = eng.replicate(on_event=on_event)
        assert not res.ok and "connection failed" in res.error
        proxy.up()
        [res] = eng.replicate()
        assert res.ok and res.uploaded > 0
        assert eng.for_replica("use1").verify(read_data=True).ok
    finally:
        proxy.close()


def test_proxy_dropping_every_third_connection(s3_sandbox, s3_server):
    proxy = FaultProxy(s3_server.port, drop_every=3)
    s3_sandbox.extra = replica_toml("use1", s3_sandbox.buckets.use1, "us-east-1",
                                    proxy.endpoint_url)
    s3_sandbox.write_config()
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src", replicate=False)
    try:
        [res] = eng.replicate()
        assert res.ok, res.error
        assert proxy.dropped > 0
        assert eng.for_replica("use1").verify(read_data=True).ok
    finally:
        proxy.close()


def test_corrupted_object_in_replica_is_found_and_repaired(s3_sandbox, s3_server):
    eng = s3_sandbox.engine(init=True)
    res = eng.backup("files", "src")
    client = s3_server.client()
    packs = [o["Key"] for o in client.list_objects_v2(Bucket=s3_sandbox.buckets.use1,
                                                       Prefix="data/")["Contents"]]
    key = packs[0]
    body = bytearray(client.get_object(Bucket=s3_sandbox.buckets.use1, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=s3_sandbox.buckets.use1, Key=key, Body=bytes(body))
    proc = s3_sandbox.cli("verify", "--replica", "use1", "--read-data", "--json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert any(p["object"] == key and res.id in p["snapshots"] for p in problems)
    proc = s3_sandbox.cli("replicate", "--replica", "use1", "--repair", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["repaired"] >= 1
    assert s3_sandbox.cli("verify", "--replica", "use1", "--read-data").returncode == 0


def test_object_lock_retention_is_set(s3_sandbox, s3_server):
    """moto answers GetObjectRetention with 500, so the lock is read from HEAD."""
    bucket = "locked-" + s3_sandbox.buckets.use1[2:]
    s3_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3_sandbox.extra = replica_toml("use1", bucket, "us-east-1", s3_server.endpoint_url,
                                    object_lock_days=2, object_lock_mode="GOVERNANCE")
    s3_sandbox.write_config()
    eng = s3_sandbox.engine(init=True)
    res = eng.backup("files", "src")
    assert res.replication[0].ok, res.replication[0].error
    head = s3_server.client().head_object(Bucket=bucket, Key=f"snapshots/{res.id}")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]


def test_credentials_in_config_are_refused(sandbox, s3_server):
    sandbox.extra = replica_toml("use1", "b", "us-east-1", s3_server.endpoint_url,
                                 aws_secret_access_key="hunter2")
    sandbox.write_config()
    proc = sandbox.cli("list")
    assert proc.returncode == 2 and b"credential chain" in proc.stderr
    assert b"hunter2" not in proc.stderr


def test_disaster_recovery_from_the_second_region(s3_sandbox, s3_server, pg_cluster, tmp_path):
    """Back up files and a database, replicate to two regions, lose the ops host's
    repository and state and the first region, rebuild from the second, restore both."""
    from test_db import SCHEMA, fingerprint, new_db_name

    db = new_db_name()
    pg_cluster.createdb(db)
    pg_cluster.psql(SCHEMA, db)
    s3_sandbox.extra += f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(db)}"\n'
    s3_sandbox.write_config()
    eng = s3_sandbox.engine(init=True)
    results = eng.backup_all()
    assert all(r.ok for r in results[-1].replication)
    files_id = next(r.id for r in results if r.kind == "files")
    db_id = next(r.id for r in results if r.kind == "db")
    # the ops host is gone, and so is the first region
    shutil.rmtree(s3_sandbox.repo)
    shutil.rmtree(s3_sandbox.state)
    client = s3_server.client()
    bucket = s3_sandbox.buckets.use1
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
    # a new host: config, password, credentials
    proc = s3_sandbox.cli("catalog", "rebuild", "--from", "euw1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["snapshots"] == 2
    out = tmp_path / "restored"
    proc = s3_sandbox.cli("restore", "files", files_id, "--replica", "euw1", "--target", str(out))
    assert proc.returncode == 0, proc.stderr
    assert same_tree(s3_sandbox.src, out / str(s3_sandbox.src).lstrip("/"))
    target = new_db_name()
    proc = s3_sandbox.cli("restore", "db", db_id, "--replica", "euw1", "--target-db", target)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, db)
    proc = s3_sandbox.cli("list", "--replica", "use1")
    assert proc.returncode == 1 and b"does not exist" in proc.stderr


def test_wrong_password_against_replica(s3_sandbox):
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src")
    s3_sandbox.pwfile.write_text("not the password")
    proc = s3_sandbox.cli("list", "--replica", "euw1")
    assert proc.returncode == 1 and b"wrong password" in proc.stderr
    with pytest.raises(EngineError):
        s3_sandbox.engine().for_replica("euw1").snapshots()


def test_replica_states_measure_lag(s3_sandbox):
    eng = s3_sandbox.engine(init=True)
    eng.backup("files", "src", replicate=False)
    states = {s["name"]: s for s in eng.replica_states(check=True)}
    assert states["use1"]["objects_behind"] > 0 and states["use1"]["bytes_behind"] > 3 << 20
    assert states["use1"]["last_success"] is None
    eng.replicate()
    states = {s["name"]: s for s in eng.replica_states(check=True)}
    assert states["euw1"]["objects_behind"] == 0 and states["euw1"]["bytes_behind"] == 0
    assert states["euw1"]["last_success"] and states["euw1"]["snapshots"] == 1
