"""Property-based fuzzing (hypothesis) of every reader of repository data and of the
config loader: each input either parses or raises one of the project's named errors
(an ``EngineError`` subclass), never anything else: no ValueError, KeyError,
TypeError, RecursionError, MemoryError or binascii.Error escapes a reader.

Readers: codec.decode (the compression envelope), codec.parse_json (every record),
pack headers (read_header, parse_header), index records (parse_index), records
through Repository.load_record, tree blobs through load_tree / children / walk,
a tree node's fields (node_name, link_target, node_xattrs, node_holes,
hardlink_key), Repository.open over a fuzzed config and keys/ records, and
engine.config.parse_config over TOML-like documents.

Bounded: a fixed number of examples per property (20 times more with
--fault-budget=long, or FUZZ_EXAMPLES=N), a deadline per example, sizes capped,
seeded with --fault-seed so a run repeats, and no example database written into
the working tree.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import os
import tomllib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.repo import codec
from engine.repo.crypto import Keys, wrap_master
from engine.repo.pack import DATA, TREE, PackBuilder, parse_header, read_header
from engine.repo.repository import Repository, parse_index
from engine.repo.tree import (
    encode_tree,
    hardlink_key,
    link_target,
    node_holes,
    node_name,
    node_xattrs,
)
from engine.repo.walk import children, walk
from engine.storage.memory import MemoryBackend

CLS = "fuzz"
CHEAP_KDF = {"name": "scrypt", "n": 2**4, "r": 1, "p": 1}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None


def run_property(budget, examples: int, prop, *strategies) -> None:
    """Check ``prop`` over ``strategies``: ``examples`` inputs in the bounded campaign
    (20 times as many with --fault-budget=long, or FUZZ_EXAMPLES), seeded with
    --fault-seed, a deadline per example, no example database in the working tree."""
    n = EXAMPLES or budget.pick(examples, examples * 20)
    test = given(*strategies)(prop)
    test = seed(budget.seed)(test)
    settings(max_examples=n, deadline=datetime.timedelta(seconds=5), database=None,
             print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(test)()


def named_or_ok(fn, *args, **kwargs):
    """Call a reader: a result or an EngineError; anything else fails the property."""
    try:
        return fn(*args, **kwargs)
    except EngineError as e:
        assert str(e), "a named error has a message"
        return None


@pytest.fixture(autouse=True)
def _record(fault_report, request):
    """One line of the campaign report per property (its outcome: failed or not)."""
    failed = request.session.testsfailed
    yield
    outcome = "failed" if request.session.testsfailed > failed else "survived"
    fault_report.record(CLS, outcome, request.node.name)


# ---------------------------------------------------------------- strategies

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)


def _frame(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """A valid byte string with a few flips, truncations, insertions or duplications."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "set"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            data += data[: draw(st.integers(1, 64))]
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
    return bytes(data)


# ---------------------------------------------------------------- codec / JSON


def _codec_decode(payload, cap):
    out = named_or_ok(codec.decode, payload, "fuzz", cap)
    assert out is None or len(out) <= cap


def test_codec_decode(fault_budget):
    run_property(fault_budget, 300, _codec_decode, st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"\x01" + b"\x28\xb5\x2f\xfd" + b),
        st.binary(max_size=3000).flatmap(lambda b: mutated(b"\x01" + _frame(b * 3))),
        st.binary(max_size=3000).flatmap(lambda b: mutated(b"\x01" + _frame(b * 3, False))),
    ), st.integers(0, 1 << 20))


def _parse_json(raw):
    named_or_ok(codec.parse_json, raw, "snapshots/fuzz")


def test_parse_json(fault_budget):
    run_property(fault_budget, 300, _parse_json, st.one_of(
        st.binary(max_size=300),
        json_value.map(lambda v: json.dumps(v).encode()),
        json_value.flatmap(lambda v: mutated(json.dumps(v).encode())),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 3000).map(lambda n: b'["' * n),
    ))


def test_parse_json_depth_error_names_the_object():
    with pytest.raises(EngineError, match=r"snapshots/x: nested deeper than 64"):
        codec.parse_json(b"[" * 100_000 + b"]" * 100_000, "snapshots/x")
    assert codec.parse_json(b"[" * 64 + b"]" * 64, "x") is not None


# ---------------------------------------------------------------- packs, index


def _pack(keys: Keys, n: int) -> tuple[str, bytes]:
    pb = PackBuilder()
    for i in range(n):
        raw = os.urandom(50) * (i + 1)
        pb.add(DATA, keys.blob_id(raw), keys.seal(codec.encode(raw, 3)), len(raw))
    return pb.finish(keys)


