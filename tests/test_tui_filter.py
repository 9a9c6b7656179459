"""The ``/`` filter of the inventory and the jobs screen (issue 12, item 5).

The query's words (``RowFilter``) first, then Pilot flows on the canned engines of
test_tui.py (six snapshots: three of fileset app-data, one of app-config, two of
database shop, one incomplete) and test_tui_jobs.py (eight jobs: two running, one
failed replication to euw1): typing filters live, ``kind:``, ``source:`` and
``status:``/``state:`` combine with free text, Enter keeps the filter and gives the
focus back to the table, Esc clears it (in the input, and on the table), a reload
keeps it, and Enter on a filtered row opens the restore wizard for that row. The
sources and replicas tabs filter their own tables the same way.
"""

from __future__ import annotations

import asyncio

from test_tui import settle
from test_tui_jobs import NOW, CannedJobsEngine
from test_tui_restore import CannedRestoreEngine
from textual.pilot import Pilot

from backup_tui.app import BackupConsole
from backup_tui.screens.inventory import InventoryScreen
from backup_tui.screens.jobs import NO_MATCH as NO_JOB_MATCHES
from backup_tui.screens.jobs import JobsScreen
from backup_tui.screens.restore_wizard import SnapshotStep
from backup_tui.widgets.filter_bar import FilterBar, RowFilter, count_title
from backup_tui.widgets.job_table import JobTable
from backup_tui.widgets.replica_table import ReplicaTable
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from backup_tui.widgets.source_table import SourceTable

SIZE = (80, 24)


# --- the query --------------------------------------------------------------------


def test_fields_match_by_prefix_and_free_text_anywhere():
    row = ({"kind": "files", "source": "app-data", "status": "incomplete"},
           "06-05 02:00 files app-data incomplete")
    assert RowFilter.parse("kind:files").matches(*row)
    assert RowFilter.parse("KIND:Fi source:app").matches(*row)
    assert not RowFilter.parse("kind:db").matches(*row)
    assert RowFilter.parse("status:incomplete").matches(*row)
    assert not RowFilter.parse("status:complete").matches(*row)  # a prefix, not a part
    assert RowFilter.parse("state:in").matches(*row)  # state: and status: say the same
    assert RowFilter.parse("target:app-d").matches(*row)  # target: and source: too
    assert RowFilter.parse("02:00 app").matches(*row)  # free words, all of them
    assert not RowFilter.parse("02:00 shop").matches(*row)
    assert not RowFilter.parse("kind:files shop").matches(*row)  # fields and words combine


def test_unknown_keys_are_free_text_and_a_missing_field_matches_nothing():
    parsed = RowFilter.parse("s3://bucket colour:red kind:")
    assert parsed.fields == ()
    assert parsed.words == ("s3://bucket", "colour:red", "kind:")
    assert RowFilter.parse("colour:red").matches({}, "a colour:red row")
    assert not RowFilter.parse("status:failed").matches({"kind": "files"}, "failed")
    assert not RowFilter.parse("  ")  # nothing to filter by: every row
    assert RowFilter.parse(" kind:db   shop ").query == "kind:db shop"


def test_count_title():
    assert count_title("snapshots", 6, 6, "") == "6 snapshots"
    assert count_title("jobs", 1, 8, "state:failed") == "1 of 8 · filter: state:failed"


# --- the inventory ----------------------------------------------------------------


def inventory(engine=None) -> BackupConsole:
    return BackupConsole(engine or CannedRestoreEngine(), run_scheduler=False,
                         start="inventory")


def rows(app) -> list[tuple[str, str, str]]:
    """(kind, source, status) of each row the snapshot table shows, top first."""
    table = app.screen.query_one(SnapshotTable)
    out = []
    for key in table.rows:
        info = table.infos[key.value]
        out.append((info.kind, info.source, "complete" if info.complete else "incomplete"))
    return out


def bar(app) -> FilterBar:
    return app.screen.query_one("#snapshot-filter", FilterBar)


KEYS = {" ": "space", ":": "colon", "-": "minus", "_": "underscore"}


