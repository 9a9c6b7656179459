"""One conformance suite for every Backend: local directory, in-memory and S3.

Every test below runs against each backend in ``BACKENDS`` and checks a promise
of engine.storage.base (the contract) or of a backend's own docstring. S3 runs
against a real moto_server (the session fixture ``s3_server``), in a fresh
bucket per test and under a key prefix, with the multipart threshold lowered so
that the large-object test takes the multipart path. A few local-only checks
(temporary files, names escaping the root) sit at the end.
"""

from __future__ import annotations

import inspect
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.errors import NotFound
from engine.storage import Backend, LocalBackend, MemoryBackend, ObjectInfo
from engine.storage.s3 import S3Backend

BACKENDS = ["local", "memory", "s3"]
MIB = 1024 * 1024
S3_PART = 5 * MIB  # the smallest part S3 accepts (except the last)

# Each method of the Backend protocol, with the tests below that hold it to its contract.
COVERED = {
    "get": "test_put_get_roundtrip",
    "get_range": "test_get_range_within_the_object",
    "put": "test_put_replaces_an_existing_object",
    "stat": "test_stat_and_exists",
    "exists": "test_stat_and_exists",
    "list": "test_list_by_prefix",
    "delete": "test_delete_removes_only_that_name_and_is_idempotent",
    "location": "test_location_names_the_place",
}