_PLAIN = Keys(None)
_SEALED = Keys(os.urandom(64))
_PACKS = [(_PLAIN, *_pack(_PLAIN, 3)), (_SEALED, *_pack(_SEALED, 3))]


def _read_header(which, data):
    keys, pid, pack = _PACKS[which]
    fuzzed = data.draw(st.one_of(mutated(pack), st.binary(max_size=200),
                                 st.binary(max_size=64).map(lambda b: pack[:-4] + b[:4])))
    entries = named_or_ok(read_header, keys, fuzzed, pid)
    for e in entries or ():
        assert 0 <= e.offset and 0 < e.length and e.offset + e.length <= len(fuzzed)


def test_read_header(fault_budget):
    run_property(fault_budget, 300, _read_header, st.integers(0, 1), st.data())


def _parse_header_and_index(value, end):
    raw = json.dumps(value).encode()
    named_or_ok(parse_header, raw, end, "data/fuzz")
    doc = {"packs": [{"id": "a" * 64, "size": end, "blobs": value}]}
    named_or_ok(parse_index, value, "index/fuzz")
    packs = named_or_ok(parse_index, doc, "index/fuzz")
    for _pid, size, entries, _ids in packs or ():
        for e in entries:
            assert 0 <= e.offset and e.offset + e.length <= size - 4


def test_parse_header_and_index(fault_budget):
    run_property(fault_budget, 300, _parse_header_and_index, st.one_of(
        json_value,
        st.lists(st.lists(st.one_of(st.sampled_from([DATA, TREE, "x"]), st.integers(-5, 2**45),
                                st.just("a" * 64), json_leaf), max_size=6), max_size=5),
    ), st.integers(0, 2**41))


# ---------------------------------------------------------------- records, trees


def _repo(keys: Keys | None = None) -> Repository:
    backend = MemoryBackend()
    return Repository.init(backend, None)


def _load_record_and_snapshot(stored):
    repo = _repo()
    rid = hashlib.sha256(stored).hexdigest()
    repo.backend.put(f"snapshots/{rid}", stored)
    repo.backend.put(f"index/{rid}", stored)
    named_or_ok(repo.load_record, "snapshots", rid)
    named_or_ok(repo.load_snapshot, rid)
    list(repo.snapshots())
    repo.load_index()  # a bad index file is skipped and named, never raised


def test_load_record_and_snapshot(fault_budget):
    run_property(fault_budget, 200, _load_record_and_snapshot, st.one_of(st.binary(max_size=300),
                 json_value.map(lambda v: b"\x00" + json.dumps(v).encode()),
                 json_value.map(lambda v: b"\x01" + _frame(json.dumps(v).encode() * 3)),
                 json_value.flatmap(lambda v: mutated(b"\x01" + _frame(
                     json.dumps(v).encode() * 3)))))


node_value = st.fixed_dictionaries(
    {}, optional={
        "name": st.one_of(st.text(max_size=10), json_leaf),
        "name_b64": st.one_of(st.text(max_size=12), st.binary(max_size=8).map(
            lambda b: base64.b64encode(b).decode())),
        "type": st.one_of(st.sampled_from(["dir", "file", "symlink", "fifo", "socket"]),
                          json_leaf),
        "subtree": st.one_of(st.just("SELF"), st.just("OTHER"), json_leaf),
        "content": st.one_of(st.lists(st.text(max_size=64), max_size=3), json_value),
        "target": json_leaf, "target_b64": st.one_of(st.text(max_size=12), json_leaf),
        "xattrs": json_value, "holes": json_value, "size": json_leaf,
        "links": json_leaf, "dev": json_leaf, "inode": json_leaf,
    })


def _tree_blob_walk(doc):
    repo = _repo()
    other_raw = encode_tree([{"name": "leaf", "type": "file", "content": []}])
    with repo.writer() as w:
        other = w.save(TREE, other_raw)
        text = json.dumps(doc).replace('"OTHER"', json.dumps(other))
        # a tree cannot name its own id before it exists: SELF becomes a sibling
        sibling = w.save(TREE, text.replace('"SELF"', json.dumps(other)).encode())
        tid = w.save(TREE, text.replace('"SELF"', json.dumps(sibling)).encode())
        w.commit()
    named_or_ok(repo.load_tree, tid)
    named_or_ok(children, repo, tid, "fuzz")
    named_or_ok(lambda: list(walk(repo, tid)))