async def applied(pilot: Pilot) -> None:
    """Wait until the filter typed is applied (it waits for the keys to pause)."""
    while any(bar.pending for bar in pilot.app.screen.query(FilterBar)):
        await pilot.pause(0.05)
    await settle(pilot.app, pilot)


async def type_in(pilot: Pilot, text: str) -> None:
    await pilot.press(*[KEYS.get(c, c) for c in text])
    await applied(pilot)


async def type_filter(pilot: Pilot, text: str) -> None:
    """/ then ``text``, key by key."""
    await pilot.press("slash")
    await pilot.pause()
    await type_in(pilot, text)


def test_typing_filters_the_snapshots_live():
    app = inventory()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            assert len(rows(app)) == 6 and table.border_title == "6 snapshots"
            assert not bar(app).display
            await type_filter(pilot, "app-d")
            assert bar(app).display and bar(app).has_focus
            assert rows(app) == [("files", "app-data", "incomplete"),
                                 ("files", "app-data", "complete"),
                                 ("files", "app-data", "complete")]
            assert table.border_title == "3 of 6 · filter: app-d"
            # Letters that are keys of the screen (b, r, p, o, q...) went into the input.
            assert isinstance(app.screen, InventoryScreen)
            await pilot.press(*["backspace"] * len("app-d"))
            await applied(pilot)
            assert len(rows(app)) == 6
            await type_in(pilot, "kind:db")
            assert rows(app) == [("db", "shop", "complete")] * 2
            detail = app.screen.query_one(SnapshotDetail)
            assert "kind         db" in detail.text

    asyncio.run(flow())


def test_fields_and_words_combine_and_no_match_says_so():
    app = inventory()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await type_filter(pilot, "kind:files status:incomplete")
            assert rows(app) == [("files", "app-data", "incomplete")]
            detail = app.screen.query_one(SnapshotDetail)
            info = app.screen.query_one(SnapshotTable).infos
            [shown] = [k.value for k in app.screen.query_one(SnapshotTable).rows]
            assert not info[shown].complete and shown in detail.text
            await type_in(pilot, " shop")
            assert rows(app) == []
            assert "No snapshot matches the filter" in detail.text
            assert (app.screen.query_one(SnapshotTable).border_title
                    == "0 of 6 · filter: kind:files status:incomplete shop")

    asyncio.run(flow())


def test_enter_keeps_the_filter_and_esc_clears_it():
    app = inventory()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            await type_filter(pilot, "source:app-config")
            await pilot.press("enter")
            await settle(app, pilot)
            assert not bar(app).display and table.has_focus
            assert rows(app) == [("files", "app-config", "complete")]
            assert table.border_title == "1 of 6 · filter: source:app-config"
            # / again: the input opens with the filter in effect, to change it.
            await pilot.press("slash")
            await pilot.pause()
            assert bar(app).display and bar(app).value == "source:app-config"
            await pilot.press("escape")  # in the input: clears and closes
            await settle(app, pilot)
            assert not bar(app).display and table.has_focus
            assert len(rows(app)) == 6 and table.border_title == "6 snapshots"
            # Enter applies what is typed at once, without waiting for the keys to pause.
            await pilot.press("slash", "k", "i", "n", "d", "colon", "d", "b", "enter")
            await settle(app, pilot)
            assert not bar(app).pending and len(rows(app)) == 2
            # Esc on the table clears a filter in effect; without one it does nothing here.
            await pilot.press("escape")
            await settle(app, pilot)
            assert len(rows(app)) == 6 and isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())


