"""The console: Pilot flows on a real engine, the look on canned data, and the demo sandbox.

Flows drive ``BackupConsole`` over a real, initialised repository (the
``sandbox`` fixture); database flows back up a real database of the session's
PostgreSQL server (``pg_cluster``). Snapshot tests use ``CannedEngine``, a
stand-in with the Engine methods the console calls and fixed data, with a fixed
terminal size, time zone UTC and no cursor blink, so the pictures never drift.
The demo tests build sandboxes with their own PostgreSQL server, destroyed by
the ``demo_root`` fixture whatever happens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, ProgressBar
from textual.worker import WorkerCancelled, WorkerFailed

from backup_tui import demo as demo_module
from backup_tui.app import BackupConsole
from backup_tui.demo import build_demo, demo_cluster, open_demo, server_running
from backup_tui.screens.replicas import ReplicasPane
from backup_tui.screens.source_picker import SourcePicker
from backup_tui.widgets.job_panel import JobPanel
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.config import load_config, parse_config
from engine.errors import EngineError
from engine.facade import Engine, SnapshotInfo
from engine.ops.backup import BackupResult
from engine.ops.replicate import ReplicaResult
from engine.sandbox import free_port
from engine.sources.base import SourceInfo

SIZE = (110, 30)
LOOK_SIZE = (124, 32)  # wide enough for two replica columns beside the detail pane
WIDE_SIZE = (160, 40)  # a column per replica (narrower: one tick each, snapshot_table.py)
CHEAP_KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


# --- helpers ----------------------------------------------------------------------


def console(engine, **kwargs) -> BackupConsole:
    """The console without a scheduler of its own: these flows are the inventory's (the
    scheduler in the console is tested in test_tui_jobs.py), starting on the inventory (the
    dashboard, the first screen otherwise, is tested in test_tui_dashboard.py)."""
    kwargs.setdefault("start", "inventory")
    return BackupConsole(engine, run_scheduler=False, **kwargs)



async def settle(app: BackupConsole, pilot: Pilot, rounds: int = 10) -> None:
    """Wait until no worker runs and the messages they posted are handled."""
    for _ in range(rounds):
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:  # replaced by a newer request of its group
            pass
        except WorkerFailed:
            # an engine call that raised (a cancelled restore ends with Cancelled): the screen
            # shows it through the worker's state message, which the tests read; waiting only
            # re-raises it when the worker is still in the manager at that moment
            pass
        await pilot.pause()
        if not any(w.is_running for w in app.workers):
            await pilot.pause()
            return
    raise AssertionError("workers still running")


def table(app: BackupConsole) -> SnapshotTable:
    return app.screen.query_one(SnapshotTable)


def detail(app: BackupConsole) -> SnapshotDetail:
    return app.screen.query_one(SnapshotDetail)


def errors_shown(app: BackupConsole) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def pick(app: BackupConsole, pilot: Pilot, name: str) -> None:
    """Press b and choose source ``name`` in the picker (it lists every source)."""
    await pilot.press("b")
    await pilot.pause()
    assert isinstance(app.screen, SourcePicker)
    names = [s.name for s in app.screen.sources]
    await pilot.press(*["down"] * names.index(name), "enter")


def fill(src, n: int = 5) -> None:
    for i in range(n):
        (src / f"file-{i}.txt").write_text(f"line {i}\n" * 200)
    (src / "sub").mkdir()
    (src / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 4096)


# --- flows on a real engine -------------------------------------------------------


def test_backup_now_adds_a_row_and_shows_it(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert table(app).row_count == 0
            assert "No snapshots yet" in detail(app).text
            await pilot.press("b")
            await settle(app, pilot)
            [info] = engine.snapshots()
            assert table(app).row_count == 1
            assert table(app).selected_id == info.id
            assert info.id in detail(app).text
            panel = app.screen.query_one(JobPanel)
            assert panel.has_class("-done")
            assert panel.query_one(ProgressBar).percentage == 1.0
            assert not errors_shown(app)

    asyncio.run(flow())


def test_backup_failure_is_reported_and_the_console_keeps_running(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            shutil.rmtree(sandbox.src)
            await pilot.press("b")
            await settle(app, pilot)
            [error] = errors_shown(app)
            assert "does not exist" in error
            assert app.screen.query_one(JobPanel).has_class("-failed")
            assert table(app).row_count == 0
            # Still alive: the source comes back and the next backup works.
            sandbox.src.mkdir()
            fill(sandbox.src)
            await pilot.press("b")
            await settle(app, pilot)
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_unexpected_error_in_a_backup_is_reported(sandbox, monkeypatch):
    engine = sandbox.engine(init=True)

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "backup", broken)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await settle(app, pilot)
            assert errors_shown(app) == ["RuntimeError: disk on fire"]
            assert app.is_running
            await pilot.press("b")  # the failed job no longer blocks a new one
            await settle(app, pilot)
            assert len(errors_shown(app)) == 2

    asyncio.run(flow())


def test_picker_chooses_among_filesets(sandbox):
    other = sandbox.root / "other"
    other.mkdir()
    (other / "x.txt").write_text("x\n")
    sandbox.filesets["other"] = [str(other)]
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, SourcePicker)
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, SourcePicker)
            assert engine.snapshots() == []
            await pilot.press("b", "down", "enter")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["other"]
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_command_palette_backs_up_a_fileset(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"back up fileset now")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["src"]
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_refresh_sees_a_backup_made_elsewhere(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            result = sandbox.engine().backup("files", "src")  # another process, in effect
            await pilot.press("r")
            await settle(app, pilot)
            assert table(app).selected_id == result.id

    asyncio.run(flow())


# --- database flows on a real engine and a real server ----------------------------

SHOP_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                     total numeric(10, 2) NOT NULL);
INSERT INTO customers SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 200) g;
INSERT INTO orders SELECT g, 1 + g % 200, g * 1.25 FROM generate_series(1, 1000) g;
"""


