"""verify: a clean repository passes; each kind of damage is found and named.

Damage is done to the real files of a local repository (truncate, flip one byte,
delete), then the real CLI is run. Every problem must name the object
(``data/xx/<id>``, ``index/<id>``, ``snapshots/<id>``) and the snapshots it
affects, and verify must exit 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.repo.pack import pack_name
from engine.repo.walk import find

MIB = 1024 * 1024


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def verify_json(sb, *args: str) -> tuple[int, dict]:
    proc = sb.cli("verify", *args, "--json")
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def world(sandbox, tmp_path):
    """Two snapshots of ``src`` sharing one big file, one of ``other``.

    Returns (sandbox, info) where info has the snapshot ids and the pack holding
    the big file's first chunk, with that blob's offset and length in the pack.
    """
    (sandbox.src / "big.bin").write_bytes(os.urandom(6 * MIB))
    (sandbox.src / "small.txt").write_text("small\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_bytes(os.urandom(50_000))
    sandbox.filesets["other"] = [str(other)]
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    s1 = eng.backup("files", "src").id
    (sandbox.src / "small2.txt").write_text("more\n")
    s2 = eng.backup("files", "src").id
    s3 = eng.backup("files", "other").id
    repo = eng.repo()
    node = find(repo, eng.snapshot(s1)["tree"], str(sandbox.src / "big.bin"))[1]
    entry = repo.index[node["content"][0]]
    info = {
        "s1": s1, "s2": s2, "s3": s3,
        "pack": pack_name(entry.pack_id),
        "pack_path": sandbox.repo / pack_name(entry.pack_id),
        "offset": entry.offset, "length": entry.length,
        "index_files": sorted((sandbox.repo / "index").iterdir()),
    }
    return sandbox, info


def problems_for(report: dict, obj: str) -> list[dict]:
    return [p for p in report["problems"] if p["object"] == obj]


def test_clean_repository(world):
    sb, info = world
    for args in ((), ("--read-data",)):
        proc = sb.cli("verify", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.decode().strip().endswith("ok")
    rc, rep = verify_json(sb, "--read-data")
    assert rc == 0 and rep["ok"] and rep["problems"] == []
    assert sorted(rep["snapshots"]) == sorted([info["s1"], info["s2"], info["s3"]])
    assert rep["packs_checked"] >= 2 and rep["blobs_checked"] >= 6
    assert rep["bytes_read"] > 6 * MIB


def test_verify_selected_snapshots(world):
    sb, info = world
    rc, rep = verify_json(sb, info["s3"][:8], "--read-data")
    assert rc == 0 and rep["snapshots"] == [info["s3"]]


def test_flipped_byte_in_pack(world):
    sb, info = world
    flip(info["pack_path"], info["offset"] + info["length"] // 2)
    # quick verify checks structure and sizes only: a flipped byte inside a data blob
    # is not seen without reading the data
    assert sb.cli("verify").returncode == 0
    rc, rep = verify_json(sb, "--read-data")
    assert rc == 1 and not rep["ok"]
    probs = problems_for(rep, info["pack"])
    assert probs, rep["problems"]
    assert all(info["pack"] in p["message"] for p in probs)
    affected = set().union(*(p["snapshots"] for p in probs))
    assert affected == {info["s1"], info["s2"]}  # not s3: it does not use this pack
    # the text form names the pack and the short snapshot ids
    proc = sb.cli("verify", "--read-data")
    out = proc.stdout.decode()
    assert proc.returncode == 1
    assert info["pack"] in out and info["s1"][:8] in out and info["s2"][:8] in out
    assert info["s3"][:8] not in out.split("PROBLEM", 1)[1]
    # a snapshot that does not use the pack still verifies clean
    assert sb.cli("verify", info["s3"], "--read-data").returncode == 0


def test_flipped_byte_in_pack_stops_restore(world, tmp_path):
    sb, info = world
    flip(info["pack_path"], info["offset"] + 5)
    target = tmp_path / "out"
    proc = sb.cli("restore", "files", info["s1"], "--target", str(target))
    assert proc.returncode == 1
    assert info["pack"].encode() in proc.stderr
    assert b"authentication failed" in proc.stderr or b"corrupt" in proc.stderr


def test_flipped_byte_in_pack_header(world):
    sb, info = world
    size = info["pack_path"].stat().st_size
    flip(info["pack_path"], size - 10)  # inside the sealed header
    rc, rep = verify_json(sb, "--read-data")
    assert rc == 1
    probs = problems_for(rep, info["pack"])
    assert probs and set(probs[0]["snapshots"]) == {info["s1"], info["s2"]}


def test_flipped_byte_in_tree_pack(world):
    """Trees are read by the quick verify, so it finds damage there without --read-data."""
    sb, info = world
    eng = sb.engine()
    repo = eng.repo()
    entry = repo.index[eng.snapshot(info["s3"])["tree"]]
    path = sb.repo / pack_name(entry.pack_id)
    flip(path, entry.offset + entry.length // 2)
    rc, rep = verify_json(sb)
    assert rc == 1
    names = {p["object"] for p in rep["problems"]}
    assert pack_name(entry.pack_id) in names
    assert info["s3"] in set().union(*(p["snapshots"] for p in rep["problems"]))


def test_truncated_pack(world):
    sb, info = world
    size = info["pack_path"].stat().st_size
    os.truncate(info["pack_path"], size // 2)
    for args in ((), ("--read-data",)):
        rc, rep = verify_json(sb, *args)
        assert rc == 1, args
        probs = problems_for(rep, info["pack"])
        assert probs and "truncated" in probs[0]["message"]
        assert set(probs[0]["snapshots"]) == {info["s1"], info["s2"]}


def test_missing_pack(world):
    sb, info = world
    info["pack_path"].unlink()
    rc, rep = verify_json(sb)
    assert rc == 1
    probs = problems_for(rep, info["pack"])
    assert probs and "missing" in probs[0]["message"]
    assert set(probs[0]["snapshots"]) == {info["s1"], info["s2"]}
    proc = sb.cli("verify", "--read-data")
    assert proc.returncode == 1 and info["pack"].encode() in proc.stdout


def test_flipped_byte_in_index_file(world):
    sb, info = world
    idx = info["index_files"][0]
    flip(idx, idx.stat().st_size // 2)
    rc, rep = verify_json(sb)
    assert rc == 1
    probs = problems_for(rep, f"index/{idx.name}")
    assert probs and f"index/{idx.name}" in probs[0]["message"]
    proc = sb.cli("verify")
    assert proc.returncode == 1 and f"index/{idx.name}".encode() in proc.stdout


def test_flipped_byte_in_snapshot_file(world):
    sb, info = world
    path = sb.repo / "snapshots" / info["s2"]
    flip(path, path.stat().st_size // 2)
    rc, rep = verify_json(sb)
    assert rc == 1
    probs = problems_for(rep, f"snapshots/{info['s2']}")
    assert probs and probs[0]["snapshots"] == [info["s2"]]
    assert f"snapshots/{info['s2']}" in probs[0]["message"]
    # the others are still verified
    assert set(rep["snapshots"]) == {info["s1"], info["s3"]}
    # asking for the damaged snapshot by id fails clearly
    proc = sb.cli("show", info["s2"])
    assert proc.returncode == 1 and f"snapshots/{info['s2']}".encode() in proc.stderr


def test_tampered_repository_config(world):
    sb, info = world
    cfg = sb.repo / "config"
    doc = json.loads(cfg.read_text())
    doc["compression"] = "none"  # still valid JSON, no longer authentic
    cfg.write_text(json.dumps(doc, indent=2))
    proc = sb.cli("verify")
    assert proc.returncode == 1
    assert b"config" in proc.stderr and b"authenticator mismatch" in proc.stderr


def test_unreferenced_pack_is_a_note_not_a_problem(world):
    sb, info = world
    rc, rep = verify_json(sb)
    assert rc == 0 and rep["notes"] == []
    junk = sb.repo / "data" / "ff" / ("ff" * 32)
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"left over by a backup killed before it wrote its index")
    rc, rep = verify_json(sb)
    assert rc == 0 and rep["ok"]
    assert any("not in any index" in n for n in rep["notes"])


def test_unreadable_pack(world, tmp_path):
    """chmod 000 on a pack, with the CLI run as root without DAC override (see
    tests/test_files_backup.py): verify names the pack, goes on with the others."""
    from test_files_backup import cli_without_dac

    sb, info = world
    os.chmod(info["pack_path"], 0)
    proc = cli_without_dac(sb, "verify", "--read-data", "--json")
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    probs = problems_for(rep, info["pack"])
    assert probs and "Permission denied" in probs[0]["message"]
    assert set(probs[0]["snapshots"]) == {info["s1"], info["s2"]}
    assert rep["packs_checked"] >= 1  # the readable packs were still checked
    assert b"Traceback" not in proc.stderr
    proc = cli_without_dac(sb, "restore", "files", info["s1"], "--target", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert info["pack"].encode() in proc.stderr and b"Permission denied" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_list_names_an_unreadable_snapshot_instead_of_hiding_it(sandbox, engine):
    (sandbox.src / "a").write_text("a")
    good = engine.backup("files", "src").id
    (sandbox.src / "b").write_text("b")
    bad = engine.backup("files", "src").id
    path = sandbox.repo / "snapshots" / bad
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    proc = sandbox.cli("list", "--json")
    assert proc.returncode == 0
    assert [s["id"] for s in __import__("json").loads(proc.stdout)] == [good]
    assert bad[:12].encode() in proc.stderr and b"verify" in proc.stderr
