"""The schedule screen: only kinds that can run, dates with their time zone, a pending run now.

The engine says per schedule whether it has anything to run with this config
(``runnable``, ``why``: a files sandbox has no database, no cluster, no replica and
nothing to drill) and when a run now was asked that no scheduler took yet
(``pending``). The console greys such a schedule out as "nothing to run" (no next
run), writes every date with its zone ("UTC", or the zone's abbreviation), and shows
a queued run now as "pending since HH:MM" until a scheduler takes it. Flows on the
real engine of a Sandbox (a console with no scheduler, so a request stays queued);
looks on canned schedules at 80x24, 160x48 and 60x20, with TZ fixed.
"""

from __future__ import annotations

import asyncio

from test_tui import no_cursor_blink, settle  # noqa: F401 (a fixture: snapshots hold still)
from test_tui_jobs import (
    CANNED_SCHEDULES,
    canned_console,
    daemon_holds_the_lock,  # noqa: F401 - the fixture
    utc,  # noqa: F401 - the fixture
)
from textual.pilot import Pilot

from backup_tui.app import BackupConsole
from backup_tui.screens.schedule import ScheduleScreen
from backup_tui.widgets.schedule_table import ScheduleTable


def by_kind(schedules: list[dict]) -> dict[str, dict]:
    return {s["kind"]: s for s in schedules}


def test_engine_says_which_schedules_can_run_and_which_run_now_waits(sandbox):
    eng = sandbox.engine(init=True)
    shown = by_kind(eng.schedules())
    assert shown["files"]["runnable"] and shown["files"]["why"] == ""
    assert shown["verify"]["runnable"] and shown["cleanup"]["runnable"]
    assert not shown["database"]["runnable"]
    assert shown["database"]["why"] == "no [[database]] is configured"
    assert (shown["replicate"]["runnable"], shown["replicate"]["why"]) == (
        False, "no [[replica]] is configured")
    assert (shown["drill"]["runnable"], shown["drill"]["why"]) == (
        False, "no configured source can be drilled")
    assert all(s["pending"] is None for s in shown.values())
    eng.request_run("files")
    eng.request_run("files")
    pending = by_kind(eng.schedules())["files"]["pending"]
    assert pending is not None and pending.endswith("+00:00")
    assert by_kind(eng.schedules())["verify"]["pending"] is None
    taken = eng.catalog.take_requests()  # what a scheduler does
    assert [r["kind"] for r in taken] == ["files", "files"]
    assert by_kind(eng.schedules())["files"]["pending"] is None


def cells(app: BackupConsole, kind: str) -> list[str]:
    table = app.screen.query_one(ScheduleTable)
    return [str(c) for c in table.get_row(kind)]


def test_schedule_screen_greys_what_cannot_run_and_shows_a_pending_run_now(sandbox, utc):  # noqa: F811
    """A files sandbox: drill, database, cluster and replicate have nothing to run (greyed,
    no next run, n disabled); every date says UTC; n on files with no scheduler anywhere
    leaves the request queued: "pending since HH:MM" on its row, and who will take it."""
    eng = sandbox.engine(init=True)
    app = BackupConsole(eng, run_scheduler=False)

    async def flow():
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            await pilot.press("s")
            await settle(app, pilot)
            assert isinstance(app.screen, ScheduleScreen)
            table = app.screen.query_one(ScheduleTable)
            drill = cells(app, "drill")
            assert drill[3] == "nothing to run" and drill[4] == "—"
            assert table.get_row("drill")[0].style == "dim"
            files = cells(app, "files")
            assert files[3] == "active" and files[4].endswith(" UTC"), files
            assert cells(app, "verify")[4].endswith(" UTC")
            # The detail of an unrunnable one says why; n cannot act on it.
            table.move_cursor(row=list(table.schedules).index("drill"))
            await pilot.pause()
            detail = app.screen.detail.text
            assert "nothing to run: no configured source can be drilled" in detail
            assert app.screen.check_action("run_now", ()) is None
            await pilot.press("n")
            await settle(app, pilot)
            assert all(s["pending"] is None for s in eng.schedules())
            # Run now on files: queued, no scheduler to take it: pending on its row.
            table.move_cursor(row=list(table.schedules).index("files"))
            await pilot.pause()
            assert app.screen.check_action("run_now", ())
            await pilot.press("n")
            await settle(app, pilot)
            app.screen.load()
            await settle(app, pilot)
            pending = by_kind(eng.schedules())["files"]["pending"]
            assert pending is not None
            hhmm = pending[11:16]
            assert cells(app, "files")[4] == f"pending since {hhmm}"
            detail = app.screen.detail.text
            assert f"run now pending since {pending[:10]} {pending[11:19]} UTC" in detail
            assert "no scheduler is running" in detail
            # A scheduler takes it: the row shows the next run again.
            eng.catalog.take_requests()
            app.screen.load()
            await settle(app, pilot)
            assert cells(app, "files")[4].endswith(" UTC")

    asyncio.run(flow())


def canned_schedules() -> list[dict]:
    """The canned schedules of test_tui_jobs, with a drill that has nothing to run and a run
    now of verify waiting since 03:58 UTC."""
    out = [dict(s, runnable=True, why="", pending=None) for s in CANNED_SCHEDULES]
    by = by_kind(out)
    by["verify"]["pending"] = "2024-06-05T03:58:40+00:00"
    out.append({"kind": "drill", "cron": "0 5 * * sat", "what": "restore drills",
                "paused": False, "next_run": "2024-06-08T05:00:00+00:00", "last_run": None,
                "last_result": None, "last_error": None, "last_missed": None,
                "runnable": False, "why": "no configured source can be drilled",
                "pending": None})
    return out


def schedule_console() -> BackupConsole:
    app = canned_console()
    app.engine.schedules = lambda now=None: canned_schedules()
    return app


def _then(*keys: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)

    return run_before


def test_schedule_look_80(snap_compare, utc, daemon_holds_the_lock):  # noqa: F811
    """s at 80x24: verify under the cursor, its run now pending (the daemon takes it)."""
    assert snap_compare(schedule_console(), terminal_size=(80, 24),
                        run_before=_then("s", "down", "down", "down"))


def test_schedule_look_160(snap_compare, utc, daemon_holds_the_lock):  # noqa: F811
    """s at 160x48: drill greyed out, under the cursor, saying why."""
    assert snap_compare(schedule_console(), terminal_size=(160, 48),
                        run_before=_then("s", *["down"] * 5))


def test_schedule_look_60(snap_compare, utc, daemon_holds_the_lock):  # noqa: F811
    """s at 60x20: the footer keeps the screens, Help and Quit."""
    assert snap_compare(schedule_console(), terminal_size=(60, 20), run_before=_then("s"))
