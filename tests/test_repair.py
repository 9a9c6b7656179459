"""repair, forget and vanished snapshots, through the real CLI: a lost index file is
rebuilt from the packs, a damaged pack is fetched again from a healthy S3 replica
(moto_server), without a replica what is lost is named and nothing else removed, a
deleted snapshot object is reported by verify, forget + cleanup free the data.
Restores are judged by rsync."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_adopt import local_objects, rsync_same
from test_s3 import replica_toml


def packs(sb) -> dict[str, int]:
    """pack id -> size, from the repository folder."""
    out = {}
    for name, size in local_objects(sb.repo).items():
        if name.startswith("data/"):
            out[name.rsplit("/", 1)[1]] = size
    return out


def pack_path(sb, pid: str):
    return sb.repo / "data" / pid[:2] / pid


def pack_holding(eng, sid: str, path_suffix: str) -> str:
    """The pack of the first content blob of the file ending in path_suffix."""
    repo = eng.repo()
    repo.load_index()
    from engine.repo.walk import walk

    snap = repo.load_snapshot(sid)
    for path, node in walk(repo, snap["tree"]):
        if os.fsdecode(path).endswith(path_suffix) and node.get("content"):
            return repo.index[node["content"][0]].pack_id
    raise AssertionError(f"{path_suffix} not in {sid}")


def flip(path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(data))


def cli_json(sb, *args, code: int = 0):
    proc = sb.cli(*args, "--json")
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def restore_same(sb, sid: str, tmp_path, name: str = "restored") -> None:
    out = tmp_path / name
    proc = sb.cli("restore", "files", sid, "--target", str(out))
    assert proc.returncode == 0, proc.stderr
    rsync_same(sb.src, out / str(sb.src).lstrip("/"))


def repository_state(sb) -> dict[str, int]:
    return {k: v for k, v in local_objects(sb.repo).items() if not k.startswith("locks/")}


@pytest.fixture
def files_sb(sandbox):
    (sandbox.src / "a.txt").write_text("alpha\n")
    (sandbox.src / "sub").mkdir()
    (sandbox.src / "sub" / "one.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("a.txt", sandbox.src / "link")
    return sandbox


# ------------------------------------------------------------------ index rebuilt
def test_lost_index_file_is_rebuilt_from_the_packs(files_sb, tmp_path):
    sb = files_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src").id
    (sb.src / "sub" / "two.bin").write_bytes(os.urandom(2 << 20))
    second = eng.backup("files", "src").id
    index_files = sorted((sb.repo / "index").iterdir())
    assert len(index_files) == 2
    index_files[1].unlink()  # one backup's index file is lost
    proc = sb.cli("verify")
    assert proc.returncode == 1  # the snapshots' blobs are in no index
    proc = sb.cli("cleanup")
    assert proc.returncode == 1
    assert b"'backup-tui repair' rebuilds the index from the packs" in proc.stderr

    # the dry run reports the rebuild and writes nothing
    before = repository_state(sb)
    out = cli_json(sb, "repair", "--dry-run")
    assert out["dry_run"] and out["index_rewritten"] and out["ok"]
    assert out["index_written"] == [] and out["index_deleted"] == []
    assert repository_state(sb) == before

    out = cli_json(sb, "repair")
    assert out["ok"] and out["index_rewritten"] and not out["damaged_packs"]
    assert out["packs_read"] == len(packs(sb))
    assert len(out["index_written"]) == 1 and len(out["index_deleted"]) == 1
    assert sorted(p.name for p in (sb.repo / "index").iterdir()) == out["index_written"]
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stdout
    restore_same(sb, second, tmp_path)
    proc = sb.cli("restore", "files", first, "--target", str(tmp_path / "first"))
    assert proc.returncode == 0, proc.stderr

    # a second repair finds nothing to do and leaves the index as it is
    out = cli_json(sb, "repair")
    assert out["ok"] and not out["index_rewritten"] and out["index_written"] == []
    human = sb.cli("repair")
    assert human.returncode == 0 and b"index: matches the packs" in human.stdout
    audit = cli_json(sb, "audit")
    assert [r["action"] for r in audit].count("repair") == 3  # the dry run is not audited


# ------------------------------------------------------------------ from a replica
@pytest.fixture
def replica_sb(files_sb, s3_server, s3_buckets):
    sb = files_sb
    sb.extra = replica_toml("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url)
    sb.write_config()
    return sb


def test_damaged_pack_and_deleted_snapshot_fetched_from_replica(replica_sb, tmp_path):
    sb = replica_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src")
    (sb.src / "sub" / "two.bin").write_bytes(os.urandom(2 << 20))
    second = eng.backup("files", "src")
    assert all(r.ok for r in second.replication)
    assert sb.cli("verify").returncode == 0  # the catalog sees both snapshots

    bad = pack_holding(eng, second.id, "two.bin")
    flip(pack_path(sb, bad))
    (sb.repo / "snapshots" / first.id).unlink()  # a snapshot object deleted behind our back
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 1
    assert b"vanished" in proc.stdout and bad.encode() in proc.stdout

    # a dry run names what it would fetch, writes nothing
    before = repository_state(sb)
    out = cli_json(sb, "repair", "--from", "use1", "--dry-run")
    assert out["ok"], out
    assert f"data/{bad[:2]}/{bad}" in out["fetched"] and f"snapshots/{first.id}" in out["fetched"]
    assert repository_state(sb) == before

    out = cli_json(sb, "repair", "--from", "use1")
    assert out["ok"], out
    assert [d.split(":")[0] for d in out["damaged_packs"]] == [f"data/{bad[:2]}/{bad}"]
    assert sorted(out["fetched"]) == sorted([f"data/{bad[:2]}/{bad}", f"snapshots/{first.id}"])
    assert out["lost"] == [] and out["salvaged_blobs"] == 0
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stdout
    restore_same(sb, second.id, tmp_path)
    assert (sb.repo / "snapshots" / first.id).exists()

    # worse: every index file and the pack of the trees lost; the walk finds the trees
    # in the replica's packs, then the blobs they name
    repo = eng.repo()
    repo.load_index()
    tree_pack = repo.index[repo.load_snapshot(second.id)["tree"]].pack_id
    pack_path(sb, tree_pack).unlink()
    shutil.rmtree(sb.repo / "index")
    (sb.repo / "index").mkdir()
    flip(sb.repo / "snapshots" / second.id, 40)  # and a snapshot record damaged
    proc = sb.cli("repair", "--from", "nowhere")
    assert proc.returncode == 2 and b"nowhere" in proc.stderr
    out = cli_json(sb, "repair", "--from", "use1")
    assert out["ok"], out
    assert sorted(out["fetched"]) == sorted([f"data/{tree_pack[:2]}/{tree_pack}",
                                             f"snapshots/{second.id}"])
    assert out["index_rewritten"] and out["index_damaged"] == []
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stdout
    restore_same(sb, second.id, tmp_path, "again")


def test_damaged_pack_without_replica_names_the_loss(files_sb, tmp_path):
    sb = files_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src").id
    shutil.copytree(sb.src, tmp_path / "as-first", symlinks=True)
    (sb.src / "sub" / "two.bin").write_bytes(os.urandom(3 << 20))
    second = eng.backup("files", "src").id
    bad = pack_holding(eng, second, "two.bin")
    assert bad != pack_holding(eng, first, "one.bin")
    flip(pack_path(sb, bad))
    snaps_before = sorted(p.name for p in (sb.repo / "snapshots").iterdir())
    packs_before = packs(sb)

    proc = sb.cli("repair")
    assert proc.returncode == 1, proc.stdout
    assert f"LOST: snapshot {second[:12]}".encode() in proc.stdout
    assert b"two.bin" in proc.stdout and first[:12].encode() not in proc.stdout
    assert b"nothing removed" in proc.stdout

    out = cli_json(sb, "repair", "--dry-run", code=1)
    assert [x["snapshot"] for x in out["lost"]] == [second]
    assert out["lost"][0]["paths"] == [str(sb.src / "sub" / "two.bin")]
    assert out["lost"][0]["missing_blobs"] == 1 and out["salvaged_blobs"] == 0
    assert out["prune"] is None
    # nothing else removed: every snapshot and every pack is still there (the intact
    # blobs of the damaged pack were copied into a new one; the damaged pack is kept)
    assert sorted(p.name for p in (sb.repo / "snapshots").iterdir()) == snaps_before
    assert set(packs_before) <= set(packs(sb))
    assert packs(sb)[bad] == packs_before[bad]
    # the other snapshot restores identical; the damaged one everywhere but the lost part
    out_dir = tmp_path / "first"
    proc = sb.cli("restore", "files", first, "--target", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    rsync_same(tmp_path / "as-first", out_dir / str(sb.src).lstrip("/"))
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 1 and second[:8].encode() in proc.stdout

    # accepting the loss: forget it, clean up; what is left is sound
    cli_json(sb, "forget", second, "--yes")
    out = cli_json(sb, "cleanup")
    assert out["skipped"] == [] or all("grace" not in s for s in out["skipped"])
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stdout


def test_forget_then_cleanup_frees_the_data(files_sb, tmp_path):
    sb = files_sb
    eng = sb.engine(init=True)
    (sb.src / "big.bin").write_bytes(os.urandom(6 << 20))
    first = eng.backup("files", "src").id
    (sb.src / "big.bin").unlink()
    second = eng.backup("files", "src").id
    assert sb.cli("verify").returncode == 0
    used = sum(packs(sb).values())

    before = repository_state(sb)
    proc = sb.cli("forget", first[:10])
    assert proc.returncode == 2 and b"--yes" in proc.stderr and first[:12].encode() in proc.stderr
    assert repository_state(sb) == before

    eng.pin(first, "keep")
    proc = sb.cli("forget", first[:10], "--yes")
    assert proc.returncode == 2 and b"pinned" in proc.stderr
    assert (sb.repo / "snapshots" / first).exists()
    out = cli_json(sb, "forget", first[:10], "--yes", "--force")
    assert out["forgotten"] == [first] and out["unpinned"] == [first]
    assert not (sb.repo / "snapshots" / first).exists()
    assert not (sb.repo / "pins" / first).exists()
    assert [r["action"] for r in cli_json(sb, "audit")][0] == "forget"

    proc = sb.cli("verify")  # forgotten on purpose: not "vanished"
    assert proc.returncode == 0 and b"vanished" not in proc.stdout
    out = cli_json(sb, "cleanup")
    assert out["prune"]["bytes_freed"] >= 6 << 20
    assert sum(packs(sb).values()) <= used - (6 << 20)
    assert sb.cli("verify", "--read-data").returncode == 0
    restore_same(sb, second, tmp_path)


def test_vanished_snapshot_is_a_verify_problem(files_sb):
    sb = files_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src").id
    (sb.src / "c.txt").write_text("gamma\n")
    second = eng.backup("files", "src").id
    assert sb.cli("verify").returncode == 0
    (sb.repo / "snapshots" / first).unlink()
    proc = sb.cli("verify")
    assert proc.returncode == 1
    assert f"snapshot {first} (source src, time".encode() in proc.stdout
    assert b"vanished" in proc.stdout
    out = cli_json(sb, "verify", code=1)
    assert [p["snapshots"] for p in out["problems"]] == [[first]]
    # still reported on the next run: a loss is not forgotten by looking again
    assert sb.cli("verify").returncode == 1
    # repair without a replica cannot bring it back, and says so
    out = cli_json(sb, "repair", "--dry-run", code=1)
    assert out["vanished"] == [first]
    # accepting the loss: forget with its full id records it, verify is clean again
    out = cli_json(sb, "forget", first, "--yes")
    assert out["already_gone"] == [first]
    assert sb.cli("verify").returncode == 0
    assert (sb.repo / "snapshots" / second).exists()
    shutil.rmtree(sb.state)  # a new catalog has seen nothing: nothing is reported
    assert sb.cli("verify").returncode == 0


def test_lost_trees_are_named_by_directory(files_sb):
    """Without a replica, a lost pack of trees: the snapshot that needs it is named with
    the directory it cannot read; the older snapshot (its own trees) is whole."""
    sb = files_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src").id
    (sb.src / "sub" / "two.bin").write_bytes(os.urandom(1 << 20))
    second = eng.backup("files", "src").id
    repo = eng.repo()
    tree_pack = repo.index[repo.load_snapshot(second)["tree"]].pack_id
    assert tree_pack != repo.index[repo.load_snapshot(first)["tree"]].pack_id
    pack_path(sb, tree_pack).unlink()
    report = eng.repair()
    assert not report.ok
    assert [(x.snapshot, x.paths) for x in report.lost] == [(second, ["/"])]
    assert report.prune is None and "nothing removed" in report.prune_skipped
    assert report.index_rewritten  # the lost pack is no longer named
    assert eng.verify([first], read_data=True).ok


def test_unreadable_snapshot_forgotten_by_full_id(files_sb):
    """cleanup refuses while a snapshot cannot be read and names the way out; forget
    takes the full id of a snapshot that cannot be read; then cleanup runs."""
    sb = files_sb
    eng = sb.engine(init=True)
    first = eng.backup("files", "src").id
    (sb.src / "c.txt").write_text("gamma\n")
    second = eng.backup("files", "src").id
    flip(sb.repo / "snapshots" / first, 40)
    proc = sb.cli("cleanup")
    assert proc.returncode == 1 and f"backup-tui forget {first} --yes".encode() in proc.stderr
    out = cli_json(sb, "repair", code=1)
    assert [u.split(":")[0] for u in out["unreadable_snapshots"]] == [f"snapshots/{first}"]
    out = cli_json(sb, "forget", first, "--yes")
    assert out["forgotten"] == [first]
    assert cli_json(sb, "cleanup")["prune"]["snapshots"] == 1
    assert sb.cli("verify", "--read-data").returncode == 0
    assert (sb.repo / "snapshots" / second).exists()


def test_database_snapshot_loss_is_named(sandbox, pg_cluster):
    """A database snapshot whose archive lost a blob is named with what it lost (its
    stream); a files snapshot beside it is untouched."""
    from test_db import SCHEMA

    db = f"shop_{os.urandom(4).hex()}"
    pg_cluster.createdb(db)
    pg_cluster.psql(SCHEMA, db)
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(db)}"\n'
    sandbox.write_config()
    (sandbox.src / "a.txt").write_text("alpha\n")
    eng = sandbox.engine(init=True)
    files_id = eng.backup("files", "src").id
    db_id = eng.backup("db", "shop").id
    repo = eng.repo()
    repo.load_index()
    bad = repo.index[repo.load_snapshot(db_id)["stream"][0]].pack_id
    flip(pack_path(sandbox, bad))
    out = cli_json(sandbox, "repair", code=1)
    assert [(x["snapshot"], x["source"], x["paths"]) for x in out["lost"]] == [
        (db_id, "shop", ["stream"])]
    assert out["prune"] is None
    assert eng.verify([files_id], read_data=True).ok


def test_damaged_replica_copy_is_never_fetched(replica_sb, s3_server, s3_buckets):
    """The replica's copy of the damaged pack is damaged too: it is checked, refused and
    named; nothing of it lands here, and the loss is reported."""
    from test_adopt import flip_a_byte

    sb = replica_sb
    sb.s3 = s3_server.client()
    eng = sb.engine(init=True)
    (sb.src / "sub" / "two.bin").write_bytes(os.urandom(2 << 20))
    sid = eng.backup("files", "src").id
    bad = pack_holding(eng, sid, "two.bin")
    flip(pack_path(sb, bad))
    flip_a_byte(sb, s3_buckets.use1, f"data/{bad[:2]}/{bad}")
    damaged_here = pack_path(sb, bad).read_bytes()
    out = cli_json(sb, "repair", "--from", "use1", code=1)
    assert out["fetched"] == []
    assert [f.split(":")[0] for f in out["fetch_failed"]] == [f"data/{bad[:2]}/{bad}"]
    assert "damaged" in out["fetch_failed"][0]
    assert [x["snapshot"] for x in out["lost"]] == [sid]
    assert pack_path(sb, bad).read_bytes() == damaged_here


def test_damaged_index_file_is_replaced(files_sb):
    sb = files_sb
    eng = sb.engine(init=True)
    sid = eng.backup("files", "src").id
    (index_file,) = (sb.repo / "index").iterdir()
    flip(index_file, 20)
    proc = sb.cli("cleanup")
    assert proc.returncode == 1 and b"'backup-tui repair' rebuilds the index" in proc.stderr
    out = cli_json(sb, "repair")
    assert out["ok"] and out["index_rewritten"]
    assert [d.split(":")[0] for d in out["index_damaged"]] == [f"index/{index_file.name}"]
    assert out["index_deleted"] == [index_file.name] and not index_file.exists()
    assert eng.verify([sid], read_data=True).ok
    assert sb.cli("cleanup").returncode == 0
