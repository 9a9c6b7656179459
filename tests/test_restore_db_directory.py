"""A directory-format snapshot restored in parallel without staging its data.

FIFOs in place of the data files under ``pg_restore -Fd -j`` were tried first; pg_restore
refuses them ('"N.dat" is not a regular file', pg_restore 15.20), so the tables' data goes
through COPY on parallel connections of ours instead (engine/ops/restore_db_parallel.py,
``restore_directory``). These tests use a real server (the pg_cluster fixture): the
restored database matches its source, nothing of the data is staged on disk, a cancel
leaves no thread, process, session or database behind, and a corrupt blob in one table's
file fails the restore with an error naming that table and the blob.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest

from engine.errors import Cancelled, EngineError
from engine.events import CancelToken
from engine.repo.pack import pack_name
from engine.repo.walk import walk

SCHEMA = """
CREATE TABLE big (id bigint PRIMARY KEY, body text NOT NULL);
INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || repeat(' ', g % 17)
  FROM generate_series(1, 150000) g;
CREATE TABLE parent (id serial PRIMARY KEY, name text UNIQUE);
INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, 3000) g;
CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent(id), note text);
INSERT INTO child (parent_id, note) SELECT 1 + g % 3000, repeat('n', g % 40)
  FROM generate_series(1, 20000) g;
CREATE INDEX child_parent ON child (parent_id);
CREATE SCHEMA "Odd, Schema";
CREATE TABLE "Odd, Schema"."t FROM
 stdin;" ("col,
 x" int, "y""q" text);
INSERT INTO "Odd, Schema"."t FROM
 stdin;" VALUES (1, E'tab\\there'), (2, E'line\\nbreak'), (3, NULL), (4, '\\.');
CREATE TABLE empty_one (a int);
CREATE SEQUENCE counter START 100;
SELECT nextval('counter'), nextval('counter');
SELECT lo_from_bytea(0, 'a large object');
"""

TABLES = ("public.big", "public.parent", "public.child", '"Odd, Schema"."t FROM\n stdin;"',
          "public.empty_one")


def fingerprint(cluster, db: str) -> dict:
    out = {}
    for table in TABLES:
        out[table] = cluster.psql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY "
            f"t::text)), '-') FROM {table} t", db).strip()
    out["counter"] = cluster.psql("SELECT last_value FROM counter", db).strip()
    out["large objects"] = cluster.psql(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(encode(lo_get(oid), 'hex'), ',' "
        "ORDER BY oid)), '-') FROM pg_largeobject_metadata", db).strip()
    out["indexes"] = cluster.psql(
        "SELECT string_agg(indexdef, ';' ORDER BY indexdef) FROM pg_indexes "
        "WHERE schemaname NOT IN ('pg_catalog')", db).strip()
    out["constraints"] = cluster.psql(
        "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ';' ORDER BY conname) "
        "FROM pg_constraint WHERE connamespace::regnamespace::text NOT IN ('pg_catalog')",
        db).strip()
    return out


@pytest.fixture
def dir_sandbox(sandbox, pg_cluster):
    name = f"dirfmt_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA, name)
    sandbox.extra = (f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(name)}"\n'
                     'format = "directory"\njobs = 2\n')
    sandbox.write_config()
    sandbox.db = name
    return sandbox


def restoring_dbs(cluster) -> list[str]:
    return cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE "
                        "'%\\_\\_restoring\\_%'").split()


def sessions_on(cluster, pattern: str) -> list[str]:
    return cluster.psql("SELECT datname FROM pg_stat_activity WHERE datname LIKE "
                        f"'{pattern}'").split()


_BEFORE: set[int] = set()  # this process's children when the test began


@pytest.fixture(autouse=True)
def _children_before():
    """The suite's own long-lived children (a server a fixture started earlier) are not
    this test's: children() reports only processes started since the test began."""
    _BEFORE.clear()
    _BEFORE.update(_all_children())
    yield


def children() -> list[int]:
    """Processes whose parent is this one and that this test started (a pg_restore left
    running would be one)."""
    return [pid for pid in _all_children() if pid not in _BEFORE]


def _all_children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != b"Z":
            out.append(int(entry))
    return out


def copy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("restore-copy")]


def biggest_data_file(repo, snap) -> tuple[str, dict]:
    files = {os.fsdecode(p): n for p, n in walk(repo, snap["tree"]) if n["type"] == "file"}
    name = max((n for n in files if n.endswith(".dat")), key=lambda n: files[n]["size"])
    return name, files[name]


def test_directory_snapshot_restores_with_parallel_copies_and_nothing_staged(dir_sandbox,
                                                                             pg_cluster):
    sb = dir_sandbox
    eng = sb.engine(init=True)
    res = eng.backup("db", "shop")
    snap = eng.snapshot(res.id)
    assert snap["postgres"]["format"] == "directory" and "tree" in snap
    name, node = biggest_data_file(eng.repo(), snap)
    assert len(node["content"]) > 1  # the big table's file is several blobs
    scratch = sb.state / "tmp"
    staged = []  # bytes in the scratch folder, seen at each progress event

    def on_event(ev) -> None:
        if ev.phase == "restore" and scratch.exists():
            staged.append(sum(p.stat().st_size for p in scratch.rglob("*") if p.is_file()))

    target = f"restored_{uuid.uuid4().hex[:8]}"
    result = eng.restore(eng.plan_restore(res.id, target_db=target), on_event=on_event)
    assert result.target_db == target
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, sb.db)
    assert staged and max(staged) < node["size"] // 4  # toc.dat and the large object only
    assert result.bytes >= node["size"]
    assert not scratch.exists() or list(scratch.iterdir()) == []
    assert copy_threads() == [] and children() == []
    # the schema is the same, statement by statement
    def schema(db: str) -> list[str]:
        out = subprocess.run([str(pg_cluster.bin_dir / "pg_dump"), "--schema-only", "-d", db],
                             capture_output=True, text=True, check=True,
                             env=pg_cluster.client_environ(db)).stdout
        return [ln for ln in out.splitlines() if not ln.startswith(("\\restrict",
                                                                      "\\unrestrict"))]
    assert schema(target) == schema(sb.db)