@pytest.fixture
def shop_db(pg_cluster) -> str:
    """A small database of its own on the session's server."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SHOP_SQL, name)
    return name


def _database(name: str, dsn: str) -> str:
    return f'[[database]]\nname = "{name}"\ndsn = "{dsn}"\n'


def unreachable_dsn() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/shop"


def test_back_up_database_now_adds_a_db_row_with_its_facts(sandbox, pg_cluster, shop_db):
    sandbox.extra = _database("shop", pg_cluster.dsn(shop_db))
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert "Press b to back up" in detail(app).text  # the empty inventory says how
            await pick(app, pilot, "shop")  # b lists the fileset and the database
            await settle(app, pilot)
            [info] = engine.snapshots()
            assert (info.kind, info.source) == ("db", "shop")
            assert table(app).row_count == 1 and table(app).selected_id == info.id
            server = engine.snapshot(info.id)["postgres"]["server_version"]
            text = detail(app).text
            assert server.removeprefix("PostgreSQL ").split()[0] in text
            assert f"{pg_cluster.version}." in text
            assert "PostgreSQL" in text and shop_db in text and "from         config" in text
            panel = app.screen.query_one(JobPanel)
            assert panel.has_class("-done") and "database shop" in panel.text
            assert not errors_shown(app)

    asyncio.run(flow())


def test_unreachable_database_is_an_error_and_the_console_keeps_running(sandbox):
    fill(sandbox.src)
    sandbox.extra = _database("shop", unreachable_dsn())
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pick(app, pilot, "shop")
            await settle(app, pilot)
            [error] = errors_shown(app)
            assert "cannot connect" in error and "unreachable" in error
            assert app.screen.query_one(JobPanel).has_class("-failed")
            assert "Backup of database shop failed" in app.screen.query_one(JobPanel).text
            assert table(app).row_count == 0
            await pick(app, pilot, "src")  # still alive, and the failed job blocks nothing
            await settle(app, pilot)
            assert [s.kind for s in engine.snapshots()] == ["files"]
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_database_picker_and_palette(sandbox, pg_cluster, shop_db):
    sandbox.extra = (_database("elsewhere", unreachable_dsn())
                     + _database("shop", pg_cluster.dsn(shop_db)))
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, SourcePicker)
            listed = {s.name: s for s in app.screen.sources}
            assert sorted(listed) == ["elsewhere", "shop", "src"]
            assert [s.label for s in app.screen.sources].count("database") == 2
            assert "from config" in listed["shop"].description  # where it connects
            await pilot.press("escape")
            await pilot.pause()
            await pick(app, pilot, "shop")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["shop"]
            await pilot.press("ctrl+p")
            await pilot.press(*"back up database now: shop")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["shop", "shop"]
            assert table(app).row_count == 2
            assert not errors_shown(app)

    asyncio.run(flow())


def test_one_key_backs_up_every_kind_of_source(sandbox):
    fill(sandbox.src)
    app = console(sandbox.engine(init=True))

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            ids = {b.binding.id for b in app.active_bindings.values()}
            assert "backup" in ids and "backup-db" not in ids  # no key per kind
            await pilot.press("d")  # once "back up the database"; now the dashboard
            await settle(app, pilot)
            assert app.current_mode == "dashboard" and not app._notifications
            await pilot.press("i")
            await settle(app, pilot)
            assert app.screen.query_one(JobPanel).has_class("-idle")
            assert app.engine.snapshots() == []

    asyncio.run(flow())


# --- S3 replicas on a real S3-protocol server (moto_server) -----------------------


def _replica(name: str, bucket: str, region: str, endpoint: str, **extra) -> str:
    lines = ["[[replica]]", f'name = "{name}"', f'bucket = "{bucket}"', f'region = "{region}"',
             f'endpoint_url = "{endpoint}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def two_replicas(s3_server, buckets, **extra) -> str:
    """``use1`` in us-east-1 and ``euw1`` in eu-west-1."""
    return (_replica("use1", buckets.use1, "us-east-1", s3_server.endpoint_url, **extra)
            + _replica("euw1", buckets.euw1, "eu-west-1", s3_server.endpoint_url, **extra))


def replicas_pane(app: BackupConsole) -> ReplicasPane:
    return app.screen.query_one(ReplicasPane)


def presence(app: BackupConsole, snapshot_id: str) -> dict[str, str]:
    """The inventory's presence cells of one snapshot: replica name -> mark."""
    t = table(app)
    cells = dict(zip([str(k.value) for k in t.columns], t.get_row(snapshot_id), strict=True))
    return {name: cells[f"replica:{name}"].plain for name in t.replicas}


def notifications(app: BackupConsole, severity: str) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications if n.severity == severity]


