"""The compact in-memory index (engine/repo/index.py) and its local cache: lookups,
duplicates across index files (the last in name order wins, as FORMAT.md section 4
says), damaged index files and cache files, assignment and bulk adds. Behaviour only:
its speed and memory are measured by bench/index_scale.py."""

import hashlib
import json
import os
import random

import numpy as np
import pytest

from engine.repo import codec
from engine.repo import index as index_mod
from engine.repo.index import CompactIndex, IndexCache, IndexEntry
from engine.repo.pack import DATA, TREE, BlobEntry
from engine.repo.repository import Repository
from engine.storage import MemoryBackend
from engine.storage.local import LocalBackend

KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


def _packs(rng: random.Random, n_packs: int, per_pack: int, ids: list[str] | None = None):
    """Fabricated (pack id, size, [BlobEntry]) rows, as a writer has them."""
    out = []
    it = iter(ids) if ids is not None else None
    for _ in range(n_packs):
        entries, off = [], 0
        for _ in range(per_pack):
            bid = next(it) if it is not None else rng.randbytes(32).hex()
            length = rng.randrange(30, 5000)
            entries.append(BlobEntry(rng.choice([DATA, TREE]), bid, off, length, length - 29))
            off += length
        out.append((rng.randbytes(32).hex(), off + 100, entries))
    return out


def _oracle(repo: Repository) -> dict[str, IndexEntry]:
    """FORMAT.md section 4, read literally: every index file in ascending name order,
    packs and rows in order, a later entry for a blob id replaces an earlier one."""
    out: dict[str, IndexEntry] = {}
    for iid in repo.list_ids("index"):
        for p in repo.load_record("index", iid)["packs"]:
            for t, bid, o, n, r in p["blobs"]:
                out[bid] = IndexEntry(p["id"], t, o, n, r)
    return out


def _same(index, expected: dict[str, IndexEntry]) -> None:
    assert len(index) == len(expected)
    assert sorted(index) == sorted(expected)
    for bid, e in expected.items():
        assert bid in index and index[bid] == e and index.get(bid) == e
    assert index == expected


@pytest.fixture
def local(tmp_path):
    be = LocalBackend(tmp_path / "repo")
    Repository.init(be, "pw", kdf=KDF)
    return be, tmp_path / "state" / "index-cache"


def test_lookup_in_and_get_and_absent_keys(local):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    packs = _packs(random.Random(1), 30, 20)
    repo.write_indexes(packs)
    for reopened in (Repository.open(be, "pw"), Repository.open(be, "pw", cache_dir=cache)):
        expected = {e.id: IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
                    for pid, _s, es in packs for e in es}
        _same(reopened.index, expected)
        assert reopened.pack_sizes == {pid: size for pid, size, _e in packs}
        some = next(iter(expected))
        assert reopened.has_blob(some)
        assert isinstance(reopened.index[some], IndexEntry)
        for absent in ("0" * 64, some.upper(), some[:63], some + "0", " " + some[1:],
                       "", None, 5, b"x" * 32, ("t",)):
            assert absent not in reopened.index
            assert reopened.index.get(absent) is None
            assert reopened.index.get(absent, "d") == "d"
        with pytest.raises(KeyError):
            reopened.index["f" * 64]


def test_empty_repository_index_equals_an_empty_dict():
    repo = Repository.init(MemoryBackend(), None)
    assert repo.index == {} and len(repo.index) == 0 and list(repo.index) == []
    assert "a" * 64 not in repo.index and repo.index.get("a" * 64) is None


@pytest.mark.parametrize("cached", [False, True])
def test_duplicates_across_index_files_the_last_in_name_order_wins(local, cached):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache if cached else None)
    rng = random.Random(2)
    shared = [rng.randbytes(32).hex() for _ in range(40)]
    # three backups that each stored the same blobs in their own packs, plus one file
    # naming a blob twice (the later row of the same file wins too)
    for _ in range(3):
        repo.write_indexes(_packs(rng, 4, 10, ids=shared))
    twice = _packs(rng, 2, 3)
    twice[1][2][2] = BlobEntry(DATA, twice[0][2][0].id, 7, 11, 5)
    repo.write_indexes(twice)
    expected = _oracle(repo)
    assert len(expected) == 40 + 5
    # which file wins depends on the names (hashes): the oracle decides, not the order
    # the files were written in
    for _ in range(2):  # the second open reads from the cache, when there is one
        _same(Repository.open(be, "pw", cache_dir=cache if cached else None).index,
              expected)
    if cached:
        assert sorted(os.listdir(cache / repo.id)) == sorted(repo.list_ids("index"))