@pytest.fixture(params=BACKENDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def backend(kind, request, tmp_path, monkeypatch):
    if kind == "local":
        return LocalBackend(tmp_path / "repo")
    if kind == "memory":
        return MemoryBackend()
    import engine.storage.s3 as s3mod

    # The threshold is a module constant (no per-instance knob): lower it for this test only.
    monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", S3_PART + 1)
    monkeypatch.setattr(s3mod, "PART_SIZE", S3_PART)
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_buckets").use1
    return S3Backend(bucket, "us-east-1", prefix="repo/", endpoint_url=server.endpoint_url)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def names_of(backend, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


def protocol_members() -> set[str]:
    methods = {n for n, v in vars(Backend).items() if inspect.isfunction(v) and n[0] != "_"}
    return methods | set(Backend.__annotations__)


# ------------------------------------------------------------------ the protocol itself
def test_suite_covers_every_protocol_member():
    assert protocol_members() == set(COVERED)
    tests = {name for name in globals() if name.startswith("test_")}
    assert set(COVERED.values()) <= tests


def test_backend_has_the_protocol_methods_and_signatures(backend):
    for name in protocol_members() - set(Backend.__annotations__):
        want = list(inspect.signature(getattr(Backend, name)).parameters)[1:]
        got = list(inspect.signature(getattr(backend, name)).parameters)
        assert got == want, name
    assert isinstance(backend.location, str) and backend.location


# ------------------------------------------------------------------ put and get
@pytest.mark.parametrize("name", ["config", "data/ab/ab01", "snapshots/9f00"])
def test_put_get_roundtrip(backend, name):
    data = bytes(range(256)) * 3 + b"\x00\r\n"
    backend.put(name, data)
    assert backend.get(name) == data
    assert backend.get(name) == data  # reads are repeatable


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_put_accepts_bytes_like(backend, wrap):
    backend.put("index/bytes-like", wrap(b"payload"))
    got = backend.get("index/bytes-like")
    assert got == b"payload" and isinstance(got, bytes)


def test_empty_object(backend):
    backend.put("locks/empty", b"")
    assert backend.get("locks/empty") == b""
    assert backend.stat("locks/empty") == ObjectInfo("locks/empty", 0)
    assert backend.exists("locks/empty")
    assert backend.get_range("locks/empty", 0, 10) == b""
    assert list(backend.list("locks/")) == [ObjectInfo("locks/empty", 0)]


def test_put_replaces_an_existing_object(backend):
    backend.put("config", b"first version, longer")
    backend.put("config", b"second")
    assert backend.get("config") == b"second"
    assert backend.get_range("config", 1, 3) == b"eco"
    assert backend.stat("config").size == 6
    assert list(backend.list("config")) == [ObjectInfo("config", 6)]


def test_replace_is_seen_by_range_reads_of_a_pack(backend):
    """Replacing a pack that was range-read before must not serve the old bytes."""
    name = "data/ab/" + "ab" * 32
    backend.put(name, b"old-old-old")
    assert backend.get_range(name, 4, 3) == b"old"
    backend.put(name, b"new-new-new")
    assert backend.get_range(name, 4, 3) == b"new"
    assert backend.get(name) == b"new-new-new"


# ------------------------------------------------------------------ ranges
@pytest.mark.parametrize("name", ["data/ab/range", "index/range"])
def test_get_range_within_the_object(backend, name):
    data = payload(1000)
    backend.put(name, data)
    for offset, length in [(0, 1), (3, 4), (0, 1000), (999, 1), (500, 250)]:
        assert backend.get_range(name, offset, length) == data[offset:offset + length]


@pytest.mark.parametrize("name", ["data/ab/range", "index/range"])
def test_get_range_past_the_end_is_clipped(backend, name):
    backend.put(name, b"0123456789")
    assert backend.get_range(name, 8, 5) == b"89"
    assert backend.get_range(name, 0, 100) == b"0123456789"
    assert backend.get_range(name, 10, 5) == b""
    assert backend.get_range(name, 20, 5) == b""


@pytest.mark.parametrize("name", ["data/ab/range", "index/range"])
def test_get_range_of_zero_length(backend, name):
    backend.put(name, b"0123456789")
    assert backend.get_range(name, 0, 0) == b""
    assert backend.get_range(name, 5, 0) == b""
    with pytest.raises(NotFound):
        backend.get_range(name + "-missing", 0, 0)


# ------------------------------------------------------------------ stat, exists, missing
def test_stat_and_exists(backend):
    backend.put("snapshots/s1", b"12345")
    info = backend.stat("snapshots/s1")
    assert info == ObjectInfo("snapshots/s1", 5) and isinstance(info, ObjectInfo)
    assert backend.exists("snapshots/s1") is True
    assert backend.exists("snapshots/s2") is False


@pytest.mark.parametrize("name", ["config", "snapshots/nothing", "data/ab/" + "00" * 32])
def test_missing_object_raises_not_found_naming_it(backend, name):
    reads = [
        lambda: backend.get(name),
        lambda: backend.get_range(name, 0, 1),
        lambda: backend.get_range(name, 0, 0),
        lambda: backend.stat(name),
    ]
    for read in reads:
        with pytest.raises(NotFound) as caught:
            read()
        assert name in str(caught.value)
        assert backend.location.split(" ")[0] in str(caught.value)
    assert backend.exists(name) is False


def test_reads_have_no_side_effects(backend):
    backend.put("data/ab/one", b"1")
    before = sorted(backend.list())
    for name in ("data/ab/one", "data/cd/missing", "keys/missing"):
        backend.exists(name)
        for read in (backend.get, backend.stat, lambda n: backend.get_range(n, 0, 1)):
            try:
                read(name)
            except NotFound:
                pass
        list(backend.list(name))
    assert sorted(backend.list()) == before


# ------------------------------------------------------------------ delete
def test_delete_removes_only_that_name_and_is_idempotent(backend):
    pack = "data/ab/" + "cd" * 32
    backend.put(pack, b"pack bytes")
    backend.put(pack + "0", b"sibling")
    assert backend.get_range(pack, 0, 4) == b"pack"  # a read before the delete
    backend.delete(pack)
    with pytest.raises(NotFound):
        backend.get(pack)
    with pytest.raises(NotFound):
        backend.get_range(pack, 0, 4)
    with pytest.raises(NotFound):
        backend.stat(pack)
    assert not backend.exists(pack)
    assert names_of(backend, "data/") == {pack + "0"}
    backend.delete(pack)  # again
    backend.delete("snapshots/never-existed")
    assert backend.get(pack + "0") == b"sibling"


def test_put_after_delete(backend):
    backend.put("locks/l1", b"one")
    backend.delete("locks/l1")
    backend.put("locks/l1", b"two")
    assert backend.get("locks/l1") == b"two"


# ------------------------------------------------------------------ list
def test_list_by_prefix(backend):
    packs = {f"data/{i % 16:02x}/{i:064x}": 1 + i % 7 for i in range(300)}
    others = {"index/aa": 2, "snapshots/s1": 3, "config": 4, "database": 5}
    everything = packs | others
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: backend.put(item[0], b"x" * item[1]), everything.items()))

    def listed(prefix: str) -> dict[str, int]:
        infos = list(backend.list(prefix))
        assert all(isinstance(i, ObjectInfo) for i in infos)
        by_name = {i.name: i.size for i in infos}
        assert len(by_name) == len(infos), "a name listed twice"
        return by_name

    assert listed("") == everything
    assert listed("data/") == packs
    assert listed("data/0a/") == {n: s for n, s in packs.items() if n.startswith("data/0a/")}
    assert listed("data/0") == {n: s for n, s in packs.items() if n.startswith("data/0")}
    assert listed("data") == packs | {"database": 5}  # a prefix, not a folder
    assert listed("index/") == {"index/aa": 2}
    assert listed("config") == {"config": 4}  # a whole name is a prefix of itself
    assert listed("wal/") == {}
    assert listed("nothing/at/all/") == {}