def test_replicate_now_fills_both_replicas(sandbox, s3_server, s3_buckets):
    fill(sandbox.src)
    sandbox.extra = two_replicas(s3_server, s3_buckets, replicate_after_backup=False)
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=WIDE_SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await settle(app, pilot)
            [info] = engine.snapshots()
            assert [str(c.label) for c in table(app).columns.values()][-2:] == ["use1", "euw1"]
            assert presence(app, info.id) == {"use1": "·", "euw1": "·"}
            assert "  euw1       · missing" in detail(app).text
            await pilot.press("p")  # the replicas view: stored figures, then the lag measured
            await settle(app, pilot)
            pane = replicas_pane(app)
            assert not pane.checking and app.screen.focused is pane.table
            states = pane.table.states
            assert list(states) == ["use1", "euw1"]
            assert all(s["objects_behind"] > 0 and s["last_success"] is None
                       for s in states.values())
            assert pane.table.get_row("euw1")[6].plain == "never"
            await pilot.press("R")
            await pilot.pause(0.05)
            panel = app.screen.query_one(JobPanel)
            assert panel.kind == "replicate"
            await settle(app, pilot)
            assert panel.has_class("-done") and "Replicated to use1, euw1" in panel.text
            assert "object(s)" in panel.text and "uploaded" in panel.text
            states = pane.table.states
            assert all(s["objects_behind"] == 0 and s["bytes_behind"] == 0
                       and s["last_success"] and s["snapshots"] == 1 for s in states.values())
            assert [c.plain for c in pane.table.get_row("use1")[3:6]] == ["1", "0", "0 B"]
            assert "never" not in pane.table.get_row("use1")[6].plain
            assert not errors_shown(app)
            assert notifications(app, "information")[-1][0] == "Replication complete"
            await pilot.press("p")  # back to the snapshots: present in both now
            await settle(app, pilot)
            assert app.screen.focused is table(app)
            assert presence(app, info.id) == {"use1": "✓", "euw1": "✓"}
            assert "  euw1       ✓ present" in detail(app).text
            assert [r["objects_behind"] for r in engine.replica_states(check=True)] == [0, 0]

    asyncio.run(flow())


def test_backup_replicates_by_itself_and_the_panel_says_so(sandbox, s3_server, s3_buckets):
    fill(sandbox.src)
    sandbox.extra = two_replicas(s3_server, s3_buckets)
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)
    shown: list[str] = []

    async def flow():
        async with app.run_test(size=WIDE_SIZE) as pilot:
            await settle(app, pilot)
            panel = app.screen.query_one(JobPanel)
            original = panel.show_event

            def spy(event):
                original(event)
                shown.append(panel.text)

            panel.show_event = spy
            await pilot.press("b")
            await settle(app, pilot)
            [info] = engine.snapshots()
            assert presence(app, info.id) == {"use1": "✓", "euw1": "✓"}
            assert panel.has_class("-done")
            assert f"snapshot {info.id[:8]}, complete" in panel.text
            assert "Replicated to use1, euw1" in panel.text
            assert not errors_shown(app)

    asyncio.run(flow())
    during = [t for t in shown if "replicating" in t]
    assert during, shown
    assert "Backed up fileset src: snapshot" in during[-1]
    assert "replicating to euw1…" in during[-1] and "objects" in "\n".join(during)


def test_missing_bucket_is_named_and_the_console_keeps_running(sandbox, s3_server, s3_buckets):
    fill(sandbox.src)
    sandbox.extra = (_replica("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url,
                              replicate_after_backup=False)
                     + _replica("gone", f"no-such-bucket-{uuid.uuid4().hex[:8]}", "eu-west-1",
                                s3_server.endpoint_url, replicate_after_backup=False))
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=WIDE_SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await settle(app, pilot)
            await pilot.press("R")
            await settle(app, pilot)
            [(title, message)] = notifications(app, "error")
            assert title == "Replica gone failed" and "does not exist" in message
            panel = app.screen.query_one(JobPanel)
            assert panel.has_class("-partial")
            assert "Replicated to use1; gone failed" in panel.text
            assert app.is_running
            [info] = engine.snapshots()
            assert presence(app, info.id) == {"use1": "✓", "gone": "·"}
            await pilot.press("p")
            await settle(app, pilot)
            pane = replicas_pane(app)
            cut = pane.table.get_row("gone")[7].plain  # cut short, without the location
            assert cut.startswith("bucket 'no-such-bucket-") and cut.endswith("…")
            await pilot.press("down")
            assert "does not exist" in pane.detail.text and "gone" in pane.detail.text
            # Still alive: another job runs, from the palette this time.
            await pilot.press("ctrl+p")
            await pilot.press(*"replicate now")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert len(notifications(app, "error")) == 2
            assert panel.has_class("-partial")

    asyncio.run(flow())


def test_p_and_r_are_offered_only_with_replicas(sandbox):
    fill(sandbox.src)
    app = console(sandbox.engine(init=True))

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            ids = {b.binding.id for b in app.active_bindings.values()}
            assert not ids & {"replicate", "show-replicas", "show-snapshots"}
            await pilot.press("p", "R")
            await settle(app, pilot)
            assert not app.screen.query(ReplicasPane)
            assert app.screen.query_one(JobPanel).has_class("-idle")

    asyncio.run(flow())


# --- the look, on canned data -----------------------------------------------------

T0 = datetime(2024, 6, 3, 2, 0, 11, tzinfo=UTC)


def _id(n: int) -> str:
    return hashlib.sha256(f"canned-{n}".encode()).hexdigest()


