"""The fast reader of canonical index files (engine/repo/index.py, parse_canonical):
for any text it accepts, the same columns, bit for bit, as json.loads + check_index +
Segment.from_checked; any other text goes to that path and loads or fails exactly as
before. Random documents as the program writes them, documents a byte or a token away
from canonical, and whole repositories opened with and without the index cache."""

import json
import random
import threading

import pytest

from engine.errors import IntegrityError
from engine.repo import codec
from engine.repo.index import (
    MAX_PACK,
    MAX_SEALED_BLOB,
    Segment,
    check_index,
    index_segment,
    parse_canonical,
    read_index_doc,
)
from engine.repo.pack import DATA, TREE
from engine.repo.repository import Repository, sha256_hex
from engine.storage.local import LocalBackend

KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}
NAME = "index/" + "ab" * 32


def canonical(doc) -> bytes:
    """What Repository.save_record writes (docs/FORMAT.md 1.1)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def random_doc(rng: random.Random, packs: int | None = None) -> dict:
    """An index record as a backup or prune writes one, with the bounds' edges drawn
    often: 1- and 9-digit numbers, the largest pack, blob and raw length, empty packs,
    a pack or a blob named twice."""
    out = []
    used: list[str] = []
    for _ in range(rng.randrange(1, 12) if packs is None else packs):
        size = rng.choice([5, 6, 100, rng.randrange(5, 10**6), rng.randrange(5, MAX_PACK + 1),
                           MAX_PACK, 10**8, 10**8 - 1])
        rows = []
        for _ in range(rng.choice([0, 1, 2, rng.randrange(0, 40)])):
            end = size - 4
            n = rng.choice([1, end, min(end, MAX_SEALED_BLOB), rng.randrange(1, end + 1)])
            n = min(n, MAX_SEALED_BLOB)
            o = rng.choice([0, end - n, rng.randrange(0, end - n + 1)])
            r = rng.choice([0, 1, codec.MAX_RAW, rng.randrange(0, codec.MAX_RAW + 1)])
            bid = rng.choice(used) if used and rng.random() < 0.05 else rng.randbytes(32).hex()
            used.append(bid)
            rows.append([rng.choice([DATA, TREE]), bid, o, n, r])
        pid = out[-1]["id"] if out and rng.random() < 0.05 else rng.randbytes(32).hex()
        out.append({"blobs": rows, "id": pid, "size": size})
    return {"packs": out}


def slow(raw: bytes) -> Segment:
    """The reader before the fast path: parse_json, check_index, from_checked."""
    return Segment.from_checked(check_index(codec.parse_json(raw, NAME), NAME))


def columns(seg: Segment) -> tuple:
    return (seg.packs, seg.odd,
            *((c.dtype.str, c.shape, c.tobytes())
              for c in (seg.ids, seg.pack, seg.offset, seg.length, seg.raw, seg.type)))


def outcome(f, raw: bytes):
    try:
        return "ok", columns(f(raw))
    except (IntegrityError, KeyError, TypeError, ValueError) as e:
        return type(e).__name__, str(e)


def both_paths(raw: bytes):
    """The loader's path (fast when canonical, else the slow one), the slow path."""
    return (outcome(lambda b: index_segment(codec.RawJSON(b, NAME, codec.MAX_JSON_DEPTH),
                                            NAME[6:]), raw),
            outcome(slow, raw))


def test_random_canonical_documents_give_the_slow_paths_columns():
    rng = random.Random(1)
    for i in range(300):
        raw = canonical(random_doc(rng))
        fast = parse_canonical(raw)
        assert fast is not None, raw[:300]
        assert columns(fast) == columns(slow(raw)), i


def test_a_large_document_and_one_without_rows():
    rng = random.Random(2)
    raw = canonical(random_doc(rng, packs=3000))
    assert columns(parse_canonical(raw)) == columns(slow(raw))
    for doc in ({"packs": [{"blobs": [], "id": "cd" * 32, "size": 5}]},
                {"packs": [{"blobs": [], "id": "cd" * 32, "size": 5}] * 3}):
        raw = canonical(doc)
        assert columns(parse_canonical(raw)) == columns(slow(raw))
    # no packs at all: the slow path reads it (nothing to speed up)
    assert both_paths(b'{"packs":[]}')[0] == both_paths(b'{"packs":[]}')[1]


BASE = canonical({"packs": [
    {"blobs": [[DATA, "0a" * 32, 0, 50, 21], [TREE, "1b" * 32, 50, 7, 0]],
     "id": "2c" * 32, "size": 100},
    {"blobs": [[DATA, "3d" * 32, 10, 1, 1]], "id": "4e" * 32, "size": 15},
]})

