"""verify --read-data with the work split: for every snapshot, forked workers check
every pack of the index while the trees are walked (each from its header), and only
the blobs the snapshots need count; for chosen snapshots, the packs they need are
checked once the walk has named their blobs. Both must give the same report, name
every damaged pack with the snapshots it affects, and ignore damage nobody needs.

Real repositories (the ``world`` of tests/test_verify.py), real damage to the files.
"""

from __future__ import annotations

import os
from collections import defaultdict

from test_verify import flip, problems_for, world  # noqa: F401 (world: a fixture)

from engine.ops import verify as verify_mod
from engine.repo.pack import pack_name
from engine.repo.repository import Repository
from engine.repo.walk import find
from engine.storage.local import LocalBackend


def _reports(sb) -> tuple[dict, dict]:
    """(every snapshot: checks started before the walk, the same snapshots named: packs
    checked after it), each from a fresh engine."""
    everything = sb.engine().verify(None, read_data=True).as_json()
    ids = sb.engine().repo().list_ids("snapshots")
    named = sb.engine().verify(ids, read_data=True).as_json()
    return everything, named


def _blob_of(sb, sid: str, path) -> tuple[str, object]:
    """(pack name, index entry) of the first content blob of ``path`` in snapshot sid."""
    eng = sb.engine()
    repo = eng.repo()
    node = find(repo, eng.snapshot(sid)["tree"], str(path))[1]
    entry = repo.index[node["content"][0]]
    return pack_name(entry.pack_id), entry


def test_clean_repository_same_report_both_ways(world):  # noqa: F811 (fixture)
    sb, info = world
    assert verify_mod._use_processes(sb.engine().repo())  # the forked path is the one tested
    everything, named = _reports(sb)
    assert everything == named
    assert everything["ok"] and everything["packs_checked"] >= 2


def test_damage_in_two_packs_each_named_with_its_snapshots(world, tmp_path):  # noqa: F811 (fixture)
    sb, info = world
    other_pack, other = _blob_of(sb, info["s3"], tmp_path / "other" / "o.txt")
    assert other_pack != info["pack"]
    flip(info["pack_path"], info["offset"] + info["length"] // 2)
    flip(sb.repo / other_pack, other.offset + other.length // 2)
    everything, named = _reports(sb)
    assert everything == named
    assert not everything["ok"]
    big = problems_for(everything, info["pack"])
    assert big and all(set(p["snapshots"]) == {info["s1"], info["s2"]} for p in big)
    small = problems_for(everything, other_pack)
    assert small and all(p["snapshots"] == [info["s3"]] for p in small)
    assert any("authentication failed" in p["message"] for p in big + small)


def test_pack_truncated_in_the_middle_of_a_blob(world):  # noqa: F811 (fixture)
    sb, info = world
    os.truncate(info["pack_path"], info["offset"] + info["length"] // 2)
    everything, named = _reports(sb)
    assert everything == named
    probs = problems_for(everything, info["pack"])
    assert probs and all(set(p["snapshots"]) == {info["s1"], info["s2"]} for p in probs)
    # the header is cut off: the blobs are found where the index places them, and the
    # first (by id) that the cut reaches is named
    assert any("the pack ends before offset" in p["message"] for p in probs), probs


def test_damage_no_snapshot_needs_is_not_reported(world, tmp_path):  # noqa: F811 (fixture)
    """Workers started before the walk check packs nobody needs too: a forgotten
    snapshot's pack, damaged, is not a problem (as when it is not read at all)."""
    sb, info = world
    other_pack, other = _blob_of(sb, info["s3"], tmp_path / "other" / "o.txt")
    sb.engine().forget([info["s3"]])
    flip(sb.repo / other_pack, other.offset + other.length // 2)
    everything, named = _reports(sb)
    assert everything == named
    assert everything["ok"], everything["problems"]
    assert sorted(everything["snapshots"]) == sorted([info["s1"], info["s2"]])


def test_reused_buffer_reads_what_a_fresh_read_gives(world):  # noqa: F811 (fixture)
    """A worker reads each pack into one buffer, kept from pack to pack: a smaller pack
    after a bigger one, a damaged and a truncated pack give what reading it afresh gives,
    and every blob the index places in a pack is checked there."""
    sb, info = world
    flip(info["pack_path"], info["offset"] + 7)
    repo = Repository.open(LocalBackend(sb.repo), "test-password")
    repo.load_index()
    present = {i.name: i.size for i in repo.backend.list("data/")}
    by_pack: dict[str, set[str]] = defaultdict(set)
    for bid in repo.index:
        by_pack[repo.index[bid].pack_id].add(bid)
    packs = sorted(by_pack, key=lambda p: -present[pack_name(p)])
    assert len(packs) >= 2 and present[pack_name(packs[0])] > present[pack_name(packs[-1])]
    for pid in packs + packs[::-1]:
        reused = verify_mod._check_pack(repo, pid, None, present, reuse=True)
        fresh = verify_mod._check_pack(repo, pid, None, present)
        assert reused == fresh
        assert reused[0] == present[pack_name(pid)]
        assert verify_mod._outcome(reused, by_pack[pid]) is not None
    damaged = verify_mod._check_pack(repo, packs[0], None, present, reuse=True)
    if pack_name(packs[0]) == info["pack"]:
        assert damaged[2][1]  # the damaged blob, named
    # truncated: the header is gone, nothing is checked from it; asked for the blobs
    # where the index places them, the cut is found
    pid = next(p for p in packs if pack_name(p) == info["pack"])
    os.truncate(sb.repo / info["pack"], info["offset"] + 10)
    present = {i.name: i.size for i in repo.backend.list("data/")}
    cut = verify_mod._check_pack(repo, pid, None, present, reuse=True)
    assert cut[2] == (b"", {}) and cut[1]
    assert verify_mod._outcome(cut, by_pack[pid]) is None  # so it is checked again
    again = verify_mod._check_pack(repo, pid, by_pack[pid], present, reuse=True)
    assert again == verify_mod._check_pack(repo, pid, by_pack[pid], present)
    nbytes, checked, problems = verify_mod._outcome(again, by_pack[pid])
    assert nbytes == info["offset"] + 10 and problems


def test_structure_walk_decodes_each_tree_once(sandbox):
    """A walk loads every tree twice (measured, then walked); verify keeps them all in
    the tree cache for the second time (within its bytes), not the usual 512."""
    from engine.ops.verify import verify

    for i in range(600):  # more trees than the usual 512 the cache keeps
        d = sandbox.src / f"d{i:03}"
        d.mkdir()
        (d / "f").write_text(str(i))
    eng = sandbox.engine(init=True)
    eng.backup("files", "src")
    repo = eng.repo()
    decoded: dict[str, int] = defaultdict(int)
    real = repo.decode_blob

    def counting(sealed, blob_id, where, raw_length=None, check_id=True):
        decoded[blob_id] += 1
        return real(sealed, blob_id, where, raw_length, check_id)

    repo.decode_blob = counting
    before = repo.tree_cache_blobs
    report = verify(repo, None, False, "job", lambda e: None)
    assert report.ok, report.problems
    assert len(decoded) > 600 and set(decoded.values()) == {1}
    assert repo.tree_cache_blobs == before  # as it was, after the walk
