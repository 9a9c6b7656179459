"""The catalog's cache of inventory rows (``ops/resolve.inventory_rows``), on a real engine.

``Engine.snapshots()`` opens (decrypts, decompresses, parses) a snapshot record
only the first time this catalog sees it; afterwards it reads the record's stored
bytes and checks they still hash to its name. These tests pin what that must not
change: the same rows, a record damaged in place still reported and left out, new
and forgotten snapshots seen at once, and a catalog that cannot be written still
listing everything.
"""

from __future__ import annotations

import sqlite3
from unittest.mock import ANY

import pytest

from engine.repo.repository import Repository


def _fill(sandbox, n: int = 3):
    engine = sandbox.engine(init=True)
    ids = []
    for i in range(n):
        (sandbox.src / f"file-{i}.txt").write_text(f"version {i}\n" * 100)
        ids.append(engine.backup("files", "src", replicate=False).id)
    return engine, ids


@pytest.fixture
def opened(monkeypatch):
    """The ids of the snapshot records opened (load_snapshot) from now on."""
    calls: list[str] = []
    load = Repository.load_snapshot

    def counted(self, sid):
        calls.append(sid)
        return load(self, sid)

    monkeypatch.setattr(Repository, "load_snapshot", counted)
    return calls


def _rows(engine) -> list[dict]:
    return [{**i.as_json(), "parent": i.parent, "files": i.files} for i in engine.snapshots()]


def _cached(sandbox) -> set[str]:
    db = sqlite3.connect(sandbox.state / "catalog.sqlite")
    try:
        return {r[0] for r in db.execute("SELECT snapshot FROM inventory_rows")}
    finally:
        db.close()


def test_a_second_listing_opens_no_record_and_gives_the_same_rows(sandbox, opened):
    engine, ids = _fill(sandbox)
    engine.catalog.mark_verified(ids[:1], read_data=False)
    opened.clear()  # the backups read the records too, to find their parent
    first = _rows(engine)
    assert [r["id"] for r in first] == ids  # oldest first
    assert sorted(opened) == sorted(ids)
    assert _cached(sandbox) == set(ids)
    opened.clear()
    fresh = sandbox.engine()  # another process: a new engine over the same catalog
    assert _rows(fresh) == first
    assert opened == []
    assert first[0]["verified"] and not first[1]["verified"]
    assert first[1]["parent"] == ids[0] and first[2]["files"] == 3


def test_a_record_damaged_in_place_is_reported_and_left_out(sandbox):
    engine, ids = _fill(sandbox)
    assert len(engine.snapshots()) == 3  # all three cached now
    path = sandbox.repo / "snapshots" / ids[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, other bytes
    path.write_bytes(bytes(data))
    fresh = sandbox.engine()
    assert [i.id for i in fresh.snapshots()] == [ids[0], ids[2]]
    assert "content does not match its name" in fresh.repo().snapshot_errors[ids[1]]
    proc = sandbox.cli("list")
    assert proc.returncode == 0
    assert f"snapshot {ids[1][:12]} cannot be read and is not listed".encode() in proc.stderr


def test_a_record_of_another_size_is_opened_again(sandbox, opened):
    engine, ids = _fill(sandbox, 2)
    engine.snapshots()
    path = sandbox.repo / "snapshots" / ids[0]
    path.write_bytes(path.read_bytes() + b"x")  # longer: not the bytes that were read
    opened.clear()
    fresh = sandbox.engine()
    assert [i.id for i in fresh.snapshots()] == [ids[1]]
    assert opened == [ids[0]]  # opened (and refused), not taken from the cache
    assert ids[0] in fresh.repo().snapshot_errors


def test_new_and_forgotten_snapshots_are_seen_at_once(sandbox, opened):
    engine, ids = _fill(sandbox, 2)
    engine.snapshots()
    (sandbox.src / "more.txt").write_text("more\n")
    third = engine.backup("files", "src", replicate=False).id
    opened.clear()
    assert [i.id for i in engine.snapshots()] == [*ids, third]
    assert opened == [third]
    engine.forget([ids[0]])
    assert [i.id for i in engine.snapshots()] == [ids[1], third]
    assert _cached(sandbox) == {ids[1], third}


def test_a_catalog_that_cannot_be_written_still_lists_everything(sandbox, opened):
    engine, ids = _fill(sandbox, 2)
    fresh = sandbox.engine()
    fresh.catalog.read_only = "this user may not write it"  # as for a non-admin
    opened.clear()
    assert [i.id for i in fresh.snapshots()] == ids
    assert [i.id for i in fresh.snapshots()] == ids
    assert sorted(opened) == sorted(ids + ids)  # nothing cached: each listing opens them
    assert _cached_or_none(sandbox) == set()


def _cached_or_none(sandbox) -> set[str]:
    try:
        return _cached(sandbox)
    except sqlite3.OperationalError:  # no table: nothing was ever cached
        return set()


def test_the_dashboard_history_reads_the_same_rows_without_opening_records(sandbox, opened):
    engine, ids = _fill(sandbox)
    uncached = sandbox.engine()
    uncached.catalog.read_only = "this user may not write it"  # every record opened
    expected = uncached.history(7)
    assert [b["time"][:19] for b in expected["backups"]] == [
        i.time.isoformat()[:19] for i in uncached.snapshots()]
    assert all(b["seconds"] and b["size"] and b["complete"] for b in expected["backups"])
    engine.snapshots()  # cached now
    opened.clear()
    assert sandbox.engine().history(7) == {**expected, "now": ANY}
    assert opened == []
