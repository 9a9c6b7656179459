"""The dashboard, the console's first screen: am I protected?

Flows on a real files engine (the ``sandbox`` fixture): the dashboard shows
first, says what is missing before the first backup and "Protected" after it
(on ``r``), calls a source late two days later (the engine's clock moved, the
repository untouched), and ``d`` comes back to it from the other screens. The
look on canned data (``CannedDashboardEngine``: the canned engine of
test_tui.py with a status, a health and a history as of T0 + 49.25 h, none of it
depending on now) at 60x20, 80x24 and 160x48, time zone UTC, clock fixed.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from test_tui import (  # noqa: F401 (no_cursor_blink: a fixture, so snapshots hold still)
    CANNED_REASONS,
    CANNED_REPLICAS,
    CannedEngine,
    _canned_status,
    _iso,
    console,
    fill,
    no_cursor_blink,
    settle,
    two_replicas,
    utc,  # noqa: F401 - the fixture
)
from textual.pilot import Pilot

from backup_tui.app import BackupConsole
from backup_tui.format import human_bytes
from backup_tui.screens import dashboard as dashboard_module
from backup_tui.screens.dashboard import DashboardScreen
from backup_tui.screens.help import HelpScreen
from backup_tui.screens.inventory import InventoryScreen
from backup_tui.widgets.dashboard import DashboardTable
from backup_tui.widgets.dashboard_plots import Plot
from engine.errors import EngineError
from engine.ops import status as status_op

SIZE = (100, 30)
CHECKED = 49.25  # hours after T0: when the canned engine "checked"


def dashboard_console(engine, **kwargs) -> BackupConsole:
    """The console as ``run_console`` opens it (on the dashboard), without a scheduler."""
    return BackupConsole(engine, run_scheduler=False, **kwargs)


def verdict_text(app: BackupConsole) -> str:
    return str(app.screen.query_one("#dash-verdict").visual)


def row(app: BackupConsole, key: str) -> dict[str, str]:
    """The cells of one source's row, by column key, as plain text."""
    table = app.screen.query_one(DashboardTable)
    cells = table.get_row(key)
    return {str(col.key.value): str(cell) for col, cell in zip(table.ordered_columns, cells,
                                                                strict=True)}


def plot_title(app: BackupConsole, key: str) -> str:
    return app.screen.query_one(f"#plot-{key}", Plot).title_text


# --- flows on a real engine -------------------------------------------------------


