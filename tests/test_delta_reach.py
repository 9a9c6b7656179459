"""Blocks stored as deltas (format 1.2, docs/FORMAT.md 5.2): prune, verify, repair and
every walk know them.

Cluster snapshots are built by hand on a real (encrypted) repository: a full one, A, whose
relation file is stored block by block, and B, whose changed blocks are stored as deltas
against A's block (``delta`` entries ``[i, delta_id, base_id]``; B's ``content`` names the ids of
its blocks, which are not stored). B's bytes are read back with blockdelta's helpers
(restore itself is written elsewhere).
"""

from __future__ import annotations

import os
import random

import pytest

from engine.errors import UnsafeEntry
from engine.ops import prune as prune_op
from engine.ops import verify as verify_op
from engine.repo.blockdelta import content_pieces, load_piece, make_delta, stored_ids
from engine.repo.pack import pack_name
from engine.repo.tree import encode_tree
from engine.repo.walk import find, walk

BLOCK = 16 * 1024
LABEL = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
NODE = {"mode": 0o600, "uid": os.getuid(), "gid": os.getgid(), "user": "", "group": "",
        "mtime_ns": 1_700_000_000_000_000_000, "ctime_ns": 1_700_000_000_000_000_000,
        "inode": 0}
REL = "base/5/16384"


def small_file(w, name: str, data: bytes) -> dict:
    return {**NODE, "name": name, "type": "file", "size": len(data),
            "content": [w.save("data", data)] if data else []}


def cluster_snapshot(repo, w, rel: dict, parent: str | None, when: str) -> str:
    """A cluster snapshot whose data directory holds PG_VERSION, backup_label and the
    relation file node ``rel`` (name set here) in base/5/."""
    def tree(nodes: list[dict]) -> str:
        return w.save("tree", encode_tree(sorted(nodes, key=lambda n: n["name"].encode())))

    db = tree([{**rel, "name": "16384"}])
    base = tree([{**NODE, "name": "5", "type": "dir", "mode": 0o700, "size": 0,
                  "subtree": db}])
    root = tree([small_file(w, "PG_VERSION", b"16\n"),
                 small_file(w, "backup_label", LABEL.encode()),
                 {**NODE, "name": "base", "type": "dir", "mode": 0o700, "size": 0,
                  "subtree": base}])
    w.commit()
    return repo.save_snapshot({
        "version": 1, "time": when, "kind": "cluster", "source": "pg", "host": "test",
        "tags": [], "parent": parent, "incomplete": False, "program": "backup-tui test",
        "stats": {"size": rel["size"], "files": 3, "dirs": 2}, "tree": root,
        "block_size": BLOCK, "pgdata": "",
        "postgres": {"server_major": 16, "backup_label": LABEL, "start_lsn": "0/2000028"}})


def changed(block: bytes, rng: random.Random, n: int = 40) -> bytes:
    """A few scattered bytes changed (a page's LSN, xmax, hint bits)."""
    b = bytearray(block)
    for _ in range(n):
        b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    return bytes(b)


@pytest.fixture
def world(sandbox):
    """(engine, info): A stores the 6-block relation file whole; B changes blocks 1, 2
    and 4 a little (stored as deltas against A's blocks), rewrites block 3 (stored whole)
    and keeps blocks 0 and 5. A's blobs and B's new blobs are in separate packs."""
    rng = random.Random(20261201)
    eng = sandbox.engine(init=True)
    repo = eng.repo()
    a_blocks = [rng.randbytes(BLOCK) for _ in range(5)] + [rng.randbytes(3000)]
    with repo.writer() as w:
        a_ids = [w.save("data", b) for b in a_blocks]
        sa = cluster_snapshot(repo, w, {**NODE, "type": "file", "size": sum(map(len, a_blocks)),
                                        "content": a_ids}, None, "2026-12-01T00:00:00+00:00")
    b_blocks = list(a_blocks)
    for i in (1, 2, 4):
        b_blocks[i] = changed(a_blocks[i], rng)
    b_blocks[3] = rng.randbytes(BLOCK)
    xor = []
    with repo.writer() as w:
        content = []
        for i, blk in enumerate(b_blocks):
            if i in (1, 2, 4):
                xor.append([i, w.save("data", make_delta(blk, a_blocks[i])), a_ids[i]])
                content.append(repo.keys.blob_id(blk))
            else:
                content.append(w.save("data", blk))
        sb = cluster_snapshot(repo, w, {**NODE, "type": "file", "size": sum(map(len, b_blocks)),
                                        "content": content, "delta": xor}, sa,
                              "2026-12-02T00:00:00+00:00")
    for i in (1, 2, 4):
        assert content[i] not in repo.index  # the block itself is not stored
    return eng, {"a": sa, "b": sb, "a_ids": a_ids, "a_blocks": a_blocks,
                 "b_blocks": b_blocks, "xor": xor, "content": content}