# (what, the text): each a token or a byte away from BASE; some still load (the slow
# path reads them), some fail; the fast path takes none of them
NEAR = [
    ("space after a comma", BASE.replace(b",", b", ", 1)),
    ("newline at the end", BASE + b"\n"),
    ("space at the start", b" " + BASE),
    ("pretty printed", json.dumps(json.loads(BASE), indent=1).encode()),
    ("keys unsorted", BASE.replace(b'"id":"4e', b'"zz":1,"id":"4e')),
    ("id before blobs", BASE.replace(b'{"blobs":[["data","3d', b'{"id":"' + b"4e" * 32
                                     + b'","blobs":[["data","3d')
     .replace(b']],"id":"' + b"4e" * 32 + b'","size":15', b']],"size":15')),
    ("extra key", BASE.replace(b'"size":15}', b'"size":15,"x":[]}')),
    ("extra top key", BASE[:-1] + b',"v":1}'),
    ("duplicate key", BASE.replace(b'"size":15}', b'"size":16,"size":15}')),
    ("leading zero", BASE.replace(b",50,21]", b",050,21]")),
    ("plus sign", BASE.replace(b",50,21]", b",+50,21]")),
    ("negative offset", BASE.replace(b",10,1,1]", b",-10,1,1]")),
    ("fraction", BASE.replace(b",50,21]", b",50.0,21]")),
    ("exponent", BASE.replace(b",50,21]", b",5e1,21]")),
    ("ten digits", BASE.replace(b'"size":15}', b'"size":1000000015}')),
    ("size too small", BASE.replace(b'"size":15}', b'"size":4}')),
    ("size too large", BASE.replace(b'"size":15}', b'"size":%d}' % (MAX_PACK + 1))),
    ("row past its pack", BASE.replace(b",10,1,1]", b",10,2,1]")),
    ("zero length", BASE.replace(b",10,1,1]", b",10,0,1]")),
    ("raw too large", BASE.replace(b",10,1,1]", b",10,1,%d]" % (codec.MAX_RAW + 1))),
    ("upper-case blob id", BASE.replace(b"0a" * 32, b"0A" * 32)),
    ("upper-case pack id", BASE.replace(b"2c" * 32, b"2C" * 32)),
    ("odd blob id", BASE.replace(b"0a" * 32, b"zz" * 32)),
    ("short blob id", BASE.replace(b"0a" * 32, b"0a" * 31 + b"0")),
    ("long pack id", BASE.replace(b"2c" * 32, b"2c" * 33)),
    ("escaped id", BASE.replace(b'"' + b"0a" * 32, b'"\\u0030' + b"a" + b"0a" * 31)),
    ("escaped type", BASE.replace(b'["data","0a', b'["\\u0064ata","0a')),
    ("unknown type", BASE.replace(b'["data","0a', b'["date","0a')),
    ("capital type", BASE.replace(b'["data","0a', b'["Data","0a')),
    ("row of 4", BASE.replace(b",10,1,1]", b",10,1]")),
    ("row of 6", BASE.replace(b",10,1,1]", b",10,1,1,1]")),
    ("row is an object", BASE.replace(b',["tree","' + b"1b" * 32 + b'",50,7,0]', b",{}")),
    ("null size", BASE.replace(b'"size":15}', b'"size":null}')),
    ("true length", BASE.replace(b",10,1,1]", b",10,true,1]")),
    ("string offset", BASE.replace(b",10,1,1]", b',"10",1,1]')),
    ("nested row", BASE.replace(b'[["data"', b'[[["data"', 1).replace(b",50,21]", b",50,21]]", 1)),
    ("truncated", BASE[:-1]),
    ("truncated more", BASE[:-3]),
    ("byte order mark", b"\xef\xbb\xbf" + BASE),
    ("not ASCII", BASE.replace(b"0a" * 32, "é".encode() + b"0a" * 31 + b"0")),
    ("two documents", BASE + BASE),
    ("a number after the last pack", BASE[:-2] + b",1]}"),
    ("space before the end", BASE[:-2] + b" ]}"),
    ("a number before the first pack", BASE.replace(b'{"packs":[', b'{"packs":[1,', 1)),
    ("trailing comma", BASE.replace(b",50,21]", b",50,21,]")),
    ("empty row list comma", BASE.replace(b'[["data","3d', b'[,["data","3d')),
    ("packs not a list", b'{"packs":{}}'),
    ("no packs key", b'{"pack":[]}'),
    ("deep", b'{"packs":[' + b"[" * 100 + b"]" * 100 + b"]}"),
]


@pytest.mark.parametrize("what,raw", NEAR, ids=[w for w, _ in NEAR])
def test_documents_near_canonical_go_to_the_slow_path_and_end_as_before(what, raw):
    assert raw != BASE
    assert parse_canonical(raw) is None
    fast, before = both_paths(raw)
    assert fast == before


def test_the_near_cases_both_load_and_fail():
    """The list above is not all failures: the slow path loads some of them."""
    kinds = {both_paths(raw)[1][0] for _w, raw in NEAR}
    assert "ok" in kinds and "IntegrityError" in kinds