def _record(n: int, info: SnapshotInfo) -> dict:
    """The full record of a canned snapshot, shaped as the engine writes its kind."""
    record = {
        "id": info.id, "time": info.time.isoformat(), "kind": info.kind, "source": info.source,
        "host": "web-1", "parent": info.parent, "incomplete": not info.complete,
        "program": "backup-tui 0.1.0",
    }
    if info.kind == "db":
        return record | {
            "stream": _id(200 + n), "globals": [_id(100 + n)], "warnings": [],
            "postgres": {
                "server_version_num": 160004, "server_major": 16,
                "server_version": "PostgreSQL 16.4 (Debian 16.4-1.pgdg120+2)",
                "database_size": 402_653_184, "dbname": "shop",
                "pg_dump": "pg_dump (PostgreSQL) 16.4 (Debian 16.4-1.pgdg120+2)",
                "format": "custom", "dump_bytes": info.size, "dump_duration": 7.25,
                "where": "db-1:5432/shop", "connection_from": "config",
            },
            "stats": {"files": 0, "size": info.size, "bytes_read": info.size,
                      "added": info.added, "added_raw": info.added + 9_000,
                      "new_blobs": 40 + n, "duration": 7.5},
        }
    errors = [] if info.complete else [
        {"path": "/srv/app/data/uploads/2024/06/IMG_0612.jpg", "error": "Permission denied"}
    ]
    return record | {
        "paths": [f"/srv/app/{info.source}"], "errors": errors, "errors_total": len(errors),
        "stats": {"files": info.files, "dirs": 41, "size": info.size, "unchanged_files": 300,
                  "bytes_read": info.added, "added": info.added, "new_blobs": 12 + n,
                  "duration": 0.25 * (n + 1)},
    }


def _iso(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def _canned() -> list[tuple[SnapshotInfo, dict]]:
    rows = [
        # (hours after T0, kind, source, size, added, complete, in use1, in euw1)
        (0, "files", "app-data", 21_460_000, 21_100_000, True, True, True),
        (1, "files", "app-config", 4_200, 4_200, True, True, True),
        (24, "files", "app-data", 22_010_000, 610_000, True, True, True),
        (25, "db", "shop", 310_400_000, 12_800_000, True, True, False),
        (48, "files", "app-data", 22_900_000, 905_000, False, True, False),
        (49, "db", "shop", 311_900_000, 1_480_000, True, True, False),
    ]
    out = []
    parents: dict[str, str] = {}
    for n, (hours, kind, source, size, added, complete, use1, euw1) in enumerate(rows):
        sid = _id(n)
        info = SnapshotInfo(sid, T0 + timedelta(hours=hours), kind, source, "web-1", size,
                            added, complete, parents.get(source),
                            0 if kind == "db" else 310 + 3 * n,
                            verified=_iso(hours + 2) if n < 3 else None,
                            replicas={"use1": use1, "euw1": euw1})
        parents[source] = sid
        out.append((info, _record(n, info)))
    return out


CANNED_REPLICAS = [
    {"name": "use1", "bucket": "acme-backup-use1", "region": "us-east-1", "prefix": "web-1",
     "last_success": _iso(49.1), "last_error": None, "last_error_time": None,
     "objects_behind": 0, "bytes_behind": 0, "checked": _iso(49.1), "snapshots": 6},
    {"name": "euw1", "bucket": "acme-backup-euw1", "region": "eu-west-1", "prefix": "web-1",
     "last_success": _iso(24.1),
     "last_error": "s3://acme-backup-euw1/web-1/ (euw1): put data/3f/3f9a0c: access denied "
                   "(AccessDenied); check the credentials and the bucket policy",
     "last_error_time": _iso(49.1), "objects_behind": 41, "bytes_behind": 14_900_000,
     "checked": _iso(49.1), "snapshots": 3},
]


def _canned_sources() -> list[SourceInfo]:
    """Two databases, then two filesets: the order the engine lists them in."""
    def database(name: str, host: str) -> SourceInfo:
        where = f"{host}:5432/{name}"
        return SourceInfo("db", name, "database", f"{where}, from config", "database",
                          (("connection", where), ("from", "config"), ("user", "backup")))

    def fileset(name: str, path: str) -> SourceInfo:
        return SourceInfo("files", name, "fileset", path, "files")

    return [database("shop", "db-1"), database("crm", "db-2"),
            fileset("app-data", "/srv/app/data"), fileset("app-config", "/srv/app/etc")]


def _canned_status() -> list[dict]:
    """``Engine.status()["sources"]`` as of T0 + 49.25 h: a cluster whose last drill failed
    and one replica 26 min behind, a database drilled, one never backed up, a fileset late."""
    def entry(kind, name, label, description, last_good, age_hours, snapshots, **extra):
        return {"kind": kind, "name": name, "label": label, "description": description,
                "snapshots": snapshots, "last_good": last_good and _iso(last_good),
                "age_hours": age_hours, "max_age_hours": 26, "last_failure": None,
                "last_failure_error": None, "next_run": _iso(71), **extra}

    def drill(last, trend):
        return {"last": last, "rto_trend": trend, "max_age_hours": 192}

    wal = {"newest": "00000001000000A20000003F", "archived": _iso(49.18), "age_seconds": 240,
           "max_age_minutes": 60, "replicas": {
               "use1": {"newest": "00000001000000A20000003F", "archived": _iso(49.18),
                        "age_seconds": 240, "shipped": _iso(49.2), "behind": False,
                        "error": None, "error_time": None},
               "euw1": {"newest": "00000001000000A200000039", "archived": _iso(48.75),
                        "age_seconds": 1800, "shipped": _iso(48.8), "behind": True,
                        "error": "access denied (AccessDenied)", "error_time": _iso(49.2)}}}
    return [
        entry("cluster", "main", "cluster", "db-1:5432/postgres, data in /srv/pg/16/main",
              26, 23.25, 3, wal=wal, drill=drill(
                  {"id": "d3", "snapshot": _id(7), "started": _iso(48.5),
                   "finished": _iso(48.52), "ok": False, "rto_seconds": None,
                   "error": "the restored server stopped during recovery (killed)",
                   "rows": {}}, [41.2, 39.8, 44.0])),
        entry("db", "shop", "database", "db-1:5432/shop, from config", 49, 0.25, 2,
              drill=drill({"id": "d2", "snapshot": _id(5), "started": _iso(49.1),
                           "finished": _iso(49.11), "ok": True, "rto_seconds": 37.5,
                           "error": None, "rows": {"orders": 3060, "customers": 500}},
                          [35.0, 36.1, 37.5])),
        entry("db", "crm", "database", "db-2:5432/crm, from config", None, None, 0,
              drill=drill(None, [])),
        entry("files", "app-data", "fileset", "/srv/app/data", 24, 25.25, 3),
        entry("files", "app-config", "fileset", "/srv/app/etc", 1, 48.25, 1),
    ]


CANNED_REASONS = [
    "db crm: no complete backup",
    "files app-config: newest complete backup is 48.2 h old (limit 26 h)",
    f"cluster main: last restore drill failed at {_iso(48.52)}: the restored server stopped "
    "during recovery (killed)",
]


class CannedEngine:
    """The Engine methods the console calls, answering fixed data; backups fail."""

    is_admin = True
    config = parse_config({
        "repository": {"path": "/srv/backup/repo"},
        # Nowhere: no scheduler lock is found there, so the console never shows a viewer.
        "state": {"dir": "/nonexistent/backup-tui-canned/state"},
    })

    def __init__(self) -> None:
        self._data = _canned()

    def sources(self) -> list[SourceInfo]:
        return _canned_sources()

    def replica_names(self) -> list[str]:
        return [r["name"] for r in CANNED_REPLICAS]

    def snapshots(self, source=None, kind=None) -> list[SnapshotInfo]:
        return [i for i, _ in self._data
                if (source is None or i.source == source) and (kind is None or i.kind == kind)]

    def snapshot(self, ref: str, source=None) -> dict:
        return next(dict(r) for i, r in self._data if i.id.startswith(ref))

    def backup(self, kind, name, on_event=None, cancel=None, replicate=True) -> BackupResult:
        source = next(s for s in _canned_sources() if (s.kind, s.name) == (kind, name))
        where = dict(source.details).get("connection")
        if where is None:
            raise EngineError("the canned engine makes no backups")
        raise EngineError(f"database {name!r}: cannot connect to {where}: server unreachable "
                          "(is it running, and are host and port right?)")

    def replica_states(self, check: bool = False) -> list[dict]:
        return [dict(s) for s in CANNED_REPLICAS]

    def status(self) -> dict:
        return {"sources": _canned_status()}

    def health(self) -> dict:
        return {"ok": False, "reasons": list(CANNED_REASONS)}

    def overview(self) -> tuple[dict, dict]:
        return self.status(), self.health()

    # What the screens the console builds ahead, hidden, read (app._prewarm_next): nothing.
    def jobs(self, limit: int = 50) -> list[dict]:
        return []

    def schedules(self, now=None) -> list[dict]:
        return []

    def history(self, days: int = 30) -> dict:
        return {"days": days, "repository_bytes": 0, "daily": [], "backups": [], "drills": []}

    def replicate(self, replica=None, repair=False, on_event=None, cancel=None):
        return [
            ReplicaResult("use1", uploaded=0, present=312, seconds=0.4,
                          snapshots=[i.id for i, _ in self._data]),
            ReplicaResult("euw1", error=CANNED_REPLICAS[1]["last_error"]),
        ]


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch):
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


