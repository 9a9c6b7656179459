"""The console's layout at 60x20, 80x24 and 160x48 (issue 12, item 6).

Pilot checks of what must hold at each width (the inventory's detail pane beside
the table from 100 columns and folded below it under; the columns each width
keeps: time, source, status, a verified mark and replica ticks at 60; the columns
follow a resize), the wrapping of paths and ids, and snapshot tests of the
inventory, the jobs screen and the sources and replicas tabs at the three sizes on
the canned engines (time zone UTC, the jobs' clock fixed, no cursor blink).
"""

from __future__ import annotations

import asyncio

import pytest
from test_tui import CannedEngine, no_cursor_blink, settle, utc  # noqa: F401 (fixtures)
from test_tui_jobs import NOW, CannedJobsEngine
from textual.pilot import Pilot

from backup_tui.app import BackupConsole
from backup_tui.widgets.filter_bar import FilterBar
from backup_tui.widgets.job_table import MESSAGE_WIDTH, JobTable
from backup_tui.widgets.keyed_table import COMPACT, FULL, NARROW
from backup_tui.widgets.replica_table import ReplicaTable
from backup_tui.widgets.snapshot_detail import SnapshotDetail, describe, wrap_id, wrap_path
from backup_tui.widgets.snapshot_table import SnapshotTable
from backup_tui.widgets.source_table import SourceTable

SIZES = {"60x20": (60, 20), "80x24": (80, 24), "160x48": (160, 48)}


def inventory() -> BackupConsole:
    return BackupConsole(CannedEngine(), run_scheduler=False, start="inventory")


def jobs() -> BackupConsole:
    return BackupConsole(CannedJobsEngine(), run_scheduler=False, clock=lambda: NOW,
                         start="jobs")


def column_keys(table) -> list[str]:
    return [key.value for key in table.columns]


# --- wrapping ---------------------------------------------------------------------


def test_paths_wrap_after_a_slash():
    path = "/srv/app/data/uploads/2024/06/IMG_0612.jpg"
    assert wrap_path(path, 20) == ["/srv/app/data/", "uploads/2024/06/", "IMG_0612.jpg"]
    assert wrap_path(path, 60) == [path]
    # A name longer than a line is cut where it must, and nothing is lost.
    long = "/srv/" + "x" * 30 + "/y"
    assert all(len(line) <= 16 for line in wrap_path(long, 16))
    assert "".join(wrap_path(long, 16)) == long


def test_ids_wrap_in_groups_of_eight_in_as_few_even_lines_as_fit():
    sid = "0123456789abcdef" * 4
    assert wrap_id(sid, 64) == [sid]
    assert wrap_id(sid, 62) == [sid[:32], sid[32:]]  # 32 + 32, not 56 + 8
    assert wrap_id(sid, 20) == [sid[i:i + 16] for i in range(0, 64, 16)]


def test_detail_lines_keep_to_the_pane_width():
    record = CannedEngine().snapshot(CannedEngine().snapshots()[4].id)  # app-data, errors
    for width in (40, 57, 77):
        lines = describe(record, None, width).plain.splitlines()
        assert max(len(line) for line in lines) <= width
        joined = "".join(line.strip() for line in lines)
        assert record["id"] in joined  # the whole id, in groups
        assert "/srv/app/data/uploads/2024/06/IMG_0612.jpg" in joined


# --- what each width shows --------------------------------------------------------


@pytest.mark.parametrize("size, level, beside", [
    ((60, 20), NARROW, False), ((80, 24), COMPACT, False), ((160, 48), FULL, True)])
def test_inventory_columns_and_detail_pane_by_width(size, level, beside):
    app = inventory()

    async def flow():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            pane = app.screen.query_one(SnapshotDetail)
            assert table.level == level
            keys = column_keys(table)
            for key in ("time", "kind", "source", "status", "verified"):
                assert key in keys
            if level == FULL:
                assert keys[-2:] == ["replica:use1", "replica:euw1"]
            else:
                assert keys[-1] == "replicas"
                assert table.get_cell_at((0, len(keys) - 1)).plain == "✓·"  # use1, not euw1
            # Every column is visible without scrolling sideways.
            assert table.virtual_size.width <= table.scrollable_content_region.width
            if beside:
                assert pane.region.x >= table.region.right and pane.region.width > 38
            else:
                assert pane.region.y >= table.region.bottom
                assert pane.region.width >= size[0] - 1
            assert max(len(line) for line in pane.text.splitlines()[:1]) <= pane.region.width

    asyncio.run(flow())