def read_file(repo, sid: str) -> bytes:
    """The relation file of a snapshot, rebuilt from what is stored."""
    node = find(repo, repo.load_snapshot(sid)["tree"], REL)[1]
    out = []
    for full, x, base in content_pieces(node, REL):
        out.append(repo.load_blob(full, "data") if x is None
                   else load_piece(repo, full, x, base, REL))
    return b"".join(out)


def messages(report) -> str:
    return "\n".join(f"{p.object}: {p.message}" for p in report.problems)


def test_stored_ids_and_walk(world):
    eng, info = world
    repo = eng.repo()
    node = find(repo, repo.load_snapshot(info["b"])["tree"], REL)[1]
    ids = list(stored_ids(node))
    for i, x, base in info["xor"]:
        assert x in ids and base in ids and info["content"][i] not in ids
    assert read_file(repo, info["b"]) == b"".join(info["b_blocks"])
    assert read_file(repo, info["a"]) == b"".join(info["a_blocks"])


def test_prune_keeps_the_bases_of_a_kept_snapshot(world):
    eng, info = world
    repo = eng.repo()
    used = prune_op.used_blobs(repo)
    assert all(x in used and base in used for _i, x, base in info["xor"])
    assert prune_op.forget(repo, [info["a"]]) == [info["a"]]
    report = prune_op.prune(repo, repack_threshold=0)
    assert report.packs_repacked and report.blobs_removed >= 1
    # A's block 3 only A named: gone; the bases of B's deltas only A stored whole: kept
    assert info["a_ids"][3] not in repo.index
    for _i, _x, base in info["xor"]:
        assert base in repo.index
    assert read_file(repo, info["b"]) == b"".join(info["b_blocks"])
    for read_data in (False, True):
        rep = verify_op.verify(repo, None, read_data, "v", lambda e: None)
        assert rep.ok, messages(rep)
        assert rep.snapshots == [info["b"]]


def test_verify_good_snapshots(world):
    eng, info = world
    repo = eng.repo()
    for read_data in (False, True):
        rep = verify_op.verify(repo, None, read_data, "v", lambda e: None)
        assert rep.ok, messages(rep)
        assert sorted(rep.snapshots) == sorted([info["a"], info["b"]])
    assert rep.archives_checked == 2  # the cluster kind's own check ran on both


def test_verify_names_the_file_whose_base_pack_is_missing(world, sandbox):
    eng, info = world
    repo = eng.repo()
    base = info["xor"][0][2]
    pack = pack_name(repo.index[base].pack_id)
    os.unlink(sandbox.repo / pack)
    rep = verify_op.verify(repo, [info["b"]], False, "v", lambda e: None)
    assert not rep.ok
    hits = [p for p in rep.problems if REL in p.message and base in p.message]
    assert hits and hits[0].snapshots == [info["b"]] and pack in hits[0].message, messages(rep)


def test_verify_names_a_base_that_is_not_in_the_index(world):
    eng, info = world
    repo = eng.repo()
    bogus = "ab" * 32
    xor = [list(e) for e in info["xor"]]
    xor[1][2] = bogus
    sid = rewrite_b(repo, info, delta=xor)
    rep = verify_op.verify(repo, [sid], False, "v", lambda e: None)
    assert [p.message for p in rep.problems if bogus in p.message] == [
        f"blob {bogus} ({REL}) is not in the index"]
    # the blocks' own ids are not stored and are not reported missing
    assert not any(info["content"][i] in messages(rep) for i, _x, _b in info["xor"])


