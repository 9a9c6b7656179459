"""The point-in-time wizard (backup_tui/screens/pitr_wizard.py).

The flow on real parts: a PostgreSQL cluster archiving through ``wal-push`` (the
``setup`` fixture of tests/conftest.py), a base backup, a change after a time T, and
the wizard recovering to T into a new data directory, started and promoted; the
recovered server has the rows before T and not the change after. A target in the
future is refused with the newest reachable point named. The steps, Esc at each
and a wrong typed confirmation run on a canned engine (the real ``PitrPlan`` and
``Target`` types over fixed data), as does the look of the plan step at 80x24 and
the width check at 60 columns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import test_tui
from pitr_support import CLUSTER, mark_time, restored_sql, stop_server
from test_tui import T0, CannedEngine, _canned_sources, _id, settle
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Static

from backup_tui.app import BackupConsole
from backup_tui.screens import pitr_wizard
from backup_tui.screens.inventory import InventoryScreen
from backup_tui.screens.pitr_wizard import PitrWizard
from engine.errors import Cancelled, EngineError
from engine.events import Event
from engine.facade import SnapshotInfo
from engine.ops import pitr
from engine.ops.resolve import newest_before, parse_time
from engine.sources.base import SourceInfo

shop_db = test_tui.shop_db  # a small database of its own on the session's server
SIZE = (100, 32)


def console(engine) -> BackupConsole:
    return BackupConsole(engine, start="inventory", run_scheduler=False)


def wizard(app: BackupConsole) -> PitrWizard:
    assert isinstance(app.screen, PitrWizard), type(app.screen)
    return app.screen


def shown(app: BackupConsole, widget_id: str) -> str:
    return str(app.screen.query_one(f"#{widget_id}", Static).visual)


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


async def open_wizard(app: BackupConsole, pilot: Pilot) -> PitrWizard:
    await settle(app, pilot)
    await pilot.press("t")
    await settle(app, pilot)
    return wizard(app)


async def type_time(app: BackupConsole, pilot: Pilot, when: str) -> None:
    field = app.screen.query_one("#pitr-time-input", Input)
    field.value = when
    field.focus()
    await pilot.press("enter")
    await settle(app, pilot)


# ------------------------------------------------------------ the real flow
@pytest.mark.parametrize("setup", [""], indirect=True)
def test_pitr_through_the_wizard_recovers_to_the_time(setup):
    s = setup
    s.cli("backup", "cluster", CLUSTER)
    s.pg.psql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(1001, 1200) g")
    when = mark_time(s)
    s.pg.psql("UPDATE t SET note = 'CHANGED' WHERE id <= 10")
    s.pg.psql("CREATE TABLE later (x int)")
    newest = s.switch_and_wait()
    target = s.root / "recovered"
    app = console(s.engine())
    out: dict = {}

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await open_wizard(app, pilot)
            assert w.step == "source"
            assert [c.info.name for c in w.choices] == [CLUSTER]
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "time"
            # the timeline: the base backup, the newest reachable point, the local WAL
            whats = [p.what for p in w.timeline.points]
            assert any(x.startswith("base backup ") for x in whats), whats
            assert any(newest in x for x in whats), whats
            assert [x.copy for x in w.timeline.windows] == ["local"]

            # a time in the future: refused, the newest reachable point named
            await type_time(app, pilot, "2099-01-01 00:00:00")
            assert w.step == "plan" and w.planned.refused
            assert "past the newest reachable point" in w.planned.refused
            assert newest in w.planned.refused
            assert "past the newest reachable point" in shown(app, "pitr-error")
            await pilot.press("enter")  # refused: back to the time, the reason kept
            assert w.step == "time" and newest in w.error
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

            # again, to T
            w = await open_wizard(app, pilot)
            await pilot.press("enter")
            await settle(app, pilot)
            await type_time(app, pilot, when)
            assert w.step == "plan" and not w.planned.refused, w.planned
            assert w.planned.plan["feasible"] and w.planned.plan["gaps"] == []
            assert "local" in shown(app, "pitr-plan-text")
            await pilot.press("enter")
            assert w.step == "target"
            port = app.screen.query_one("#pitr-port-input", Input).value
            assert port.isdigit()
            app.screen.query_one("#pitr-target-input", Input).value = str(target)
            app.screen.query_one("#pitr-target-input", Input).focus()
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "confirm", w.error
            # a near miss is refused
            app.screen.query_one("#pitr-confirm-input", Input).value = str(target) + "/"
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "confirm" and "type it exactly" in w.error
            app.screen.query_one("#pitr-confirm-input", Input).value = str(target)
            await pilot.press("enter")
            assert w.step == "run"
            for _ in range(600):  # the recovery, then the result step
                await pilot.pause(0.2)
                if w.step == "result":
                    break
            await settle(app, pilot)
            assert w.step == "result", w.step
            assert w.result and w.result.get("promoted"), w.result
            out.update(w.result)
            text = shown(app, "pitr-result-text")
            assert f"port {w.result['port']}" in text and "Stop it: " in text
            assert "Promoted after" in text and "psql -h 127.0.0.1" in text
            assert int(port) == w.result["port"]
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    try:
        asyncio.run(flow())
        port = out["port"]
        assert restored_sql(port, "SELECT count(*) FROM t") == "1200"  # the rows before T
        assert restored_sql(port, "SELECT count(*) FROM t WHERE note = 'CHANGED'") == "0"
        assert restored_sql(port, "SELECT to_regclass('later') IS NULL") == "t"
        assert restored_sql(port, "SELECT pg_is_in_recovery()") == "f"
    finally:
        stop_server(out)


def test_a_database_as_of_a_time_restores_the_dump_before_it(sandbox, pg_cluster, shop_db):
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(shop_db)}"\n'
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    first = engine.backup("db", "shop")
    time.sleep(1.1)
    when = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    pg_cluster.psql("INSERT INTO orders SELECT g, 1, 9.99 FROM generate_series(1001, 1100) g",
                    shop_db)
    engine.backup("db", "shop")
    target = f"{shop_db}_asof"
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await open_wizard(app, pilot)
            assert [c.info.name for c in w.choices] == ["shop"]  # not the fileset
            await pilot.press("enter")
            await settle(app, pilot)
            assert "restores the newest dump taken before the time" in shown(
                app, "pitr-time-note")
            await type_time(app, pilot, when)
            assert w.planned.dump["snapshot"]["id"] == first.id
            assert f"dump {first.id[:8]}" in shown(app, "pitr-plan-text")
            await pilot.press("enter")
            app.screen.query_one("#pitr-target-input", Input).value = target
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "confirm", w.error
            app.screen.query_one("#pitr-confirm-input", Input).value = target
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "result", w.error
            assert f"into database {target}" in shown(app, "pitr-result-text")

    try:
        asyncio.run(flow())
        assert pg_cluster.psql("SELECT count(*) FROM orders", target).strip() == "1000"
        assert pg_cluster.psql("SELECT count(*) FROM orders", shop_db).strip() == "1100"
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {target}")


# ------------------------------------------------------------- canned data
UTC_ZONE = ZoneInfo("UTC")
REACH = T0 + timedelta(hours=49, minutes=10, seconds=48)
SEGMENTS = [pitr.segment_name(1, 0xA2 * 256 + n) for n in range(0x30, 0x40)]


def _base(n: int, hours: float) -> tuple[SnapshotInfo, dict]:
    sid = _id(300 + n)
    when = T0 + timedelta(hours=hours)
    info = SnapshotInfo(sid, when, "cluster", "main", "db-1", 1_610_000_000, 96_000_000,
                        True, None, 1800)
    stop = when + timedelta(minutes=4, seconds=12)
    record = {"id": sid, "time": when.isoformat(), "kind": "cluster", "source": "main",
              "postgres": {"system_identifier": "7311958302125873431", "timeline": 1,
                           "start_lsn": "A2/30000028", "stop_lsn": "A2/30000138",
                           "start_wal": SEGMENTS[0], "stop_wal": SEGMENTS[0],
                           "server_major": 16, "server_version": 160004,
                           "start_time": when.isoformat(), "stop_time": stop.isoformat(),
                           "wal_segment_size": 16 * 1024 * 1024}}
    return info, record


class CannedPitrEngine(CannedEngine):
    """CannedEngine with a cluster ``main`` (two base backups, WAL here and in two
    replicas, one of them behind) and the PITR verbs over fixed data."""

    timezone = UTC_ZONE

    def __init__(self) -> None:
        super().__init__()
        self._data = self._data + [_base(0, 2), _base(1, 26)]
        self.restores: list = []
        self.run = None  # what restore_pitr does, when a test lets it

    def sources(self) -> list[SourceInfo]:
        cluster = SourceInfo("cluster", "main", "cluster",
                             "db-1:5432/postgres, data in /srv/pg/16/main", "cluster",
                             (("connection", "db-1:5432/postgres"),
                              ("data directory", "/srv/pg/16/main")))
        return [cluster] + _canned_sources()

    def snapshots(self, source=None, kind=None) -> list[SnapshotInfo]:
        return sorted(super().snapshots(source, kind), key=lambda i: i.time)

    def pitr_target(self, kind, value, inclusive=True):
        return pitr.Target.parse(kind, value, UTC_ZONE, inclusive)

    def pitr_plan(self, cluster, target, replica=None):
        snap = _base(1, 26)[1]
        ok = target.kind == "immediate" or target.value <= REACH
        places = [pitr.Place("local", True, objects=60, present=len(SEGMENTS)),
                  pitr.Place("use1", True, objects=60, present=len(SEGMENTS)),
                  pitr.Place("euw1", True, objects=54, present=len(SEGMENTS) - 6,
                             missing=SEGMENTS[-6:])]
        reachable = {"wal": SEGMENTS[-1], "lsn": "A2/40000000", "time": REACH.isoformat()}
        problems = [] if ok else [
            f"target {target.text} is past the newest reachable point {REACH.isoformat()} "
            f"(LSN A2/40000000, WAL {SEGMENTS[-1]})"]
        return pitr.PitrPlan(cluster, target, replica, snap, SEGMENTS, [], places, [],
                             reachable, 41.2, "median RTO of the last 3 drill(s)", problems)

    def restore_pitr(self, cluster, target, pgdata, port=None, start=False, replace=False,
                     replica=None, on_event=None, cancel=None, wait_seconds=3600.0):
        self.restores.append((cluster, target, pgdata, port, start, replace))
        if self.run is None:
            raise AssertionError("the canned engine restores nothing")
        return self.run(cluster, target, pgdata, port, on_event, cancel)

    def parse_time(self, text):
        return parse_time(text, UTC_ZONE)

    def snapshot_at(self, source, when):
        best = newest_before(self.snapshots(source=source), source, when)
        return self.snapshot(best.id), (when - best.time).total_seconds()


INSIDE = (T0 + timedelta(hours=40)).strftime("%Y-%m-%d %H:%M:%S")


async def to_step(app: BackupConsole, pilot: Pilot, step: str) -> PitrWizard:
    """Open the wizard on the cluster and walk to ``step`` (canned engine)."""
    w = await open_wizard(app, pilot)
    order = ("source", "time", "plan", "target", "confirm")
    if order.index(step) >= 1:
        await pilot.press("enter")  # the cluster, listed first
        await settle(app, pilot)
    if order.index(step) >= 2:
        await type_time(app, pilot, INSIDE)
    if order.index(step) >= 3:
        await pilot.press("enter")
        await settle(app, pilot)
    if order.index(step) >= 4:
        await pilot.press("enter")  # the suggested directory and port
        await settle(app, pilot)
    assert w.step == step, (w.step, w.error)
    return w


@pytest.mark.parametrize("step", ["source", "time", "plan", "target", "confirm"])
def test_escape_at_each_step_cancels_and_restores_nothing(step):
    engine = CannedPitrEngine()
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(app, pilot, step)
            if step == "confirm":  # a wrong confirmation first: refused, still here
                w = wizard(app)
                app.screen.query_one("#pitr-confirm-input", Input).value = "/srv/pg/16/mai"
                await pilot.press("enter")
                await settle(app, pilot)
                assert w.step == "confirm" and "type it exactly" in w.error
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            assert not [n for n in app._notifications if "recovered" in n.message]

    asyncio.run(flow())
    assert engine.restores == []


def test_the_steps_on_canned_data():
    engine = CannedPitrEngine()
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_step(app, pilot, "time")
            # the timeline: reachable point, base backups, a WAL window per copy
            whats = [p.what for p in w.timeline.points]
            assert whats[0] == f"newest reachable (WAL {SEGMENTS[-1]})"
            assert whats[1:] == [f"base backup {_id(301)[:8]} consistent",
                                 f"base backup {_id(300)[:8]} consistent"]
            assert [x.copy for x in w.timeline.windows] == ["local", "use1", "euw1"]
            # picking a point fills the time
            points = app.screen.query_one("#pitr-points", OptionList)
            points.focus()
            points.highlighted = 1
            await pilot.press("enter")
            field = app.screen.query_one("#pitr-time-input", Input)
            assert field.value == (T0 + timedelta(hours=26, minutes=4, seconds=12)).strftime(
                "%Y-%m-%d %H:%M:%S")
            assert field.has_focus
            # an unreadable time goes back to the time step with the engine's words
            await type_time(app, pilot, "yesterday")
            assert w.step == "time" and "cannot read time" in w.error
            # the plan: copies, the one behind, reachable point, estimate
            await type_time(app, pilot, INSIDE)
            text = shown(app, "pitr-plan-text")
            assert "euw1" in text and "6 missing" in text
            assert "Reachable    up to 2024-06-05 03:10:59 (WAL 0000003F)" in text
            assert "41.2s (median RTO of the last 3 drill(s))" in text
            # target: the suggested directory beside the cluster's, a free port
            await pilot.press("enter")
            target = app.screen.query_one("#pitr-target-input", Input).value
            assert target.startswith("/srv/pg/16/main-at-")
            # the cluster's own data directory is refused
            app.screen.query_one("#pitr-target-input", Input).value = "/srv/pg/16/main"
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "target" and "own data directory" in w.error
            app.screen.query_one("#pitr-target-input", Input).value = "relative/dir"
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "target" and "absolute path" in w.error

    asyncio.run(flow())


def test_a_time_in_the_future_is_refused_naming_the_newest_reachable_point():
    app = console(CannedPitrEngine())

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_step(app, pilot, "time")
            await type_time(app, pilot, "2099-01-01 00:00")
            assert w.step == "plan" and w.planned.refused
            assert REACH.isoformat() in shown(app, "pitr-plan-text")
            assert "past the newest reachable point" in w.error
            await pilot.press("enter")  # refused: back to the time, the reason kept
            assert w.step == "time" and REACH.isoformat() in w.error
            assert app.screen.query_one("#pitr-time-input", Input).has_focus

    asyncio.run(flow())


def test_a_logical_database_says_it_restores_the_newest_dump_before_the_time():
    app = console(CannedPitrEngine())

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await open_wizard(app, pilot)
            names = [c.info.name for c in w.choices]
            assert names == ["main", "shop", "crm"]  # no fileset: files have no time to go to
            listed = str(app.screen.query_one("#pitr-sources", OptionList).get_option_at_index(
                1).prompt)
            assert "newest dump before the time" in listed
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert "restores the newest dump taken before the time" in shown(
                app, "pitr-time-note")
            assert [p.row for p in w.timeline.points] == ["dumps", "dumps"]
            await type_time(app, pilot, (T0 + timedelta(hours=30)).isoformat())
            text = shown(app, "pitr-plan-text")
            assert "Restores the newest dump of database shop taken before" in text
            assert f"dump {_id(3)[:8]}" in text and "5h 0m 0s before it" in text
            assert "changes made after it are not replayed" in text
            await pilot.press("enter")
            assert w.step == "target"
            name = app.screen.query_one("#pitr-target-input", Input).value
            assert name.startswith("shop_at_2024060")
            assert not app.screen.query_one("#pitr-port-input", Input).display
            # a name that is not an identifier
            app.screen.query_one("#pitr-target-input", Input).value = "shop-copy; drop"
            await pilot.press("enter")
            await settle(app, pilot)
            assert w.step == "target" and "not a database name" in w.error
            # a time before the first dump: refused with it named
            await pilot.press("escape")
            await settle(app, pilot)
            w = await open_wizard(app, pilot)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            await type_time(app, pilot, "2020-01-01 00:00")
            assert w.planned.refused and "the first one was taken at" in w.planned.refused
            # and one in the future
            await pilot.press("escape")
            await settle(app, pilot)
            w = await open_wizard(app, pilot)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            await type_time(app, pilot, "2099-01-01 00:00")
            assert "is in the future" in w.planned.refused
            assert (T0 + timedelta(hours=49)).isoformat() in w.planned.refused

    asyncio.run(flow())


def test_read_only_console_offers_no_recovery():
    engine = CannedPitrEngine()
    engine.is_admin = False
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("t")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())


def test_the_palette_opens_the_wizard():
    app = console(CannedPitrEngine())

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"point-in-time")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert wizard(app).step == "source"

    asyncio.run(flow())


def test_the_dialog_follows_a_resize_to_60x20():
    app = console(CannedPitrEngine())

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_step(app, pilot, "plan")
            await pilot.resize_terminal(60, 20)
            await settle(app, pilot)
            dialog = w.query_one("#pitr-dialog")
            assert dialog.region.x >= 0 and dialog.region.right <= 60
            assert dialog.region.bottom <= 20
            await pilot.press("enter")  # and it goes on
            await settle(app, pilot)
            assert w.step == "target"

    asyncio.run(flow())


def test_the_dialog_fits_60_columns():
    app = console(CannedPitrEngine())

    async def flow():
        async with app.run_test(size=(60, 20)) as pilot:
            w = await to_step(app, pilot, "plan")
            dialog = w.query_one("#pitr-dialog")
            assert dialog.region.x >= 0 and dialog.region.right <= 60
            assert dialog.region.bottom <= 20
            await pilot.press("enter")
            await settle(app, pilot)
            dialog = w.query_one("#pitr-dialog")
            assert dialog.region.right <= 60 and dialog.region.bottom <= 20
            assert w.query_one("#pitr-target-input").region.right <= 60

    asyncio.run(flow())


async def to_run(app: BackupConsole, pilot: Pilot) -> PitrWizard:
    """Walk the canned cluster to the run step (the suggested directory confirmed)."""
    w = await to_step(app, pilot, "confirm")
    assert w.target is not None
    app.screen.query_one("#pitr-confirm-input", Input).value = w.target.target
    await pilot.press("enter")
    assert w.step in ("run", "result")  # a fast failure is there already
    return w


async def until(pilot: Pilot, check, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


RESULT = {"source": "main", "snapshot": _id(301), "pgdata": "/srv/pg/16/main-at-20240604",
          "target": {}, "replica": None, "files": 1804, "bytes": 1_610_000_000,
          "moved_aside": None, "port": 5544, "started": True, "promoted": True,
          "seconds_to_promotion": 12.4, "total_seconds": 71.9, "replay_lsn": "A2/3F000A10",
          "replay_time": "2024-06-04 18:00:09.51+00", "timeline": 2,
          "stopped": "before commit of transaction 91234, time 2024-06-04 18:00:12.02+00",
          "server": {"port": 5544, "socket_dir": "/tmp/backup-tui-pitr-x1",
                     "log": "/tmp/backup-tui-pitr-log-x1/server.log",
                     "bin_dir": "/usr/lib/postgresql/16/bin", "owner": "postgres",
                     "user": "postgres"}}


def test_the_run_shows_base_restore_bytes_then_wal_replayed_then_the_result():
    engine = CannedPitrEngine()
    go = threading.Event()

    def run(cluster, target, pgdata, port, on_event, cancel):
        on_event(Event("j1", "restore", bytes_done=400 << 20, bytes_total=1600 << 20,
                       items_done=500, items_total=1804, message=pgdata))
        go.wait(10)
        go.clear()
        on_event(Event("j1", "recovery", message="replayed to A2/38000060"))
        go.wait(10)
        return dict(RESULT, pgdata=pgdata, port=port)

    engine.run = run
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_run(app, pilot)
            await until(pilot, lambda: "base restore" in shown(app, "pitr-run-numbers"))
            assert "400.0 MiB of 1.6 GiB · 500/1804 files" in shown(app, "pitr-run-numbers")
            await pilot.press("escape")  # no way out but c while it runs
            assert w.step == "run" and isinstance(app.screen, PitrWizard)
            go.set()
            await until(pilot, lambda: "recovering" in shown(app, "pitr-run-numbers"))
            assert shown(app, "pitr-run-numbers") == "recovering: replayed to A2/38000060"
            go.set()
            await settle(app, pilot)
            assert w.step == "result"
            text = shown(app, "pitr-result-text")
            assert "Promoted after 12.4s of recovery (1m 12s in all)" in text
            assert "Last replayed: LSN A2/3F000A10" in text and "new timeline 2" in text
            port = engine.restores[0][3]
            assert f"psql -h 127.0.0.1 -p {port} -U postgres" in text
            assert ("Stop it: runuser -u postgres -- /usr/lib/postgresql/16/bin/pg_ctl -D "
                    f"{engine.restores[0][2]} stop") in text
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            assert any("runs on port" in n.message for n in app._notifications)

    asyncio.run(flow())


def test_cancel_during_the_run_says_what_is_left():
    engine = CannedPitrEngine()

    def run(cluster, target, pgdata, port, on_event, cancel):
        on_event(Event("j1", "recovery", message="server started on port 5544, replaying"))
        while not cancel.cancelled:
            time.sleep(0.02)
        raise Cancelled("restore pitr cancelled: the server was stopped")

    engine.run = run
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_run(app, pilot)
            await until(pilot, lambda: "recovering" in shown(app, "pitr-run-numbers"))
            await pilot.press("c")
            await settle(app, pilot)
            assert w.step == "result" and w.result["cancelled"]
            text = shown(app, "pitr-result-text")
            assert text.startswith("Cancelled.")
            assert f"the restored data directory {w.target.target} is left" in text

    asyncio.run(flow())


def test_the_engine_failing_mid_run_is_shown_and_the_console_stays_usable():
    engine = CannedPitrEngine()

    def run(cluster, target, pgdata, port, on_event, cancel):
        raise EngineError(f"data directory {pgdata} is not empty: restore into a new or "
                          "empty directory")

    engine.run = run
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            w = await to_run(app, pilot)
            await settle(app, pilot)
            assert w.step == "result"
            text = shown(app, "pitr-result-text")
            assert text.startswith(f"Failed: data directory {w.target.target} is not empty")
            assert "Nothing is left" in text
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            await pilot.press("t")  # still usable: the wizard opens again
            await settle(app, pilot)
            assert wizard(app).step == "source"

    asyncio.run(flow())


async def _result_step(pilot: Pilot) -> None:
    pilot.app.engine.run = lambda cluster, target, pgdata, port, on_event, cancel: dict(
        RESULT, port=5544)
    await to_run(pilot.app, pilot)
    await settle(pilot.app, pilot)


LOOK_SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
LOOK_PORT = 48485


@pytest.fixture
def fixed_port(monkeypatch):
    """The looks show the suggested port: one fixed number, taken as free."""
    monkeypatch.setattr(pitr_wizard, "free_port", lambda: LOOK_PORT)
    monkeypatch.setattr(pitr_wizard, "check_port", lambda text: int(text))


@LOOK_SIZES
@pytest.mark.parametrize("step", ["source", "time", "plan", "target", "confirm"])
def test_step_look(snap_compare, utc, fixed_port, size, step):
    """Each step before the run: the source list; the time step's timeline strip (a row per
    copy, the base backups, the newest reachable point); the plan (the base backup, the WAL,
    each copy with euw1 6 segments behind, the newest reachable point, the estimate from the
    drills); the data directory and port; the typed confirmation."""
    async def walk(pilot: Pilot) -> None:
        await to_step(pilot.app, pilot, step)

    assert snap_compare(console(CannedPitrEngine()), terminal_size=size, run_before=walk)


@LOOK_SIZES
def test_result_step_look(snap_compare, utc, fixed_port, size):
    """The result: promotion time, the last replayed point, where it runs, how to connect
    and how to stop it."""
    assert snap_compare(console(CannedPitrEngine()), terminal_size=size,
                        run_before=_result_step)