async def _loaded(pilot: Pilot) -> None:
    await settle(pilot.app, pilot)


def test_inventory_look(snap_compare, utc):
    """Six canned snapshots, newest first: a database dump, its PostgreSQL facts beside it."""
    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE, run_before=_loaded)


def test_inventory_look_second_row(snap_compare, utc):
    """The cursor on the incomplete snapshot: its errors show in the detail pane."""

    async def select(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("down")
        await _loaded(pilot)

    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE, run_before=select)


def test_source_picker_look(snap_compare, utc):
    """b with two databases and two filesets opens one picker over the inventory: each
    source's label, name and description (where a database connects), grouped by label."""
    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE, press=["b"],
                        run_before=_loaded)


def test_database_backup_failed_look(snap_compare, utc):
    """A database that cannot be reached: the job panel and a notification say why."""

    async def fail(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("b", "down", "enter")  # crm, the second database
        await _loaded(pilot)

    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE, run_before=fail)


def test_replicas_look(snap_compare, utc):
    """p: the replicas, the failing one under the cursor with its whole error below."""

    async def failing(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("p")
        await _loaded(pilot)
        await pilot.press("down")

    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE,
                        run_before=failing)


def test_replicate_now_partly_failed_look(snap_compare, utc):
    """R: one replica filled, one refused; the panel says which, a notification says why."""

    async def replicate(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("p")
        await _loaded(pilot)
        await pilot.press("R")
        await _loaded(pilot)

    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE,
                        run_before=replicate)