def rewrite_b(repo, info: dict, **changes) -> str:
    """A snapshot like B whose relation file node has ``changes``."""
    node = find(repo, repo.load_snapshot(info["b"])["tree"], REL)[1]
    node = {k: v for k, v in node.items() if k != "name"}
    node.update(changes)
    with repo.writer() as w:
        return cluster_snapshot(repo, w, node, info["a"], "2026-12-03T00:00:00+00:00")


def test_verify_read_data_finds_a_wrong_delta(world):
    eng, info = world
    repo = eng.repo()
    i, _x, base = info["xor"][1]
    # a delta of the right length that rebuilds other data: every blob reads back fine
    with repo.writer() as w:
        base_block = info["a_blocks"][i]
        wrong = w.save("data", make_delta(changed(base_block, random.Random(7)), base_block))
        w.commit()
    xor = [list(e) for e in info["xor"]]
    xor[1][1] = wrong
    sid = rewrite_b(repo, info, delta=xor)
    rep = verify_op.verify(repo, [sid], False, "v", lambda e: None)
    assert rep.ok, messages(rep)
    rep = verify_op.verify(repo, [sid], True, "v", lambda e: None)
    assert [p.snapshots for p in rep.problems] == [[sid]], messages(rep)
    assert REL in rep.problems[0].message and "does not match" in rep.problems[0].message


def test_verify_read_data_refuses_a_delta_against_a_base_of_another_length(world):
    eng, info = world
    repo = eng.repo()
    xor = [list(e) for e in info["xor"]]
    xor[0][2] = info["a_ids"][5]  # the 3000-byte last block as the base of a 16 KiB delta
    sid = rewrite_b(repo, info, delta=xor)
    rep = verify_op.verify(repo, [sid], True, "v", lambda e: None)
    assert len(rep.problems) == 1, messages(rep)
    assert REL in rep.problems[0].message and "block 1" in rep.problems[0].message
    assert "not a zstd frame of the base's 3000 bytes" in rep.problems[0].message


@pytest.mark.parametrize("xor", [
    "nope", [[1, "ab" * 32]], [[99, "ab" * 32, "cd" * 32]], [[2, "ab" * 32, "cd" * 32],
                                                             [1, "ab" * 32, "cd" * 32]],
    [[True, "ab" * 32, "cd" * 32]], [[1, "AB" * 32, "cd" * 32]]])
def test_every_walk_refuses_a_malformed_delta_list(world, xor):
    eng, info = world
    repo = eng.repo()
    sid = rewrite_b(repo, info, delta=xor)
    with pytest.raises(UnsafeEntry, match=f"{REL}: malformed delta"):
        list(walk(repo, repo.load_snapshot(sid)["tree"]))
    rep = verify_op.verify(repo, [sid], False, "v", lambda e: None)
    assert any("malformed delta" in p.message for p in rep.problems), messages(rep)
    with pytest.raises(prune_op.PruneRefused, match="malformed delta"):
        prune_op.prune(repo, dry_run=True)


def test_repair_counts_the_blobs_of_deltas(world, sandbox):
    eng, info = world
    report = eng.repair()  # the blocks' own ids are not stored: nothing is lost
    assert report.ok and not report.lost, report.as_json()
    assert read_file(eng.repo(), info["b"]) == b"".join(info["b_blocks"])
    # B's own data pack: block 3 and the three deltas
    x = info["xor"][0][1]
    os.unlink(sandbox.repo / pack_name(eng.repo().index[x].pack_id))
    report = eng.repair()
    lost = {x.snapshot: x for x in report.lost}
    assert set(lost) == {info["b"]}, report.as_json()
    assert lost[info["b"]].paths == ["/" + REL] and lost[info["b"]].missing == 4
