"""The faster paths of the in-memory index (engine/repo/index.py): the sort by prefix
and row number (``_stable_order``), views merged instead of sorted anew
(``_Base.merged``, with columns that grow in place: ``_Store``), the pack numbering of
a first open and the cache files written from the loaded columns on a thread. Each
gives what the plain path gives; speed and memory are measured by bench/index_scale.py."""

import json
import os
import random

import numpy as np
import pytest
from test_index_compact import _packs  # fabricated writer rows

from engine.repo import codec
from engine.repo import index as index_mod
from engine.repo.index import (
    CompactIndex,
    IndexCache,
    IndexEntry,
    _Base,
    _stable_order,
    index_segment,
    read_index_doc,
)
from engine.repo.pack import DATA, TREE
from engine.repo.repository import Repository, sha256_hex
from engine.storage.local import LocalBackend

KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 70_000])
def test_stable_order_is_numpys_stable_argsort(n):
    rng = np.random.default_rng(n)
    cases = [rng.integers(0, 2**64, n, dtype=np.uint64),
             rng.integers(0, 5, n, dtype=np.uint64),  # many equal values
             # values equal but for their low bits, where the row numbers go
             (rng.integers(0, 3, n, dtype=np.uint64) << np.uint64(40))
             | rng.integers(0, 2**12, n, dtype=np.uint64),
             np.full(n, 2**64 - 1, np.uint64)]
    for pre in cases:
        order, out = _stable_order(pre.copy())
        expected = np.argsort(pre, kind="stable")
        assert order.tolist() == expected.tolist()
        assert out.tolist() == pre[expected].tolist()


def _cols(rng: random.Random, ids: list[bytes]):
    n = len(ids)
    return (np.frombuffer(b"".join(ids), np.uint8).copy(),
            np.array([rng.randrange(50) for _ in range(n)], np.uint32),
            np.array([rng.randrange(2**32) for _ in range(n)], np.uint32),
            np.array([rng.randrange(1, 2**32) for _ in range(n)], np.uint32),
            np.array([rng.randrange(2**32) for _ in range(n)], np.uint32),
            np.array([rng.randrange(2) for _ in range(n)], np.uint8))


def _view(b: _Base):
    return (b.count, b.shift, *(a.tolist() for a in b.arrays[6:]),
            *(a.tolist() for a in b.arrays[:6]))


@pytest.mark.parametrize("collide", [False, True])
def test_merged_views_equal_a_view_sorted_anew(collide):
    """Duplicates in the old rows, in the new ones and across them (a new row wins), and
    with ``collide`` a new id sharing its first 8 bytes with an old one (sorted anew by
    whole ids)."""
    rng = random.Random(11)
    old_ids = [rng.randbytes(32) for _ in range(3000)]
    old_ids += [old_ids[i] for i in range(0, 3000, 7)]  # named twice among the old rows
    new_ids = [rng.randbytes(32) for _ in range(900)]
    new_ids += [old_ids[i] for i in range(5, 3000, 11)]  # replacing old rows
    new_ids += [new_ids[i] for i in range(0, 900, 13)]  # named twice among the new rows
    if collide:
        new_ids.append(old_ids[17][:8] + rng.randbytes(24))
        new_ids.append(old_ids[18][:8] + rng.randbytes(24))
    rng.shuffle(new_ids)
    a, b = _cols(rng, old_ids), _cols(rng, new_ids)
    merged = _Base.merged(_Base(*a), _Base(*b))
    anew = _Base(*(np.concatenate([a[i], b[i]]) for i in range(6)))
    assert _view(merged) == _view(anew)
    for bid in (old_ids[17], old_ids[5], new_ids[0], new_ids[-1]):
        p = int.from_bytes(bid[:8], "big")
        assert merged.find(bid, p) == anew.find(bid, p) >= 0


def _entries(packs):
    return {e.id: IndexEntry(pid, e.type, e.offset, e.length, e.raw_length)
            for pid, _s, es in packs for e in es}


def _check(index: CompactIndex, expected: dict) -> None:
    assert len(index) == len(expected)
    assert sorted(index) == sorted(expected)
    for bid, e in expected.items():
        assert index[bid] == e