def test_sources_look_at_80x24(snap_compare, utc):
    """o at 80x24: every key column fits; the cluster's failed drill in red, its replica
    behind, and the cluster in full below."""

    async def sources(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("o")
        await _loaded(pilot)

    assert snap_compare(console(CannedEngine()), terminal_size=(80, 24), run_before=sources)


def test_sources_look_drilled_database(snap_compare, utc):
    """o, then the database whose drill passed: its RTO trend and the rows it counted."""

    async def shop(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("o")
        await _loaded(pilot)
        await pilot.press("down")

    assert snap_compare(console(CannedEngine()), terminal_size=LOOK_SIZE, run_before=shop)


# --- the demo sandbox -------------------------------------------------------------

# What the demo sets in the process environment (use_demo_aws_environment).
DEMO_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def demo_environment_undone(monkeypatch):
    """The demo sets dummy AWS variables in the process environment: undo that after a test."""
    for var in DEMO_ENV:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)


def s3_answers(demo_s3) -> bool:
    """Whether anything still accepts connections on the demo's S3 port."""
    try:
        socket.create_connection(("127.0.0.1", demo_s3.port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def demo_root(request) -> Path:
    """A folder for a demo with a PostgreSQL server; the server is destroyed at the end.

    Not under pytest's tmp_path: the server runs as the ``postgres`` OS user when
    we are root, and /tmp/pytest-of-root is closed to it.
    """
    base = Path(tempfile.mkdtemp(prefix="backup-tui-demo-test-"))
    os.chmod(base, 0o755)
    root = base / "demo"

    def destroy() -> None:
        cluster = demo_cluster(root) if (root / "config.toml").exists() else None
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(destroy)
    return root


def test_build_demo_with_a_database(demo_root):
    demo = build_demo(demo_root, kdf=CHEAP_KDF, replicas=False)
    assert demo.cluster is not None and demo.note == ""
    config = load_config(demo.config_path)
    assert [d.name for d in config.databases] == ["shop"]
    assert config.databases[0].dsn == demo.cluster.dsn("shop")
    engine = Engine(config)
    assert sorted((s.kind, s.source) for s in engine.snapshots()) == [
        ("cluster", "main"), ("db", "shop"), ("files", "app-data")]  # main: the same server
    counts = demo.cluster.psql(
        "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products), "
        "(SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)", "shop")
    assert counts.strip() == "500|200|3060|7560"  # the same every time, a day's orders added
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pick(app, pilot, "shop")
            await settle(app, pilot)
            assert [s.kind for s in engine.snapshots()].count("db") == 2
            assert table(app).row_count == 4
            assert "PostgreSQL" in detail(app).text and "shop" in detail(app).text
            assert not errors_shown(app)

    asyncio.run(flow())
    demo.stop()
    assert not server_running(demo.cluster)
    again = open_demo(demo_root)  # $BACKUP_TUI_DEMO_DIR: the server starts again
    assert again.cluster is not None and server_running(again.cluster) and again.note == ""
    again.stop()


def test_run_demo_stops_the_servers_even_on_ctrl_c(demo_root, monkeypatch, capsys):
    build_demo(demo_root, kdf=CHEAP_KDF).stop()
    monkeypatch.setenv("BACKUP_TUI_DEMO_DIR", str(demo_root))
    seen = []
    servers = []
    launch = demo_module.S3Server.launch

    def launched(self):
        servers.append(self)
        return launch(self)

    def interrupted(engine, notice=None, run_scheduler=True):
        assert run_scheduler is True  # the console runs the demo's short schedule
        assert len(engine.config.databases) == 1
        seen.append(server_running(demo_cluster(demo_root)))
        seen.append(s3_answers(servers[-1]))
        assert all(r["objects_behind"] == 0 for r in engine.replica_states(check=True))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module.S3Server, "launch", launched)
    monkeypatch.setattr("backup_tui.app.run_console", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_module.run_demo()
    assert seen == [True, True]
    assert not server_running(demo_cluster(demo_root))
    assert not s3_answers(servers[-1]) and not servers[-1].running()
    captured = capsys.readouterr()
    assert "starting a new one and replicating again" in captured.err
    assert (f"The demo sandbox is in {demo_root} (its PostgreSQL and S3 servers are stopped)"
            in captured.out)


def test_build_demo_without_postgres_has_files_only(tmp_path, monkeypatch):
    def no_server(*_args, **_kwargs):
        raise EngineError("PostgreSQL server binaries not found (Debian: apt-get install "
                          "postgresql)")

    monkeypatch.setattr(demo_module, "ScratchCluster", no_server)
    demo = build_demo(tmp_path / "demo", kdf=CHEAP_KDF, replicas=False)
    assert demo.cluster is None
    assert "not found" in demo.note and "files only" in demo.note and "\n" not in demo.note
    config = load_config(demo.config_path)
    assert config.databases == ()
    engine = Engine(config)
    assert [s.kind for s in engine.snapshots()] == ["files"]
    demo.stop()  # nothing to stop: no error
    app = console(engine, notice=demo.note)  # as run_demo opens it

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert [n.message for n in app._notifications] == [demo.note]
            assert "backup-db" not in {b.binding.id for b in app.active_bindings.values()}

    asyncio.run(flow())


def test_build_demo_makes_a_sandbox_the_console_opens(tmp_path):
    demo = build_demo(tmp_path / "demo", kdf=CHEAP_KDF, database=False, replicas=False)
    config = load_config(demo.config_path)
    assert [fs.name for fs in config.filesets] == ["app-data", "app-config"]
    assert (tmp_path / "demo" / "repo.pass").stat().st_mode & 0o777 == 0o600
    engine = Engine(config)
    [snap] = engine.snapshots()
    assert snap.source == "app-data" and snap.complete and snap.files > 200
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert table(app).row_count >= 1
            assert snap.id in detail(app).text

    asyncio.run(flow())


def test_build_demo_is_reproducible(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for p in sorted((root / "data").rglob("*")):
            h.update(str(p.relative_to(root)).encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
        return h.hexdigest()

    build_demo(tmp_path / "a", kdf=CHEAP_KDF, database=False, replicas=False)
    build_demo(tmp_path / "b", kdf=CHEAP_KDF, database=False, replicas=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_build_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(EngineError, match="empty directory"):
        build_demo(tmp_path)


def test_build_demo_replicates_to_two_regions_and_stops_its_s3_server(tmp_path):
    demo = build_demo(tmp_path / "demo", kdf=CHEAP_KDF, database=False)
    try:
        assert demo.s3 is not None and demo.s3.running() and demo.note == ""
        config = demo.config()
        assert [(r.name, r.region) for r in config.replicas] == [
            ("us-east", "us-east-1"), ("eu-west", "eu-west-1")]
        assert {r.endpoint_url for r in config.replicas} == {demo.s3.endpoint_url}
        assert demo.s3.endpoint_url.startswith("http://127.0.0.1:")
        engine = Engine(config)
        [snap] = engine.snapshots()
        assert snap.replicas == {"us-east": True, "eu-west": True}
        states = engine.replica_states(check=True)
        assert [(r["objects_behind"], r["snapshots"], r["last_error"]) for r in states] == [
            (0, 1, None), (0, 1, None)]
        for replica in config.replicas:  # complete: a repository of its own in each bucket
            assert [s.id for s in engine.for_replica(replica.name).snapshots()] == [snap.id]
        app = console(engine)

        async def flow():
            async with app.run_test(size=WIDE_SIZE) as pilot:
                await settle(app, pilot)
                assert presence(app, snap.id) == {"us-east": "✓", "eu-west": "✓"}
                await pilot.press("b", "enter")  # app-data: a day's changes, replicated after
                await settle(app, pilot)
                assert all(v == "✓" for v in presence(app, table(app).selected_id).values())
                assert not errors_shown(app)

        asyncio.run(flow())
    finally:
        demo.stop()
    assert not demo.s3.running() and not s3_answers(demo.s3)
    again = open_demo(tmp_path / "demo")  # the new server starts empty: filled again
    try:
        assert again.s3 is not None and again.note == ""
        engine = Engine(again.config())
        assert [r["objects_behind"] for r in engine.replica_states(check=True)] == [0, 0]
        assert len(engine.for_replica("eu-west").snapshots()) == 2
    finally:
        again.stop()
    assert not s3_answers(again.s3)


def test_demo_without_moto_has_no_replicas(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "moto_installed", lambda: False)
    demo = build_demo(tmp_path / "demo", kdf=CHEAP_KDF, database=False)
    assert demo.s3 is None
    assert demo.note == demo_module.NO_MOTO and "\n" not in demo.note
    assert demo.config().replicas == ()
    demo.stop()


def test_reused_demo_without_moto_leaves_its_replicas_out(tmp_path, monkeypatch):
    build_demo(tmp_path / "demo", kdf=CHEAP_KDF, database=False).stop()
    monkeypatch.setattr(demo_module, "moto_installed", lambda: False)
    demo = open_demo(tmp_path / "demo")
    assert demo.s3 is None and demo.note == demo_module.NO_MOTO
    assert load_config(demo.config_path).replicas and demo.config().replicas == ()
    demo.stop()


# --- the sources tab: clusters, their WAL archive and drills ---------------------

CLUSTER = "main"
SEG3, SEG4 = "000000010000000000000003", "000000010000000000000004"


def sources_pane(app: BackupConsole):
    from backup_tui.screens.sources import SourcesPane

    return app.screen.query_one(SourcesPane)


def archive_wal(engine: Engine, cluster: str, name: str, archived: float) -> None:
    """One archived segment, written as wal-push writes it (sealed header, zstd body),
    with a chosen archive time."""
    from engine import wal

    raw = name.encode() * 1000
    header = {"format": wal.FORMAT, "source": cluster, "name": name, "kind": "segment",
              "timeline": int(name[:8], 16), "size": len(raw),
              "sha256": hashlib.sha256(raw).hexdigest(), "archived": archived,
              "system_identifier": "7300000000000000001", "host": "db-1"}
    engine.backend.put(wal.object_name(cluster, name),
                       wal.build_object(engine.repo().keys, header, raw, 1))


@pytest.fixture
def silent_server():
    """A port on 127.0.0.1 that accepts connections and never answers: anything that
    connected to it (libpq has no timeout by default) would hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def cluster_sandbox(sandbox, s3_server, s3_buckets, port: int):
    """A fileset, a cluster whose server never answers, two replicas; the cluster's WAL
    archived two segments (the newest 60 s ago), r1 holds the newest, r2 the one before
    (4 min behind), and the cluster's last drill failed."""
    sandbox.extra = (
        f'[[cluster]]\nname = "{CLUSTER}"\n'
        f'dsn = "postgresql://postgres@127.0.0.1:{port}/postgres"\n'
        'pgdata = "/var/lib/postgresql/15/main"\nwal_max_age_minutes = 30\n'
        + _replica("r1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url,
                   replicate_after_backup=False)
        + _replica("r2", s3_buckets.euw1, "eu-west-1", s3_server.endpoint_url,
                   replicate_after_backup=False))
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    now = time.time()
    archive_wal(engine, CLUSTER, SEG3, now - 300)
    archive_wal(engine, CLUSTER, SEG4, now - 60)
    engine.catalog.wal_shipped("r1", CLUSTER, SEG4, now - 60)
    engine.catalog.wal_shipped("r2", CLUSTER, SEG3, now - 300)
    engine.catalog.wal_ship_failed("r2", CLUSTER, "bucket r2: access denied")
    engine.catalog.record_drill({
        "id": "drill-1", "kind": "cluster", "source": CLUSTER, "snapshot": None,
        "started": now - 200, "finished": now - 150, "ok": False, "rto_seconds": None,
        "error": "the restored server stopped during recovery",
        "checks": [{"name": "connect", "ok": False, "detail": "server not running"}]})
    return engine


def cells(pane, key: str) -> dict[str, object]:
    t = pane.table
    return dict(zip([str(k.value) for k in t.columns], t.get_row(key), strict=True))


def test_sources_tab_shows_a_clusters_wal_and_a_failed_drill(sandbox, s3_server, s3_buckets,
                                                             silent_server):
    fill(sandbox.src)
    engine = cluster_sandbox(sandbox, s3_server, s3_buckets, silent_server)
    engine.backup("files", "src")
    app = console(engine)

    async def flow():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            ids = {b.binding.id for b in app.active_bindings.values()}
            assert "show-sources" in ids and "sources-back" not in ids
            await pilot.press("o")
            # The cluster's server never answers: reading the status must not connect.
            await asyncio.wait_for(settle(app, pilot), 20)
            pane = sources_pane(app)
            assert pane.loaded and app.screen.focused is pane.table
            assert list(pane.table.entries) == [f"cluster:{CLUSTER}", "files:src"]
            error = app.theme_variables["text-error"]
            row = cells(pane, f"cluster:{CLUSTER}")
            assert row["kind"].plain == "cluster" and row["name"].plain == CLUSTER
            assert row["backup"].plain == "never" and error in str(row["backup"].style)
            assert row["point"].plain in ("60 s", "61 s", "62 s", "63 s")
            assert row["wal"].plain == "r2 4 min behind" and error in str(row["wal"].style)
            assert row["drill"].plain == "FAILED" and error in str(row["drill"].style)
            files = cells(pane, "files:src")
            assert files["wal"].plain == files["drill"].plain == "—"
            assert files["point"].plain == files["backup"].plain.strip() == "0 s"
            text = pane.detail.text
            assert f"WAL {SEG4} at " in text and "limit 30 min" in text
            assert "r1 current, shipped" in text
            assert f"r2 {SEG3} at " in text and ", 4 min behind" in text
            assert "bucket r2: access denied" in text
            assert "drill FAILED" in text and "the restored server stopped during" in text
            assert "✗ last restore drill failed" in text
            assert "✗ no complete backup" in text
            assert "newest archived" not in text  # 60 s < 30 min: not a health reason
            assert "data in /var/lib/postgresql/15/main" in text
            await pilot.press("down")
            await pilot.pause()
            assert "✓ healthy" in pane.detail.text and "✗" not in pane.detail.text
            await pilot.press("o")  # back to the snapshots
            await settle(app, pilot)
            assert app.screen.focused is table(app)
            assert not errors_shown(app)

    asyncio.run(flow())


def test_sources_tab_without_replicas_and_p_still_works(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("p")  # no replicas: p does nothing
            await settle(app, pilot)
            assert app.screen.query_one("#views").active == "snapshots-tab"
            await pilot.press("o")
            await settle(app, pilot)
            assert app.screen.query_one("#views").active == "sources-tab"
            pane = sources_pane(app)
            row = cells(pane, "files:src")
            assert row["backup"].plain == "never" and row["drill"].plain == "—"
            assert "✗ no complete backup" in pane.detail.text
            await pilot.press("b")  # a backup from the sources tab: the row follows
            await settle(app, pilot)
            assert cells(pane, "files:src")["backup"].plain in ("0 s", "1 s", "2 s")
            assert "✓ healthy" in pane.detail.text and "✗" not in pane.detail.text
            ids = {b.binding.id for b in app.active_bindings.values()}
            assert "sources-back" in ids and "show-sources" not in ids
            await pilot.press("o")
            await settle(app, pilot)
            assert app.screen.query_one("#views").active == "snapshots-tab"

    asyncio.run(flow())


def test_sources_tab_p_and_o_move_between_three_tabs(sandbox, s3_server, s3_buckets):
    fill(sandbox.src)
    sandbox.extra = two_replicas(s3_server, s3_buckets, replicate_after_backup=False)
    sandbox.write_config()
    app = console(sandbox.engine(init=True))

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)

            def active() -> str:
                return app.screen.query_one("#views").active

            for key, tab in (("p", "replicas-tab"), ("o", "sources-tab"), ("p", "replicas-tab"),
                             ("p", "snapshots-tab"), ("o", "sources-tab"),
                             ("o", "snapshots-tab")):
                await pilot.press(key)
                await settle(app, pilot)
                assert active() == tab, (key, tab)
            assert not errors_shown(app)

    asyncio.run(flow())


def test_sources_tab_refreshes_while_shown_only(sandbox, monkeypatch):
    from backup_tui.screens import sources

    monkeypatch.setattr(sources, "REFRESH_SECONDS", 0.2)
    engine = sandbox.engine(init=True)
    calls: list[float] = []
    status = engine.status

    def counted():
        calls.append(time.monotonic())
        return status()

    monkeypatch.setattr(engine, "status", counted)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert not calls  # not read until the tab shows
            await pilot.press("o")
            await pilot.pause(1.2)
            await settle(app, pilot)
            shown = len(calls)
            assert shown >= 3
            await pilot.press("o")  # hidden: no more reads
            await settle(app, pilot)
            hidden = len(calls)
            await pilot.pause(0.8)
            assert len(calls) == hidden
            await pilot.press("o", "r")
            await settle(app, pilot)
            assert len(calls) >= hidden + 2

    asyncio.run(flow())


def test_sources_tab_engine_error_shows_in_the_status_line(sandbox, monkeypatch):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    status = engine.status
    broken = {"on": False}

    def flaky():
        if broken["on"]:
            raise EngineError("catalog: database is locked")
        return status()

    monkeypatch.setattr(engine, "status", flaky)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("o")
            await settle(app, pilot)
            pane = sources_pane(app)
            assert pane.table.row_count == 1
            broken["on"] = True
            await pilot.press("r")
            await settle(app, pilot)
            text = pane.detail.text
            assert text.startswith("Cannot read the status: catalog: database is locked")
            assert pane.table.row_count == 1  # the last good read stays
            assert app.is_running and not errors_shown(app)
            broken["on"] = False
            await pilot.press("r")
            await settle(app, pilot)
            assert "Cannot read" not in pane.detail.text and "fileset src" in pane.detail.text

    asyncio.run(flow())
