"""The inventory with thousands of snapshots: the table shows the newest page at once and
adds the rest in batches (``SnapshotTable.show``), so the first paint does not wait for
DataTable to measure every cell of 10,000 rows and keys are answered while it fills.

On canned data (``CannedEngine`` with 1,200 generated snapshots); the speed itself is
measured in ``bench/first_paint.py``, never here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from test_tui import T0, CannedEngine, settle

from backup_tui.app import BackupConsole
from backup_tui.widgets.snapshot_table import BATCH_ROWS, FIRST_ROWS, SnapshotTable
from engine.facade import SnapshotInfo

COUNT = 1200
SIZE = (120, 40)


def _infos(n: int = COUNT) -> list[SnapshotInfo]:
    """``n`` snapshots an hour apart, oldest first, files and db in turn."""
    return [SnapshotInfo(id=f"{i:08x}" + "ab" * 28, time=T0 - timedelta(hours=n - i),
                         kind="files" if i % 2 else "db", source="app" if i % 2 else "shop",
                         host="vm", size=1000 + i, added=i, complete=True, parent=None,
                         files=i) for i in range(n)]


class ManyEngine(CannedEngine):
    def __init__(self) -> None:
        super().__init__()
        self.many = _infos()

    def snapshots(self, source=None, kind=None) -> list[SnapshotInfo]:
        return list(self.many)

    def snapshot(self, ref: str, source=None) -> dict:
        info = next(i for i in self.many if i.id.startswith(ref))
        return {"id": info.id, "time": info.time.isoformat(), "kind": info.kind,
                "source": info.source, "host": info.host, "parent": None,
                "stats": {"size": info.size, "added": info.added, "files": info.files}}


def _table(app) -> SnapshotTable:
    return app.screen.query_one(SnapshotTable)


def _keys(table: SnapshotTable) -> list[str]:
    return [table.coordinate_to_cell_key((r, 0)).row_key.value for r in range(table.row_count)]


def test_the_newest_page_first_then_every_row_newest_first():
    engine = ManyEngine()
    app = BackupConsole(engine, run_scheduler=False, start="inventory")

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table = _table(app)
            for _ in range(500):  # the rest comes in batches on a timer
                if table.row_count == COUNT:
                    break
                await pilot.pause(0.02)
            newest_first = [i.id for i in reversed(engine.many)]
            assert _keys(table) == newest_first
            assert table.selected_id == newest_first[0]
            assert table.border_title == f"{COUNT} snapshots"

            table.show(engine.many)  # again, seen from the UI thread: one page now
            assert table.row_count == FIRST_ROWS
            assert table.selected_id == newest_first[0]
            assert table.border_title == f"{COUNT} snapshots"  # the count is the whole list
            await pilot.press("down", "down")
            assert table.selected_id == newest_first[2]
            for _ in range(500):
                if table.row_count == COUNT:
                    break
                await pilot.pause(0.02)
            assert _keys(table) == newest_first  # the fill went on below the cursor
            assert table.selected_id == newest_first[2]

    asyncio.run(flow())


def test_an_old_snapshot_selected_is_shown_at_once():
    engine = ManyEngine()
    app = BackupConsole(engine, run_scheduler=False, start="inventory")

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table = _table(app)
            old = engine.many[10].id  # row COUNT - 11: far past the first page
            table.show(engine.many, select=old)
            assert table.selected_id == old
            assert FIRST_ROWS <= table.row_count < COUNT
            assert table.cursor_row == COUNT - 11

    asyncio.run(flow())


def test_a_newer_show_or_filter_replaces_a_fill_under_way():
    engine = ManyEngine()
    app = BackupConsole(engine, run_scheduler=False, start="inventory")

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table = _table(app)
            table.show(engine.many)
            assert table.row_count == FIRST_ROWS
            table.set_filter("kind:files")  # refills: the old fill must stop adding rows
            half = COUNT // 2
            for _ in range(500):
                if table.row_count >= half:
                    break
                await pilot.pause(0.02)
            await pilot.pause(0.1)  # time for a stale batch to show up, were there one
            files = [i.id for i in reversed(engine.many) if i.kind == "files"]
            assert _keys(table) == files
            assert table.border_title == f"{half} of {COUNT} · filter: kind:files"
            table.set_filter("")
            table.show(engine.many[:BATCH_ROWS])  # a shorter list, all in the first batches
            for _ in range(200):
                if table.row_count == BATCH_ROWS:
                    break
                await pilot.pause(0.02)
            await pilot.pause(0.1)
            assert _keys(table) == [i.id for i in reversed(engine.many[:BATCH_ROWS])]

    asyncio.run(flow())