@pytest.mark.parametrize("store_min", [4096, 1 << 20])
def test_adds_merge_into_columns_and_older_states_stay_readable(monkeypatch, store_min):
    """A backup's checkpoints: bulk adds (some re-adding ids with new rows: the last
    wins) that merge into the sorted views and write into the same columns; a state
    taken before an add (a reader on another thread) still reads what it read. With a
    small ``store_min`` the columns are outgrown and copied on the way."""
    monkeypatch.setattr(index_mod, "_STORE_MIN", store_min)
    rng = random.Random(12)
    index = CompactIndex()
    expected: dict[str, IndexEntry] = {}
    snapshots = []
    for step in range(14):
        old = list(expected)
        again = rng.sample(old, min(len(old), 300)) if step % 3 == 2 else []
        ids = again + [rng.randbytes(32).hex() for _ in range(4800 - len(again))]
        rng.shuffle(ids)
        packs = _packs(rng, 300, 16, ids=ids)
        snapshots.append((index._state, dict(expected)))
        index.add_packs(packs)
        expected.update(_entries(packs))
        if step == 6:  # a single assignment between bulk adds
            bid = rng.choice(old)
            expected[bid] = index[bid] = IndexEntry("d" * 64, DATA, 1, 2, 3)
    _check(index, expected)
    for state, then in snapshots:
        view = CompactIndex()
        view._packs, view._state = index._packs, state
        _check(view, then)
    base, delta, _side, _dups = index._state
    assert base.store is not None and base.count + (delta.count if delta else 0) >= 14 * 4500


def _put(repo: Repository, doc: dict, pretty: bool = False) -> str:
    raw = (json.dumps(doc, indent=1) if pretty
           else json.dumps(doc, sort_keys=True, separators=(",", ":"))).encode()
    stored = repo.keys.seal(codec.encode(raw, 3))
    rid = sha256_hex(stored)
    repo.backend.put(f"index/{rid}", stored)
    return rid


def _doc(rng: random.Random, packs: list[tuple[str, int]], shared: list[str]) -> dict:
    out = []
    for pid, size in packs:
        rows = [[rng.choice([DATA, TREE]), rng.choice(shared) if rng.random() < 0.2
                 else rng.randbytes(32).hex(), 10 * i, 5, 4] for i in range(rng.randrange(0, 12))]
        out.append({"blobs": rows, "id": pid, "size": size})
    return {"packs": out}


def test_a_first_open_numbers_packs_and_caches_each_file_as_parsed(tmp_path):
    """Index files whose packs are all new, one naming a pack of another file, one
    naming a pack twice, one not canonical, one with an odd blob id (not cached), blob
    ids in several files: the index equals FORMAT.md section 4 read literally, and each
    cache file (written from the loaded columns) holds what parsing its file gives."""
    be = LocalBackend(tmp_path / "repo")
    Repository.init(be, "pw", kdf=KDF)
    cache = tmp_path / "state" / "index-cache"
    repo = Repository.open(be, "pw")
    rng = random.Random(13)
    shared = [rng.randbytes(32).hex() for _ in range(30)]

    def new_packs(k):
        return [(rng.randbytes(32).hex(), 1000 + rng.randrange(10**6)) for _ in range(k)]

    first = new_packs(20)
    docs = [_doc(rng, first, shared), _doc(rng, new_packs(30), shared),
            _doc(rng, new_packs(5) + [first[3]] + new_packs(4), shared)]
    twice = new_packs(6)
    docs.append(_doc(rng, twice + [twice[2]], shared))
    docs.append(_doc(rng, [], shared))
    odd = _doc(rng, new_packs(3), shared)
    odd["packs"][0]["blobs"].append([DATA, "Z" * 64, 0, 5, 4])
    names = [_put(repo, d) for d in docs] + [_put(repo, _doc(rng, new_packs(4), shared),
                                                  pretty=True), _put(repo, odd)]
    expected: dict[str, IndexEntry] = {}
    sizes: dict[str, int] = {}
    for iid in repo.list_ids("index"):
        for p in repo.load_record("index", iid)["packs"]:
            sizes[p["id"]] = p["size"]
            for t, bid, o, n, r in p["blobs"]:
                expected[bid] = IndexEntry(p["id"], t, o, n, r)
    for cache_dir in (None, cache, cache):  # no cache, first open, from the cache
        r = Repository.open(be, "pw", cache_dir=cache_dir)
        assert not r.index_errors
        _check(r.index, expected)
        assert r.pack_sizes == sizes
        assert r.index._packs == list(r.index._pack_no)
        assert all(r.index._packs[k] == p for p, k in r.index._pack_no.items())
    folder = cache / repo.id
    assert sorted(os.listdir(folder)) == sorted(names[:-1])  # the odd one is not cached
    for iid in names[:-1]:
        seg = index_segment(read_index_doc(lambda i: repo.load_record("index", i), iid), iid)
        got = IndexCache(folder).read(iid)
        assert got is not None and got.packs == seg.packs
        for col in ("ids", "pack", "offset", "length", "raw", "type"):
            assert getattr(got, col).tolist() == getattr(seg, col).tolist()
