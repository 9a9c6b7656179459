"""repository adopt: the way home from a replica after losing the host, against a real
S3-protocol server (moto_server), with real restores judged by rsync and psql."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_s3 import replica_toml

from engine.errors import Cancelled, IntegrityError, RepositoryError, WrongPassword
from engine.events import CancelToken


@pytest.fixture
def dr_sandbox(sandbox, s3_server, s3_buckets):
    """Files (several packs' worth) replicated to two regions."""
    sandbox.extra = (replica_toml("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url)
                     + replica_toml("euw1", s3_buckets.euw1, "eu-west-1",
                                    s3_server.endpoint_url))
    sandbox.write_config()
    sandbox.buckets = s3_buckets
    sandbox.s3 = s3_server.client()
    (sandbox.src / "a.txt").write_text("alpha\n")
    (sandbox.src / "sub").mkdir()
    for i in range(5):
        (sandbox.src / "sub" / f"f{i}.bin").write_bytes(os.urandom(7 << 20))
    os.symlink("a.txt", sandbox.src / "link")
    os.chmod(sandbox.src / "a.txt", 0o640)
    return sandbox


def bucket_objects(sb, bucket: str) -> dict[str, int]:
    """Every object of the bucket (the replica has no prefix), with its size."""
    out = {}
    for page in sb.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def local_objects(root) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = os.path.getsize(path)
    return out


def repository_objects(objects: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in objects.items() if not k.startswith("locks/")}


def lose_the_host(sb) -> None:
    shutil.rmtree(sb.repo)
    shutil.rmtree(sb.state)


def rsync_same(a, b) -> None:
    """rsync, comparing content by checksum and metadata, finds nothing to change."""
    proc = subprocess.run(["rsync", "-rlptc", "--dry-run", "--itemize-changes", "--delete",
                           f"{a}/", f"{b}/"], capture_output=True, text=True, check=True)
    assert proc.stdout == "", proc.stdout


def flip_a_byte(sb, bucket: str, key: str) -> None:
    body = bytearray(sb.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    sb.s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))


# ------------------------------------------------------------------ the way home
def test_adopt_brings_the_repository_home(dr_sandbox, pg_cluster, tmp_path):
    """Files and a database replicated to two regions; the host is lost; the replica is
    adopted: same id, every snapshot, verify --read-data clean, byte-identical restores,
    and backup + replicate carry on uploading only what is new."""
    from test_db import SCHEMA, fingerprint, new_db_name

    sb = dr_sandbox
    db = new_db_name()
    pg_cluster.createdb(db)
    pg_cluster.psql(SCHEMA, db)
    sb.extra += f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(db)}"\n'
    sb.write_config()
    eng = sb.engine(init=True)
    results = eng.backup_all()
    assert all(r.ok for r in results[-1].replication)
    repo_id = eng.repo().id
    files_id = next(r.id for r in results if r.kind == "files")
    db_id = next(r.id for r in results if r.kind == "db")
    before = [(s.id, s.kind, s.source) for s in eng.snapshots()]
    replica_objects = repository_objects(bucket_objects(sb, sb.buckets.use1))
    lose_the_host(sb)

    # the advice on a new host names the way home
    proc = sb.cli("list")
    assert proc.returncode == 1 and b"repository adopt --from" in proc.stderr
    proc = sb.cli("catalog", "rebuild", "--from", "use1")
    assert proc.returncode == 0, proc.stderr
    assert b"backup-tui repository adopt --from use1" in proc.stdout

    proc = sb.cli("repository", "adopt", "--from", "use1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["id"] == repo_id and out["snapshots"] == 2
    assert out["downloaded"] == len(replica_objects) and out["present"] == 0
    assert repository_objects(local_objects(sb.repo)) == replica_objects
    assert (sb.repo / "config").read_bytes() == sb.s3.get_object(
        Bucket=sb.buckets.use1, Key="config")["Body"].read()
    assert not (sb.repo / ".adopting").exists()

    proc = sb.cli("verify", "--read-data", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["problems"] == []
    proc = sb.cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert sorted((s["id"], s["kind"], s["source"]) for s in listed) == sorted(before)
    assert all(s["replicas"]["use1"] for s in listed)  # the catalog knows the replica has them
    jobs = sb.engine().jobs()
    assert any(j["kind"] == "adopt" and j["state"] == "succeeded" for j in jobs)

    # restores from the adopted repository: files (rsync) and the database (psql)
    out_dir = tmp_path / "restored"
    proc = sb.cli("restore", "files", files_id, "--target", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    rsync_same(sb.src, out_dir / str(sb.src).lstrip("/"))
    target = new_db_name()
    proc = sb.cli("restore", "db", db_id, "--target-db", target)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, db)

    # carry on: a new backup, and replicate uploads only the new objects, to both regions
    (sb.src / "new.txt").write_text("after the adoption\n")
    eng = sb.engine()
    res = eng.backup("files", "src", replicate=False)
    assert eng.repo().load_snapshot(res.id)["parent"] == files_id  # on the adopted snapshot
    assert res.unchanged_files >= 6
    local_now = repository_objects(local_objects(sb.repo))
    new = {k for k in local_now if k not in replica_objects}
    assert new and any(k.startswith("snapshots/") for k in new)
    results = eng.replicate()
    assert all(r.ok for r in results), [r.error for r in results]
    for r in results:
        assert r.uploaded == len(new), (r.replica, r.uploaded, sorted(new))
        assert r.uploaded_bytes == sum(local_now[k] for k in new)
        assert r.present == len(replica_objects) - 1  # all but config (not in CLASSES)
    assert repository_objects(bucket_objects(sb, sb.buckets.euw1)) == local_now


def test_adopt_cancelled_then_resumed(dr_sandbox):
    sb = dr_sandbox
    eng = sb.engine(init=True)
    first = eng.backup("files", "src")
    assert all(r.ok for r in first.replication)
    total = len(repository_objects(bucket_objects(sb, sb.buckets.euw1)))
    lose_the_host(sb)

    eng = sb.engine()
    token = CancelToken()
    seen = []

    def on_event(ev):
        seen.append(ev)
        if ev.phase == "adopt" and ev.items_done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        eng.adopt("euw1", on_event, token)
    assert not (sb.repo / "config").exists()  # unfinished: never taken for a repository
    assert json.loads((sb.repo / ".adopting").read_text())["replica"] == "euw1"
    landed = repository_objects(local_objects(sb.repo))
    assert 2 <= len(landed) < total
    assert not any(k.startswith(("index/", "snapshots/")) for k in landed)  # write order
    proc = sb.cli("list")
    assert proc.returncode == 1 and b"no repository" in proc.stderr
    assert eng.jobs()[0]["kind"] == "adopt" and eng.jobs()[0]["state"] == "interrupted"

    res = sb.engine().adopt("euw1")
    assert res.ok and res.resumed
    assert res.present == len(landed) and res.downloaded == total - len(landed)
    assert res.snapshots == [first.id]
    assert not (sb.repo / ".adopting").exists()
    assert sb.engine().verify(read_data=True).ok
    assert [s.id for s in sb.engine().snapshots()] == [first.id]


def test_adopt_killed_then_resumed(dr_sandbox):
    """The CLI is killed (SIGKILL) while packs land; the next run completes."""
    sb = dr_sandbox
    eng = sb.engine(init=True)
    first = eng.backup("files", "src")
    assert all(r.ok for r in first.replication)
    total = repository_objects(bucket_objects(sb, sb.buckets.use1))
    lose_the_host(sb)

    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path),
           "repository", "adopt", "--from", "use1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (sb.repo / "data").is_dir() and any(local_objects(sb.repo / "data")):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "adopt finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (sb.repo / "config").exists()
    landed = repository_objects(local_objects(sb.repo))
    assert 1 <= len(landed) < len(total)

    proc = sb.cli("repository", "adopt", "--from", "use1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["resumed"] and out["present"] >= len(landed)
    assert out["present"] + out["downloaded"] == len(total)
    assert repository_objects(local_objects(sb.repo)) == total
    assert sb.cli("verify", "--read-data").returncode == 0


def test_adopt_fills_in_what_a_repository_of_the_same_id_lacks(dr_sandbox):
    sb = dr_sandbox
    eng = sb.engine(init=True)
    first = eng.backup("files", "src")
    assert all(r.ok for r in first.replication)
    packs = sorted(k for k in local_objects(sb.repo) if k.startswith("data/"))
    os.unlink(sb.repo / packs[0])
    damaged = sb.repo / packs[1]
    body = bytearray(damaged.read_bytes())
    body[100] ^= 0xFF
    damaged.write_bytes(bytes(body))
    os.unlink(sb.repo / "snapshots" / first.id)
    assert not sb.engine().verify(read_data=True).ok

    proc = sb.cli("repository", "adopt", "--from", "use1")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.decode().splitlines()[0]
    assert f"adopted repository {eng.repo().id} from use1" in line
    assert "3 object(s) downloaded" in line and "1 replaced" in line, line
    assert sb.engine().verify(read_data=True).ok
    assert [s.id for s in sb.engine().snapshots()] == [first.id]


# ------------------------------------------------------------------ refusals
def test_wrong_password_writes_nothing(dr_sandbox):
    sb = dr_sandbox
    sb.engine(init=True).backup("files", "src")
    lose_the_host(sb)
    sb.pwfile.write_text("not the password")
    proc = sb.cli("repository", "adopt", "--from", "use1")
    assert proc.returncode == 1
    assert b"wrong password" in proc.stderr and b"use1" in proc.stderr
    assert not sb.repo.exists()
    with pytest.raises(WrongPassword):
        sb.engine().adopt("euw1")
    assert not sb.repo.exists()


def test_a_folder_holding_another_repository_is_refused(dr_sandbox):
    sb = dr_sandbox
    sb.engine(init=True).backup("files", "src")
    shutil.rmtree(sb.repo)
    other_id = sb.engine(init=True).repo().id  # "run init", as the old advice said
    config = (sb.repo / "config").read_bytes()
    proc = sb.cli("repository", "adopt", "--from", "use1")
    assert proc.returncode == 1
    assert b"another id" in proc.stderr and other_id.encode() in proc.stderr
    assert (sb.repo / "config").read_bytes() == config
    assert sorted(local_objects(sb.repo)) == ["config"]

    # ...and a folder of other files
    shutil.rmtree(sb.repo)
    sb.repo.mkdir()
    (sb.repo / "notes.txt").write_text("mine\n")
    with pytest.raises(RepositoryError, match="not a repository's"):
        sb.engine().adopt("use1")
    assert sorted(os.listdir(sb.repo)) == ["notes.txt"]


def test_a_damaged_pack_in_the_replica_is_never_adopted(dr_sandbox):
    """A pack with a flipped byte is named and not adopted; nothing that names it lands,
    and no config: then adopting from the other region resumes and completes."""
    sb = dr_sandbox
    eng = sb.engine(init=True)
    first = eng.backup("files", "src")
    assert all(r.ok for r in first.replication)
    lose_the_host(sb)
    packs = sorted(k for k in bucket_objects(sb, sb.buckets.use1) if k.startswith("data/"))
    flip_a_byte(sb, sb.buckets.use1, packs[0])

    proc = sb.cli("repository", "adopt", "--from", "use1")
    assert proc.returncode == 1
    assert packs[0].encode() in proc.stderr and b"does not match" in proc.stderr
    assert not (sb.repo / packs[0]).exists()
    assert not (sb.repo / "config").exists()
    assert not (sb.repo / "index").exists() and not (sb.repo / "snapshots").exists()
    with pytest.raises(IntegrityError) as err:
        sb.engine().adopt("use1")
    assert err.value.object_name == packs[0]

    res = sb.engine().adopt("euw1")
    assert res.ok and res.resumed and res.downloaded >= 1
    assert sb.engine().verify(read_data=True).ok
    assert [s.id for s in sb.engine().snapshots()] == [first.id]


def test_adopt_is_admin_only(dr_sandbox, monkeypatch, capsys):
    from backup_tui import cli
    from engine import security

    monkeypatch.setattr(security, "is_admin", lambda group, uid=None, gids=None: False)
    rc = cli.main(["--config", str(dr_sandbox.config_path), "repository", "adopt",
                   "--from", "use1"])
    assert rc == 1 and "permission denied" in capsys.readouterr().err
    assert not dr_sandbox.repo.exists()


def test_unknown_replica_is_a_usage_error(dr_sandbox):
    proc = dr_sandbox.cli("repository", "adopt", "--from", "nowhere")
    assert proc.returncode == 2 and b"nowhere" in proc.stderr