def test_dashboard_is_first_and_turns_protected_after_a_backup(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = dashboard_console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert isinstance(app.screen, DashboardScreen)
            assert app.current_mode == "dashboard"
            text = verdict_text(app)
            assert "✗ 1 problem ·" in text and "files src: no complete backup" in text
            assert row(app, "files:src")["backup"] == "✗ never"
            assert "nothing added" in plot_title(app, "added")
            await asyncio.to_thread(engine.backup, "files", "src")
            await pilot.press("r")
            await settle(app, pilot)
            text = verdict_text(app)
            assert text.startswith("✓ Protected · 1 source, 0 replicas")
            stored = engine.status()["repository_bytes"]
            assert f"repository {human_bytes(stored)}" in text
            cells = row(app, "files:src")
            assert cells["backup"].startswith("✓ ") and cells["fails"] == "0"
            assert cells["verify"] == "never" and cells["wal"] == "—"
            assert plot_title(app, "size").startswith(f"Repository {human_bytes(stored)}")
            [snap] = engine.snapshots()
            assert plot_title(app, "added").startswith(f"Added/day {human_bytes(snap.added)}")
            assert "over 1 backup" in plot_title(app, "duration")
            assert "no passed drill in 30 d" in plot_title(app, "rto")

    asyncio.run(flow())


def test_the_timer_picks_up_a_backup_made_elsewhere(sandbox, monkeypatch):
    """No key pressed: the periodic read sees the new snapshot, and since the sources have
    another snapshot than at the last history, the plots are read again too."""
    monkeypatch.setattr(dashboard_module, "REFRESH_SECONDS", 0.05)
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = dashboard_console(engine)

    async def flow():
        async def until(text: str) -> None:  # the timer keeps reading: no settle()
            for _ in range(600):  # bounded: the reads land within a few ticks (30 s)
                await pilot.pause(0.05)
                if text in plot_title(app, "duration"):
                    return

        async with app.run_test(size=SIZE) as pilot:
            await until("no backup in 30 d")
            assert "no backup in 30 d" in plot_title(app, "duration")
            await asyncio.to_thread(sandbox.engine().backup, "files", "src")  # another engine
            await until("over 1 backup")
            assert verdict_text(app).startswith("✓ Protected")
            assert "over 1 backup" in plot_title(app, "duration")

    asyncio.run(flow())


class _Later(datetime):
    """``datetime`` whose now is two days ahead: the engine's status read later."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(days=2)


def test_a_late_source_is_a_problem(sandbox, monkeypatch):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    monkeypatch.setattr(status_op, "datetime", _Later)
    app = dashboard_console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            text = verdict_text(app)
            assert "✗ 1 problem" in text
            assert "files src: newest complete backup is 48.0 h old (limit 26 h)" in text
            assert row(app, "files:src")["backup"] == "✗ 2 d"

    asyncio.run(flow())


def test_d_returns_to_the_dashboard_and_enter_opens_the_inventory(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = dashboard_console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("i")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            await pilot.press("d")
            await settle(app, pilot)
            assert isinstance(app.screen, DashboardScreen)
            await pilot.press("j")
            await settle(app, pilot)
            await pilot.press("d")
            await settle(app, pilot)
            assert isinstance(app.screen, DashboardScreen)
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen) and app.screen.title_text == "Dashboard"
            assert "Refresh" in {k.description for k in app.screen.keys}
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("enter")  # on the source's row
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())


def test_replicas_per_region_before_and_after_replication(sandbox, s3_server, s3_buckets):
    """Two S3 replicas (us-east-1, eu-west-1): the newest backup in neither, then in both."""
    fill(sandbox.src)
    sandbox.extra = two_replicas(s3_server, s3_buckets, replicate_after_backup=False)
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    app = dashboard_console(engine)

    async def flow():
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            assert row(app, "files:src")["copies"] == "use1 ✗ euw1 ✗"
            lines = str(app.screen.query_one("#dash-replicas").visual).splitlines()
            assert lines[0].startswith("use1 us-east-1 ✗ never replicated")
            assert lines[1].startswith("euw1 eu-west-1 ✗ never replicated")
            text = verdict_text(app)
            assert "✗ 2 problems · 1 source, 2 replicas" in text
            assert "replica use1: never replicated" in text
            await asyncio.to_thread(engine.replicate)
            await pilot.press("r")
            await settle(app, pilot)
            assert row(app, "files:src")["copies"] == "use1 ✓ euw1 ✓"
            lines = str(app.screen.query_one("#dash-replicas").visual).splitlines()
            assert lines[0].startswith("use1 us-east-1 ✓ ") and lines[0].endswith(" ago")
            assert lines[1].startswith("euw1 eu-west-1 ✓ ")
            assert verdict_text(app).startswith("✓ Protected · 1 source, 2 replicas")

    asyncio.run(flow())


def test_start_picks_the_first_screen(sandbox):
    engine = sandbox.engine(init=True)
    app = console(engine)  # the other console tests: start="inventory"

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            await pilot.press("d")
            await settle(app, pilot)
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(flow())


# --- the look on canned data ------------------------------------------------------


def _status_entries() -> list[dict]:
    """test_tui's canned status with the fields the dashboard reads besides."""
    extra = {
        "main": {"failures_24h": 0, "last_verified": _iso(30),
                 "in_replicas": {"use1": True, "euw1": True}},
        "shop": {"failures_24h": 1, "last_verified": _iso(49.2),
                 "in_replicas": {"use1": True, "euw1": False}},
        "crm": {"failures_24h": 3, "last_verified": None, "in_replicas": {}},
        "app-data": {"failures_24h": 0, "last_verified": _iso(26),
                     "in_replicas": {"use1": True, "euw1": True}},
        "app-config": {"failures_24h": 0, "last_verified": None,
                       "in_replicas": {"use1": True, "euw1": True}},
    }
    return [entry | extra[entry["name"]] for entry in _canned_status()]


def _history() -> dict:
    """30 days ending on T0's third day: a repository growing, a few drills."""
    end = datetime.fromisoformat(_iso(CHECKED)).date()
    days = [end - timedelta(days=29 - n) for n in range(30)]
    added = [0 if n % 7 == 6 else 4_000_000 + (n * 733_000) % 9_000_000 for n in range(30)]
    size, daily = 180_000_000, []
    for day, more in zip(days, added, strict=True):
        size += more
        daily.append({"day": day.isoformat(), "size": size, "added": more,
                      "backups": 2 if more else 0, "failures": 1 if day == end else 0})
    backups = [{"time": f"{day.isoformat()}T02:00:00+00:00", "kind": "db", "source": "shop",
                "seconds": 40.0 + (n * 17) % 35, "added": added[n], "size": 310_000_000,
                "complete": True} for n, day in enumerate(days) if added[n]]
    drills = [{"time": f"{days[n].isoformat()}T05:00:00+00:00", "kind": "db",
               "source": "shop", "ok": True, "rto_seconds": rto}
              for n, rto in ((2, 41.0), (9, 39.5), (16, 44.2), (23, 36.1), (29, 37.5))]
    return {"now": _iso(CHECKED), "since": f"{days[0].isoformat()}T00:00:00+00:00",
            "days": 30, "repository_bytes": size, "daily": daily, "backups": backups,
            "drills": drills}


class CannedDashboardEngine(CannedEngine):
    """The canned engine with what the dashboard reads, as of T0 + 49.25 h."""

    def status(self) -> dict:
        replicas = [dict(r, failing=r["name"] == "euw1") for r in CANNED_REPLICAS]
        return {"sources": _status_entries(), "replicas": replicas,
                "repository_bytes": _history()["repository_bytes"]}

    def health(self) -> dict:
        return {"ok": False, "reasons": list(CANNED_REASONS), "checked": _iso(CHECKED)}

    def history(self, days: int = 30) -> dict:
        return _history()


class HealthyEngine(CannedDashboardEngine):
    """Every source backed up in time, every replica current."""

    def status(self) -> dict:
        status = super().status()
        status["sources"] = [dict(e, age_hours=2.5, last_good=_iso(CHECKED - 2.5),
                                  failures_24h=0, in_replicas={"use1": True, "euw1": True},
                                  drill=e.get("drill") and {**e["drill"], "last": {
                                      "id": "d9", "ok": True, "rto_seconds": 35.0,
                                      "finished": _iso(CHECKED - 5), "started": _iso(49)}},
                                  wal=None)
                             for e in status["sources"]]
        status["replicas"] = [dict(r, failing=False, last_error=None, objects_behind=0,
                                   bytes_behind=0, last_success=_iso(CHECKED - 0.2))
                              for r in status["replicas"]]
        return status

    def health(self) -> dict:
        return {"ok": True, "reasons": [], "checked": _iso(CHECKED)}


class BrokenStatusEngine(CannedDashboardEngine):
    def status(self) -> dict:
        raise EngineError("catalog locked by another process")


def canned_dashboard() -> BackupConsole:
    return dashboard_console(CannedDashboardEngine(),
                             clock=lambda: datetime.fromisoformat(_iso(CHECKED)).timestamp())


async def _loaded(pilot: Pilot) -> None:
    await settle(pilot.app, pilot)


def test_canned_figures_reach_every_column():
    app = canned_dashboard()

    async def flow():
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            assert verdict_text(app).startswith("✗ 3 problems · 5 sources, 2 replicas")
            main = row(app, "cluster:main")
            assert main["drill"] == "✗ failed"
            assert main["walcopies"] == "euw1 26 min behind"
            assert main["wal"] == "✓ 4 min" and main["copies"] == "use1 ✓ euw1 ✓"
            shop = row(app, "db:shop")
            assert shop["drill"] == "✓ 8 min ago, 38 s" and shop["fails"] == "1"
            assert shop["copies"] == "use1 ✓ euw1 ✗" and shop["verify"] == "3 min"
            assert row(app, "db:crm")["backup"] == "✗ never"
            assert row(app, "files:app-config")["backup"] == "✗ 2 d"
            replicas = str(app.screen.query_one("#dash-replicas").visual)
            assert "euw1 eu-west-1 ✗ failing (last ok 25.1 h ago), 41 objects" in replicas
            assert "use1 us-east-1 ✓ 9 min ago" in replicas
            assert "over 5 drills" in plot_title(app, "rto")
            await pilot.resize_terminal(60, 20)
            await settle(app, pilot)
            assert row(app, "db:shop")["copies"] == "✓✗"
            assert row(app, "cluster:main")["wal"] == "! 4 min"  # a replica behind

    asyncio.run(flow())


def test_a_failed_read_says_so_and_keeps_the_figures():
    engine = CannedDashboardEngine()
    app = dashboard_console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert "3 problems" in verdict_text(app)
            engine.status = BrokenStatusEngine().status
            await pilot.press("r")
            await settle(app, pilot)
            status = str(app.screen.query_one("#dash-status").visual)
            assert status == "Cannot read the status: catalog locked by another process"
            assert "3 problems" in verdict_text(app)  # the last good read stays
            assert app.is_running

    asyncio.run(flow())


@pytest.mark.parametrize("size", [(60, 20), (80, 24), (160, 48)])
def test_dashboard_look(snap_compare, utc, size):  # noqa: F811 - the fixture
    """Three problems named under the verdict, the late and failed cells in red, a replica
    failing, and the four plots, at each size."""
    assert snap_compare(canned_dashboard(), terminal_size=size, run_before=_loaded)



def test_dashboard_look_protected(snap_compare, utc):  # noqa: F811 - the fixture
    """Everything in time: the verdict in green, every cell ticked."""
    app = dashboard_console(HealthyEngine(),
                            clock=lambda: datetime.fromisoformat(_iso(CHECKED)).timestamp())
    assert snap_compare(app, terminal_size=(80, 24), run_before=_loaded)