def test_refresh_keeps_the_filter():
    engine = CannedRestoreEngine()
    app = inventory(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await type_filter(pilot, "status:incomplete")
            await pilot.press("enter")
            await settle(app, pilot)
            assert rows(app) == [("files", "app-data", "incomplete")]
            dropped = engine._data.pop()  # the newest: database shop, complete
            await pilot.press("r")
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            assert dropped[0].id not in table.infos  # read again
            assert rows(app) == [("files", "app-data", "incomplete")]
            assert table.border_title == "1 of 5 · filter: status:incomplete"

    asyncio.run(flow())


def test_enter_on_a_filtered_row_restores_that_snapshot():
    app = inventory()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await type_filter(pilot, "app-config")
            await pilot.press("enter")  # keeps the filter
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            [wanted] = [i for i in table.infos.values() if i.source == "app-config"]
            await pilot.press("enter")  # on the one row left
            await settle(app, pilot)
            assert isinstance(app.screen, SnapshotStep)
            assert app.screen.snap["id"] == wanted.id

    asyncio.run(flow())


# --- the jobs screen --------------------------------------------------------------


def jobs_console() -> BackupConsole:
    return BackupConsole(CannedJobsEngine(), run_scheduler=False, clock=lambda: NOW,
                         start="jobs")


def job_rows(app) -> list[tuple[str, str, str]]:
    table = app.screen.query_one(JobTable)
    return [(table.jobs[k.value]["kind"], table.jobs[k.value]["target"],
             table.jobs[k.value]["state"]) for k in table.rows]


def test_jobs_filter_by_state_kind_and_source():
    app = jobs_console()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert isinstance(app.screen, JobsScreen) and len(job_rows(app)) == 8
            await type_filter(pilot, "state:failed")
            assert job_rows(app) == [("replicate", "euw1", "failed")]
            assert "access denied" in app.screen.detail.text  # the row under the cursor
            await pilot.press(*["backspace"] * len("state:failed"))
            await type_in(pilot, "kind:backup source:shop")
            assert job_rows(app) == [("backup", "db:shop", "running"),
                                     ("backup", "db:shop", "succeeded")]
            await type_in(pilot, " pg_dump")
            assert job_rows(app) == [("backup", "db:shop", "running")]
            await type_in(pilot, " zzz")
            assert job_rows(app) == []
            assert NO_JOB_MATCHES in app.screen.detail.text
            assert (app.screen.query_one(JobTable).border_title
                    == "0 of 8 · filter: kind:backup source:shop pg_dump zzz")

    asyncio.run(flow())


def test_jobs_polls_keep_the_filter_and_esc_clears_then_goes_back():
    app = jobs_console()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            await type_filter(pilot, "status:running")
            await pilot.press("enter")
            await settle(app, pilot)
            assert screen.table.has_focus
            polls = screen.polls
            while screen.polls < polls + 2:  # two reads of the catalog since
                await pilot.pause(0.1)
            assert [s for _, _, s in job_rows(app)] == ["running", "running"]
            assert screen.table.border_title == "2 of 8 · filter: status:running"
            await pilot.press("escape")  # clears the filter, stays
            await settle(app, pilot)
            assert app.screen is screen and len(job_rows(app)) == 8
            await pilot.press("escape")  # nothing to clear: back to the inventory
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())


# --- the sources and replicas tabs ------------------------------------------------


def test_the_sources_and_replicas_tabs_filter_their_own_tables():
    app = inventory()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            screen = app.screen
            await pilot.press("o")
            await settle(app, pilot)
            sources = screen.query_one(SourceTable)
            await type_filter(pilot, "status:late")
            # crm was never backed up, app-config is 48 h old (limit 26 h); the cluster's
            # drill failed, a status of its own.
            assert [k.value for k in sources.rows] == ["db:crm", "files:app-config"]
            assert sources.border_title == "2 of 5 · filter: status:late"
            await pilot.press("backspace", "backspace", "backspace", "backspace")
            await type_in(pilot, "failed kind:cluster")
            assert [k.value for k in sources.rows] == ["cluster:main"]
            await pilot.press("enter")
            await settle(app, pilot)
            assert sources.has_focus
            assert app.screen.query_one(SnapshotTable).border_title == "6 snapshots"
            await pilot.press("escape")  # clears the sources' filter
            await settle(app, pilot)
            assert sources.row_count == 5 and screen._tab == "sources-tab"
            await pilot.press("p")  # the replicas, from the sources: p goes there
            await settle(app, pilot)
            replicas = screen.query_one(ReplicaTable)
            await type_filter(pilot, "status:failing")
            assert [k.value for k in replicas.rows] == ["euw1"]
            await pilot.press("escape", "escape")  # clear and close, then back
            await settle(app, pilot)
            assert replicas.row_count == 2 and screen._tab == "snapshots-tab"

    asyncio.run(flow())