def test_cancel_during_the_copies_leaves_no_thread_process_or_database(dir_sandbox,
                                                                       pg_cluster):
    sb = dir_sandbox
    eng = sb.engine(init=True)
    res = eng.backup("db", "shop")
    cancel = CancelToken()
    seen = []

    def on_event(ev) -> None:
        if ev.phase == "restore" and ev.bytes_done > 0:
            seen.append(ev.bytes_done)
            cancel.cancel()  # after the first blob of a table was sent

    target = f"restored_{uuid.uuid4().hex[:8]}"
    plan = eng.plan_restore(res.id, target_db=target)
    with pytest.raises(Cancelled):
        eng.restore(plan, on_event=on_event, cancel=cancel)
    assert seen
    assert copy_threads() == [] and children() == []
    assert restoring_dbs(pg_cluster) == [] and sessions_on(pg_cluster, "%__restoring_%") == []
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target}'"
                           ).strip() == "0"
    scratch = sb.state / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    # and the same snapshot restores after it
    eng.restore(eng.plan_restore(res.id, target_db=target))
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, sb.db)


def test_a_corrupt_blob_in_one_tables_file_fails_the_restore_naming_it(dir_sandbox,
                                                                        pg_cluster):
    sb = dir_sandbox
    eng = sb.engine(init=True)
    res = eng.backup("db", "shop")
    repo = eng.repo()
    name, node = biggest_data_file(repo, eng.snapshot(res.id))
    bad = node["content"][len(node["content"]) // 2]
    entry = repo.index[bad]
    path = sb.repo / pack_name(entry.pack_id)
    with open(path, "r+b") as f:
        at = entry.offset + entry.length // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    target = f"restored_{uuid.uuid4().hex[:8]}"
    with pytest.raises(EngineError) as err:
        eng.restore(eng.plan_restore(res.id, target_db=target))
    text = str(err.value)
    assert "public.big" in text and name in text and bad[:16] in text, text
    assert copy_threads() == [] and children() == []
    assert restoring_dbs(pg_cluster) == []
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target}'"
                           ).strip() == "0"


def test_format_auto_chooses_by_size_and_scratch_room():
    """format = "auto" (the default): custom below AUTO_DIRECTORY_BYTES, directory from
    it when the scratch folder has the database's size free, else custom, saying why."""
    from engine.sources.database import (
        AUTO_DIRECTORY_BYTES,
        DatabaseConfig,
        choose_format,
        dump_jobs,
    )

    auto = DatabaseConfig(name="app")
    assert auto.format == "auto" and auto.jobs == 0
    assert 1 <= dump_jobs(auto) <= 4 and dump_jobs(DatabaseConfig(name="a", jobs=3)) == 3
    big = AUTO_DIRECTORY_BYTES
    assert choose_format(auto, big - 1, 10 * big)[0] == "custom"
    fmt, why = choose_format(auto, big, 10 * big)
    assert fmt == "directory" and "format auto" in why
    fmt, why = choose_format(auto, 2 * big, big)
    assert fmt == "custom" and "free" in why
    for configured in ("custom", "directory"):
        assert choose_format(DatabaseConfig(name="a", format=configured), 10 * big,
                             0)[0] == configured


def test_format_auto_backs_up_a_small_database_as_one_stream(sandbox, pg_cluster):
    name = f"dirfmt_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", name)
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(name)}"\n'
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    messages = []
    snap = eng.snapshot(eng.backup("db", "shop", on_event=lambda ev: messages.append(
        ev.message)).id)
    assert snap["postgres"]["format"] == "custom" and snap["stream"] and "tree" not in snap
    assert any("format auto: custom" in m for m in messages), messages


def test_cancel_during_a_directory_backup_stops_pg_dump_and_the_readers(dir_sandbox):
    """The directory format's files are read while pg_dump writes them: a cancel ends
    pg_dump, the reader threads and the scratch folder, and writes no snapshot."""
    sb = dir_sandbox
    eng = sb.engine(init=True)
    cancel = CancelToken()

    def on_event(ev) -> None:
        if ev.phase == "dump" and ev.bytes_done > 0:
            cancel.cancel()

    with pytest.raises(Cancelled):
        eng.backup("db", "shop", on_event=on_event, cancel=cancel)
    assert [t.name for t in threading.enumerate() if t.name.startswith("pg_dump-take")] == []
    assert children() == []
    scratch = sb.state / "tmp"
    assert not scratch.exists() or not [p for p in scratch.iterdir()
                                        if p.name.startswith("pgdump-")]
    assert eng.snapshots(source="shop") == []
    res = eng.backup("db", "shop")  # and the next one works
    assert eng.snapshot(res.id)["postgres"]["format"] == "directory"