def test_random_byte_changes_are_refused_or_read_as_the_slow_path_reads_them():
    """Any byte of a canonical document replaced (by a digit, hex letter, structural
    byte or anything), dropped or doubled: the fast path either refuses the text or
    gives what the slow path gives (a digit for a digit, a hex letter for another)."""
    rng = random.Random(3)
    base = canonical(random_doc(rng, packs=6))
    alphabet = b'0123456789abcdefABCDEF[]{},:" \\-+.e\x00\xff'
    accepted = refused = 0
    for _ in range(3000):
        i = rng.randrange(len(base))
        how = rng.random()
        if how < 0.8:
            raw = base[:i] + bytes([rng.choice(alphabet)]) + base[i + 1:]
        elif how < 0.9:
            raw = base[:i] + base[i + 1:]
        else:
            raw = base[:i] + base[i:i + 1] + base[i:]
        fast = parse_canonical(raw)
        if fast is None:
            refused += 1
            continue
        accepted += 1
        assert columns(fast) == columns(slow(raw)), (i, raw[max(0, i - 20):i + 20])
    assert accepted > 100 and refused > 100


def test_a_document_whose_bounds_fail_gets_check_indexs_error():
    doc = json.loads(BASE)
    doc["packs"][0]["blobs"][1][2] = 94  # 94 + 7 > 100 - 4
    raw = canonical(doc)
    assert parse_canonical(raw) is None
    fast, before = both_paths(raw)
    assert fast == before and "outside the pack" in fast[1]


def put_record(repo: Repository, raw: bytes) -> str:
    """Raw JSON bytes stored as an index record (as tests/faults does it)."""
    stored = repo.keys.seal(codec.encode(raw, 3))
    rid = sha256_hex(stored)
    repo.backend.put(f"index/{rid}", stored)
    return rid


@pytest.fixture
def repo_dirs(tmp_path):
    be = LocalBackend(tmp_path / "repo")
    Repository.init(be, "pw", kdf=KDF)
    return be, tmp_path / "state" / "index-cache"


def test_a_repository_of_canonical_and_other_index_files_loads_as_the_slow_path_reads_it(
        repo_dirs):
    """Several files (read one ahead on a thread), canonical and not, loadable and
    not: the index, pack sizes and errors equal those of the JSON path read by hand
    (FORMAT.md section 4: ascending names, the last row for an id wins)."""
    be, cache = repo_dirs
    repo = Repository.open(be, "pw")
    rng = random.Random(4)
    shared = rng.randbytes(32).hex()
    for _ in range(4):
        doc = random_doc(rng, packs=5)
        doc["packs"][0]["blobs"].append([DATA, shared, 0, 1, 1])
        repo.save_record("index", doc)
    loose = json.dumps(random_doc(rng, packs=2), indent=2).encode()  # loads, slow path
    put_record(repo, loose)
    bad = put_record(repo, NEAR[[w for w, _ in NEAR].index("row past its pack")][1])
    expected, sizes = {}, {}
    for iid in repo.list_ids("index"):
        try:
            seg = slow(codec.decode(repo.keys.open(repo.stored_record("index", iid), "x"),
                                    "x"))
        except IntegrityError:
            continue
        for pid, size in seg.packs:
            sizes[pid] = size
        for k in range(seg.n):
            expected[seg.ids[k * 32:(k + 1) * 32].tobytes().hex()] = (
                seg.packs[seg.pack[k]][0], (DATA, TREE)[seg.type[k]], int(seg.offset[k]),
                int(seg.length[k]), int(seg.raw[k]))
    for cache_dir in (None, cache, cache):  # no cache, first open, next open
        r = Repository.open(be, "pw", cache_dir=cache_dir)
        assert set(r.index_errors) == {bad} and "outside the pack" in r.index_errors[bad]
        assert r.pack_sizes == sizes
        got = {b: (e.pack_id, e.type, e.offset, e.length, e.raw_length)
               for b, e in r.index.items()}
        assert got == expected


def test_the_raw_text_is_left_only_inside_the_context_and_only_on_its_thread(repo_dirs):
    be, _cache = repo_dirs
    repo = Repository.open(be, "pw")
    iid = repo.save_record("index", json.loads(BASE))
    sid = repo.save_record("snapshots", {"x": 1})
    seen = {}

    def other():
        seen["other"] = repo.load_record("index", iid)

    with codec.raw_json("index/"):
        inside = repo.load_record("index", iid)
        snap = repo.load_record("snapshots", sid)
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert isinstance(inside, codec.RawJSON) and inside.data == BASE
    assert inside.parse() == json.loads(BASE)
    assert snap == {"x": 1} and seen["other"] == json.loads(BASE)
    assert repo.load_record("index", iid) == json.loads(BASE)
    doc = read_index_doc(lambda i: repo.load_record("index", i), iid)
    assert isinstance(doc, codec.RawJSON)
    assert columns(index_segment(doc, iid)) == columns(slow(BASE))
    # a read_doc that returns a parsed document is read as before
    assert columns(index_segment(json.loads(BASE), iid)) == columns(slow(BASE))