def test_a_damaged_index_file_is_skipped_and_named(local):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    rng = random.Random(3)
    good = repo.write_index(_packs(rng, 3, 5))
    bad = repo.write_index(_packs(rng, 3, 5))
    path = be.root / "index" / bad
    # neither cached: the damage is seen when the file is read
    for name in os.listdir(cache / repo.id):
        os.unlink(cache / repo.id / name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    r = Repository.open(be, "pw", cache_dir=cache)
    assert set(r.index_errors) == {bad} and "index/" + bad in r.index_errors[bad]
    assert r.index_files == {good, bad}
    assert len(r.index) == 15 and all(r.index[b].pack_id for b in r.index)
    assert sorted(os.listdir(cache / repo.id)) == [good]  # a damaged file is not cached


def test_a_hostile_index_file_is_refused_as_before(local):
    """parse_index's rules hold whether or not a cache is in use: a row outside its pack
    makes the whole file unreadable, and nothing of it is cached."""
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    doc = {"packs": [{"id": "ab" * 32, "size": 100,
                      "blobs": [[DATA, "cd" * 32, 0, 50, 10], [DATA, "ef" * 32, 60, 50, 10]]}]}
    iid = repo.save_record("index", doc)
    r = Repository.open(be, "pw", cache_dir=cache)
    assert "outside the pack" in r.index_errors[iid] and len(r.index) == 0
    assert not (cache / repo.id / iid).exists()


def test_odd_blob_ids_are_kept_by_their_exact_string(local):
    """parse_index accepts any 64-character blob id; one that is not lowercase hex (only
    a crafted index has it) is found by its own string, never by the lowercase one."""
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    upper, lower = "AB" * 32, "ab" * 32
    doc = {"packs": [{"id": "12" * 32, "size": 1000,
                      "blobs": [[DATA, upper, 0, 50, 10], [TREE, "zz" * 32, 50, 50, 10],
                                [DATA, "34" * 32, 100, 50, 10]]}]}
    repo.save_record("index", doc)
    for _ in range(2):
        r = Repository.open(be, "pw", cache_dir=cache)
        assert upper in r.index and lower not in r.index and "zz" * 32 in r.index
        assert r.index[upper] == IndexEntry("12" * 32, DATA, 0, 50, 10)
        assert sorted(r.index) == sorted([upper, "zz" * 32, "34" * 32])
        assert len(r.index) == 3


def _corrupt_cache(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    elif how == "truncate":
        del data[-40:]
    elif how == "bounds":  # a row's length far past its pack, with a matching digest
        head = index_mod._HEAD
        _m, _i, packs, rows = head.unpack_from(data)
        length_at = head.size + packs * 40 + rows * 32 + rows * 8
        data[length_at : length_at + 4] = (2**31).to_bytes(4, "little")
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    elif how == "size":  # a pack size no index file could give, with a matching digest
        head = index_mod._HEAD
        _m, _i, packs, _rows = head.unpack_from(data)
        at = head.size + packs * 32
        data[at : at + 8] = (2**64 - 1).to_bytes(8, "little")
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    elif how == "other-file":  # a valid cache file of another index file
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "bounds", "size", "other-file"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(local, how):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    rng = random.Random(4)
    a = repo.write_index(_packs(rng, 5, 8))
    b = repo.write_index(_packs(rng, 5, 8))
    expected = _oracle(repo)
    folder = cache / repo.id
    if how == "other-file":
        (folder / a).write_bytes((folder / b).read_bytes())
    else:
        _corrupt_cache(folder / a, how)
    before = (folder / a).read_bytes()
    r = Repository.open(be, "pw", cache_dir=cache)
    _same(r.index, expected)
    assert not r.index_errors
    assert (folder / a).read_bytes() != before  # read from index/ and cached again
    assert IndexCache(folder).read(a) is not None


def test_the_cache_is_used_by_the_next_open(local):
    """A backup's own index file is cached when written: the next open reads it from the
    cache, so even an index file damaged since (verify reports that) still loads."""
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    iid = repo.write_index(_packs(random.Random(5), 4, 6))
    expected = _oracle(repo)
    path = be.root / "index" / iid
    path.write_bytes(b"damaged")
    r = Repository.open(be, "pw", cache_dir=cache)
    assert not r.index_errors
    _same(r.index, expected)
    assert Repository.open(be, "pw").index_errors  # without the cache: unreadable


def test_cache_files_of_removed_index_files_are_swept(local, monkeypatch):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    a = repo.write_index(_packs(random.Random(6), 2, 2))
    b = repo.write_index(_packs(random.Random(7), 2, 2))
    (be.root / "index" / a).unlink()
    Repository.open(be, "pw", cache_dir=cache)
    assert (cache / repo.id / a).exists()  # a replica may still name it: kept a day
    monkeypatch.setattr(index_mod, "_SWEEP_AFTER", -1.0)
    Repository.open(be, "pw", cache_dir=cache)
    assert sorted(os.listdir(cache / repo.id)) == [b]


def test_assignment_overrides_adds_and_folds(monkeypatch):
    monkeypatch.setattr(CompactIndex, "FOLD_MIN", 8)
    repo = Repository.init(MemoryBackend(), None)
    rng = random.Random(8)
    packs = _packs(rng, 10, 10)
    repo.write_indexes(packs)
    repo.load_index()
    expected = {e.id: IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
                for pid, _s, es in packs for e in es}
    _same(repo.index, expected)
    existing = list(expected)[:6]
    for i, bid in enumerate(existing[:5]):  # override: len stays
        expected[bid] = repo.index[bid] = IndexEntry("f" * 64, TREE, i, 1, 0)
    assert len(repo.index) == 100
    for _ in range(30):  # new ids: several folds into the columns on the way
        bid = rng.randbytes(32).hex()
        expected[bid] = repo.index[bid] = IndexEntry(rng.randbytes(32).hex(), DATA, 3, 4, 5)
    # entries that do not fit the columns stay beside them through folds
    odd = {"Q" * 64: IndexEntry("p", DATA, 0, 1, 2),
           existing[5]: IndexEntry("x" * 64, DATA, 2**40, 1, 2),
           "short": IndexEntry("y" * 64, "weird", 0, 1, 2)}
    for k, e in odd.items():
        expected[k] = repo.index[k] = e
    for _ in range(20):
        bid = rng.randbytes(32).hex()
        expected[bid] = repo.index[bid] = IndexEntry("e" * 64, DATA, 1, 1, 1)
    _same(repo.index, expected)
    assert len(list(repo.index)) == len(set(repo.index))
    with pytest.raises(TypeError):
        repo.index["a" * 64] = ("not", "an", "entry")


def test_bulk_add_from_a_writer_wins_over_older_rows():
    repo = Repository.init(MemoryBackend(), None)
    rng = random.Random(9)
    old = _packs(rng, 20, 10)
    repo.write_indexes(old)
    repo.load_index()
    repo.index["ab" * 32] = IndexEntry("c" * 64, DATA, 2**40, 1, 1)  # stays beside
    ids = [e.id for _p, _s, es in old for e in es][:50] + ["ab" * 32]
    ids += [rng.randbytes(32).hex() for _ in range(5000 - len(ids))]
    new = _packs(rng, 500, 10, ids=ids)  # 5,000 rows: merged into the columns
    repo.index.add_packs(new)
    expected = {e.id: IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
                for pid, _s, es in old + new for e in es}
    _same(repo.index, expected)


def test_a_real_backup_commit_makes_blobs_visible_and_cached(local):
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    datas = [os.urandom(3000) + bytes([i]) for i in range(50)]
    with repo.writer() as w:
        ids = [w.save(DATA, d) for d in datas]
        assert w.save(DATA, datas[0]) == ids[0]
        iid = w.commit()
    assert all(repo.has_blob(b) for b in ids) and len(repo.index) == 50
    assert (cache / repo.id / iid).exists()
    r = Repository.open(be, "pw", cache_dir=cache)
    assert [r.load_blob(b) for b in ids] == datas
    _same(r.index, _oracle(r))


def test_cache_rows_are_the_index_files_rows(local):
    """The cache file holds exactly what check_index read, pack by pack and row by row."""
    be, cache = local
    repo = Repository.open(be, "pw", cache_dir=cache)
    packs = _packs(random.Random(10), 7, 9)
    iid = repo.write_index(packs)
    seg = IndexCache(cache / repo.id).read(iid)
    assert seg is not None
    assert seg.packs == [(pid, size) for pid, size, _e in packs]
    rows = [e for _p, _s, es in packs for e in es]
    assert seg.ids.tobytes().hex() == "".join(e.id for e in rows)
    assert seg.offset.tolist() == [e.offset for e in rows]
    assert seg.length.tolist() == [e.length for e in rows]
    assert seg.raw.tolist() == [e.raw_length for e in rows]
    assert [("data", "tree")[t] for t in seg.type.tolist()] == [e.type for e in rows]
    assert np.array_equal(seg.pack, np.repeat(np.arange(7, dtype=np.uint32), 9))
    doc = codec.parse_json(json.dumps({"packs": [
        {"id": pid, "size": size, "blobs": [e.as_list() for e in es]}
        for pid, size, es in packs]}), "x")
    checked = index_mod.check_index(doc, "x")
    assert checked.ids == [e.id for e in rows]


def test_ids_sharing_their_first_8_bytes_are_told_apart():
    """Lookups go through the ids' first 8 bytes; two different ids that share them (rare
    but possible) are still both found, each with its own entry, and duplicates of each
    still resolve to the last."""
    idx = CompactIndex()
    prefix = "0123456789abcdef"
    a, b, c = (prefix + x * 48 for x in "abc")
    packs = [("1" * 64, 10_000, [BlobEntry(DATA, a, 0, 10, 1), BlobEntry(DATA, b, 10, 10, 2),
                                 BlobEntry(DATA, a, 20, 10, 3)]),
             ("2" * 64, 10_000, [BlobEntry(TREE, c, 0, 10, 4)] +
              [BlobEntry(DATA, os.urandom(32).hex(), 10 + i, 1, 1) for i in range(5000)])]
    idx.add_packs(packs)
    assert idx[a] == IndexEntry("1" * 64, DATA, 20, 10, 3)
    assert idx[b].raw_length == 2 and idx[c].raw_length == 4
    assert (prefix + "d" * 48) not in idx
    assert len(idx) == 5003


def test_adds_assignments_and_merges_agree_with_a_dict(monkeypatch):
    """Random adds (bulk and single) over a loaded index, through the delta's rebuilds
    and its merges into the base: always the same as a dict given the same updates."""
    monkeypatch.setattr(CompactIndex, "FOLD_MIN", 50)
    rng = random.Random(11)
    repo = Repository.init(MemoryBackend(), None)
    repo.write_indexes(_packs(rng, 200, 10))
    repo.load_index()
    expected = dict(_oracle(repo))
    seen = list(expected)
    for step in range(40):
        if step % 3 == 0:  # a commit: new blobs, some already known
            n = rng.choice([10, 500, 4100, 6000])
            ids = [rng.choice(seen) if rng.random() < 0.3 else rng.randbytes(32).hex()
                   for _ in range(n)]
            new = _packs(rng, max(1, n // 10), 10, ids=ids + [rng.randbytes(32).hex()
                                                              for _ in range(10)])
            repo.index.add_packs(new)
            for pid, _s, es in new:
                for e in es:
                    expected[e.id] = IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
        else:  # single assignments, as repair makes them
            for _ in range(rng.randrange(1, 80)):
                bid = rng.choice(seen) if rng.random() < 0.5 else rng.randbytes(32).hex()
                expected[bid] = repo.index[bid] = IndexEntry(rng.randbytes(32).hex(), DATA,
                                                             rng.randrange(2**31), 1, 1)
        seen = list(expected)
        assert len(repo.index) == len(expected), step
        for bid in rng.sample(seen, 50):
            assert repo.index[bid] == expected[bid], step
    _same(repo.index, expected)
    base, delta, _side, _dups = repo.index._state
    assert base is not None  # merges happened on the way: one base, perhaps a delta