def test_nested_names_and_their_folders(backend):
    deep = {
        "wal/main/00000001/000000010000000000000001": b"seg1",
        "wal/main/00000001/000000010000000000000002": b"seg2",
        "wal/main/00000002.history": b"hist",
        "wal/other/00000001/000000010000000000000001": b"other",
    }
    for name, data in deep.items():
        backend.put(name, data)
    for name, data in deep.items():
        assert backend.get(name) == data and backend.get_range(name, 1, 2) == data[1:3]
    assert names_of(backend, "wal/main/") == {n for n in deep if n.startswith("wal/main/")}
    assert names_of(backend, "wal/main/00000001/") == set(list(deep)[:2])
    # the folders between are no objects: missing for every call, and delete leaves them
    for folder in ("wal", "wal/main", "wal/main/00000001"):
        assert not backend.exists(folder)
        for read in (backend.get, backend.stat, lambda n: backend.get_range(n, 0, 1)):
            with pytest.raises(NotFound):
                read(folder)
        backend.delete(folder)
    # nor is a name below an object
    for below in ("wal/main/00000002.history/x", "data/ab/x/y"):
        assert not backend.exists(below)
        with pytest.raises(NotFound):
            backend.get(below)
        backend.delete(below)
    assert names_of(backend, "wal/") == set(deep)


# ------------------------------------------------------------------ large objects
def test_large_object(backend, kind):
    data = payload(2 * S3_PART + 12345, seed=1)  # three parts on S3
    name = "data/ff/" + "ff" * 32
    backend.put(name, data)
    assert backend.stat(name).size == len(data)
    assert backend.get(name) == data
    for offset in (0, S3_PART - 3, 2 * S3_PART - 1, len(data) - 10):
        assert backend.get_range(name, offset, 7) == data[offset:offset + 7]
    assert list(backend.list("data/ff/")) == [ObjectInfo(name, len(data))]
    if kind == "s3":  # it went the multipart way
        head = backend.client.head_object(Bucket=backend.bucket, Key=backend.key(name))
        assert head["ETag"].strip('"').endswith("-3")


# ------------------------------------------------------------------ threads
def test_concurrent_puts_from_threads(backend):
    names = [f"data/{i % 8:02x}/{i:08x}" for i in range(160)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: backend.put(n, n.encode() * 3), names))
    assert names_of(backend, "data/") == set(names)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(backend.get, names))
    assert got == [n.encode() * 3 for n in names]


def test_concurrent_replace_is_atomic(backend):
    """Readers racing writers of one name see one whole version, never a mix or a part."""
    versions = [bytes([v]) * (20_000 + 1000 * v) for v in range(6)]
    backend.put("config", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                data = backend.get("config")
            except NotFound:
                bad.append("NotFound during replace")
                return
            if data not in versions:
                bad.append(f"torn read: {len(data)} bytes")
                return
            seen.append(data)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda v: backend.put("config", v), versions[1:] * 3))
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert bad == [] and seen
    assert backend.get("config") in versions[1:]


def test_list_during_puts_shows_only_whole_objects(backend):
    data = payload(64 * 1024, seed=2)
    names = {f"index/{i:04d}" for i in range(48)}
    stop = threading.Event()
    bad: list[ObjectInfo] = []

    def lister() -> None:
        while not stop.is_set():
            bad.extend(i for i in backend.list("index/")
                       if i.name not in names or i.size != len(data))

    t = threading.Thread(target=lister)
    t.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: backend.put(n, data), sorted(names)))
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert {i.name: i.size for i in backend.list("index/")} == dict.fromkeys(names, len(data))


# ------------------------------------------------------------------ location
def test_location_names_the_place(backend, kind, tmp_path):
    expected = {
        "local": str(tmp_path / "repo"),
        "memory": "memory",
        "s3": f"s3://{getattr(backend, 'bucket', '')}/repo/",
    }[kind]
    assert backend.location == expected


# ------------------------------------------------------------------ local only
def test_local_put_is_atomic_and_hides_temp_files(tmp_path):
    b = LocalBackend(tmp_path / "repo")
    b.put("snapshots/x", b"payload")
    # a crash mid-put leaves a hidden temporary file: never listed, never read as an object
    (tmp_path / "repo" / "snapshots" / ".tmp-deadbeef").write_bytes(b"partial")
    assert [i.name for i in b.list("snapshots/")] == ["snapshots/x"]
    assert [i.name for i in b.list()] == ["snapshots/x"]
    assert sorted(os.listdir(tmp_path / "repo" / "snapshots")) == [".tmp-deadbeef", "x"]


def test_local_rejects_names_escaping_the_root(tmp_path):
    from engine.errors import RepositoryError

    b = LocalBackend(tmp_path / "repo")
    for bad in ("../x", "data/../../x", "/etc/passwd", "", "data//x", ".hidden"):
        with pytest.raises(RepositoryError):
            b.put(bad, b"x")


def test_local_pack_replaced_by_another_process_is_reread(tmp_path):
    """Open pack files are reused between reads; a rename over one (another process
    repairing it) or its removal (another process pruning) must be noticed."""
    b = LocalBackend(tmp_path / "repo")
    name = "data/ab/" + "ab" * 32
    b.put(name, b"old-bytes")
    assert b.get_range(name, 0, 3) == b"old"
    other = LocalBackend(tmp_path / "repo")
    other.put(name, b"new-bytes")
    assert b.get_range(name, 0, 3) == b"new"
    os.unlink(tmp_path / "repo" / "data" / "ab" / ("ab" * 32))
    with pytest.raises(NotFound):
        b.get_range(name, 0, 3)
