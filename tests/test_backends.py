"""One conformance suite for every Backend (local and in-memory; S3 joins with replicas)."""

import os

import pytest

from engine.errors import NotFound
from engine.storage import LocalBackend, MemoryBackend


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path):
    if request.param == "local":
        return LocalBackend(tmp_path / "repo")
    return MemoryBackend()


def test_put_get_roundtrip_and_range(backend):
    backend.put("data/ab/abcdef", b"0123456789")
    assert backend.get("data/ab/abcdef") == b"0123456789"
    assert backend.get_range("data/ab/abcdef", 3, 4) == b"3456"
    assert backend.stat("data/ab/abcdef").size == 10
    assert backend.exists("data/ab/abcdef")


def test_missing_object_raises_not_found(backend):
    with pytest.raises(NotFound):
        backend.get("snapshots/nothing")
    with pytest.raises(NotFound):
        backend.get_range("snapshots/nothing", 0, 1)
    with pytest.raises(NotFound):
        backend.stat("snapshots/nothing")
    assert not backend.exists("snapshots/nothing")


def test_put_replaces_and_delete_is_idempotent(backend):
    backend.put("config", b"one")
    backend.put("config", b"two")
    assert backend.get("config") == b"two"
    backend.delete("config")
    backend.delete("config")
    assert not backend.exists("config")


def test_list_by_prefix(backend):
    names = {f"data/{i:02x}/{i:02x}{'0' * 62}" for i in range(20)}
    for n in names:
        backend.put(n, b"x" * 3)
    backend.put("index/aa", b"i")
    listed = {i.name: i.size for i in backend.list("data/")}
    assert set(listed) == names and set(listed.values()) == {3}
    assert [i.name for i in backend.list("index/")] == ["index/aa"]
    assert {i.name for i in backend.list("data/0")} == {n for n in names if n.startswith("data/0")}
    assert list(backend.list("wal/")) == []


def test_local_put_is_atomic_and_hides_temp_files(tmp_path):
    b = LocalBackend(tmp_path / "repo")
    b.put("snapshots/x", b"payload")
    # a crash mid-put leaves a hidden temporary file: never listed, never read as an object
    (tmp_path / "repo" / "snapshots" / ".tmp-deadbeef").write_bytes(b"partial")
    assert [i.name for i in b.list("snapshots/")] == ["snapshots/x"]
    assert sorted(os.listdir(tmp_path / "repo" / "snapshots")) == [".tmp-deadbeef", "x"]


def test_local_rejects_names_escaping_the_root(tmp_path):
    from engine.errors import RepositoryError

    b = LocalBackend(tmp_path / "repo")
    for bad in ("../x", "data/../../x", "/etc/passwd", "", "data//x", ".hidden"):
        with pytest.raises(RepositoryError):
            b.put(bad, b"x")