def test_a_resize_recomputes_the_columns_and_folds_the_pane():
    app = inventory()

    async def flow():
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(SnapshotTable)
            await pilot.press("down", "down")
            selected = table.selected_id
            assert table.level == FULL and app.screen.has_class("-wide")
            await pilot.resize_terminal(60, 20)
            await settle(app, pilot)
            assert table.level == NARROW and app.screen.has_class("-narrow")
            assert "size" not in column_keys(table)
            assert table.selected_id == selected  # the cursor stays on its snapshot
            pane = app.screen.query_one(SnapshotDetail)
            assert pane.region.y >= table.region.bottom
            await pilot.resize_terminal(160, 48)
            await settle(app, pilot)
            assert table.level == FULL and "size" in column_keys(table)
            assert pane.region.x >= table.region.right

    asyncio.run(flow())


@pytest.mark.parametrize("size, hidden", [
    ((60, 20), {"started", "rate", "eta", "message"}),
    ((80, 24), {"rate", "eta", "message"}),
    ((160, 48), set())])
def test_jobs_columns_by_width(size, hidden):
    app = jobs()

    async def flow():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(JobTable)
            keys = set(column_keys(table))
            assert keys == {k for k, _ in JobTable.COLUMNS} - hidden
            assert table.virtual_size.width <= table.scrollable_content_region.width
            if not hidden:  # a wide table gives the message the room the others leave
                error = table.get_cell_at((2, 8)).plain
                assert "put data/3f/3f9a0c" in error and len(error) > MESSAGE_WIDTH

    asyncio.run(flow())


def test_a_resize_of_the_jobs_screen_recomputes_its_columns():
    app = jobs()

    async def flow():
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            table = app.screen.query_one(JobTable)
            await pilot.press("down", "down")  # the failed replication
            chosen = table.cursor_key
            assert table.level == FULL and "message" in column_keys(table)
            await pilot.resize_terminal(60, 20)
            await settle(app, pilot)
            assert table.level == NARROW and "message" not in column_keys(table)
            assert table.cursor_key == chosen and table.row_count == 8
            await pilot.resize_terminal(80, 24)
            await settle(app, pilot)
            assert table.level == COMPACT and "started" in column_keys(table)
            assert table.cursor_key == chosen

    asyncio.run(flow())


@pytest.mark.parametrize("size", [(60, 20), (80, 24)])
def test_sources_and_replicas_fit_without_scrolling_sideways(size):
    app = inventory()

    async def flow():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            for key, table_class in (("o", SourceTable), ("p", ReplicaTable)):
                await pilot.press(key)
                await settle(app, pilot)
                table = app.screen.query_one(table_class)
                assert table.row_count
                assert table.virtual_size.width <= table.scrollable_content_region.width
                await pilot.press("escape")
                await settle(app, pilot)

    asyncio.run(flow())


# --- the look ---------------------------------------------------------------------


def _then(*keys: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)
        while any(bar.pending for bar in pilot.app.screen.query(FilterBar)):
            await pilot.pause(0.05)  # a typed filter waits for the keys to pause
        await settle(pilot.app, pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_inventory_look(snap_compare, utc, size):  # noqa: F811
    """The snapshots: compact columns and the detail folded below at 60 and 80, every
    column and the detail beside at 160."""
    assert snap_compare(inventory(), terminal_size=SIZES[size], run_before=_then())


@pytest.mark.parametrize("size", SIZES)
def test_inventory_filtered_look(snap_compare, utc, size):  # noqa: F811
    """/ kind:files, the input still open: the table's title says 4 of 6."""
    keys = ["slash", "k", "i", "n", "d", "colon", "f", "i", "l", "e", "s"]
    assert snap_compare(inventory(), terminal_size=SIZES[size], run_before=_then(*keys))


@pytest.mark.parametrize("size", SIZES)
def test_jobs_look(snap_compare, utc, size):  # noqa: F811
    """The jobs: fewer columns at 60 and 80 (the detail has the rest), the message at 160."""
    assert snap_compare(jobs(), terminal_size=SIZES[size], run_before=_then())


@pytest.mark.parametrize("size", SIZES)
def test_sources_tab_look(snap_compare, utc, size):  # noqa: F811
    """o: the sources, without the WAL column at 60."""
    assert snap_compare(inventory(), terminal_size=SIZES[size], run_before=_then("o"))


@pytest.mark.parametrize("size", SIZES)
def test_replicas_tab_look(snap_compare, utc, size):  # noqa: F811
    """p: the replicas, the failing one under the cursor; no bucket at 80, no error at 60."""
    assert snap_compare(inventory(), terminal_size=SIZES[size], run_before=_then("p", "down"))