def test_tree_blob_walk(fault_budget):
    run_property(fault_budget, 200, _tree_blob_walk, st.one_of(
        st.dictionaries(st.text(max_size=5), json_value, max_size=3),
        st.lists(node_value, max_size=6).map(lambda ns: {"nodes": ns}),
        json_value))


def _node_fields(node):
    named_or_ok(node_name, node, "fuzz")
    named_or_ok(node_xattrs, node, "fuzz")
    named_or_ok(node_holes, node, "fuzz")
    named_or_ok(link_target, node)
    named_or_ok(hardlink_key, node)


def test_node_fields(fault_budget):
    run_property(fault_budget, 400, _node_fields, node_value)


# ---------------------------------------------------------------- config and keys


def _base_repo() -> tuple[MemoryBackend, dict, bytes]:
    backend = MemoryBackend()
    Repository.init(backend, "pw", kdf=CHEAP_KDF)
    cfg = json.loads(backend.get("config"))
    return backend, cfg, backend.get("config")


_BASE = _base_repo()
_CONFIG_PATHS = [("chunker", "min"), ("chunker", "avg"), ("chunker", "max"), ("chunker", "seed"),
                 ("encryption", "kdf", "n"), ("encryption", "kdf", "r"),
                 ("encryption", "kdf", "p"), ("encryption", "kdf", "salt"),
                 ("encryption", "kdf", "name"), ("encryption", "kdf"),
                 ("encryption", "wrapped_key"), ("encryption",), ("compression",),
                 ("mac",), ("id",), ("version",), ("chunker",), ("format",)]


def _open_config_and_keys(edits, key_records, raw_config, data):
    backend, cfg, raw = _BASE
    be = MemoryBackend()
    cfg = copy.deepcopy(cfg)
    for path, value in edits:
        obj = cfg
        for k in path[:-1]:
            if not isinstance(obj.get(k), dict):
                break
            obj = obj[k]
        else:
            obj[path[-1]] = value
    be.put("config", data.draw(mutated(raw)) if raw_config else json.dumps(cfg).encode())
    for i, rec in enumerate(key_records):
        be.put(f"keys/{i}", rec)
    named_or_ok(Repository.open, be, "pw")
    named_or_ok(Repository.open, be, "wrong")
    named_or_ok(Repository.open, be, None)


def test_open_config_and_keys(fault_budget):
    records = st.one_of(st.binary(max_size=100), json_value.map(lambda v: json.dumps(v).encode()))
    run_property(fault_budget, 150, _open_config_and_keys,
                 st.lists(st.tuples(st.sampled_from(_CONFIG_PATHS), json_value), max_size=3),
                 st.lists(records, max_size=3), st.booleans(), st.data())


def test_open_falls_back_to_a_good_key_record():
    backend, cfg, raw = _BASE
    from engine.repo.crypto import unwrap_master

    master = unwrap_master("pw", cfg["encryption"])
    be = MemoryBackend()
    be.put("config", raw)
    be.put("keys/a", b"[" * 10_000 + b"]" * 10_000)
    be.put("keys/b", json.dumps({"kdf": {**CHEAP_KDF, "n": "x"}, "wrapped_key": ""}).encode())
    be.put("keys/c", json.dumps(wrap_master("second", master, CHEAP_KDF)).encode())
    assert Repository.open(be, "second").id == cfg["id"]


# ---------------------------------------------------------------- config loader

_EXAMPLE = tomllib.loads((Path(__file__).parents[2] / "config.example.toml").read_text())

toml_leaf = st.one_of(st.booleans(), st.integers(-2**64, 2**64), st.floats(),
                      st.text(max_size=30), st.datetimes(), st.dates(), st.times(),
                      st.sampled_from(["", "zstd:99", "none", "0 2 * * *", "UTC", "x/y",
                                       "GOVERNANCE", "custom", "directory", "/tmp"]))
toml_value = st.recursive(toml_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


_EXAMPLE_PATHS = list(_paths(_EXAMPLE))


def _parse_config(edits, extra):
    from engine.config import parse_config

    doc = copy.deepcopy(_EXAMPLE)
    for path, value in edits:
        obj = doc
        try:
            for k in path[:-1]:
                obj = obj[k]
            if value == "__delete__":
                del obj[path[-1]]
            else:
                obj[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            assume(False)
    doc.update(extra)
    named_or_ok(parse_config, doc)



def test_parse_config(fault_budget):
    edits = st.lists(st.tuples(st.sampled_from(_EXAMPLE_PATHS),
                               st.one_of(toml_value, st.just("__delete__"))), max_size=4)
    run_property(fault_budget, 300, _parse_config, edits,
                 st.dictionaries(st.text(max_size=10), toml_value, max_size=2))
