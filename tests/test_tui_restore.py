"""The restore wizard: Pilot flows on a real engine, the look of each step on canned data.

Flows drive ``BackupConsole`` over a real repository (``sandbox``); database flows back
up and restore a real database of the session's PostgreSQL server (``pg_cluster``) and
compare with psql. Snapshot tests run the steps over ``CannedRestoreEngine`` at 80x24,
time zone UTC, no cursor blink.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_tui import (  # noqa: F401 (no_cursor_blink: a fixture, so snapshots hold still)
    SHOP_SQL,
    CannedEngine,
    _database,
    console,
    errors_shown,
    fill,
    no_cursor_blink,
    settle,
    table,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Static

from backup_tui.screens.inventory import InventoryScreen
from backup_tui.screens.restore_wizard import (
    ConfirmStep,
    ErrorDialog,
    PathStep,
    ReviewStep,
    RunStep,
    SnapshotStep,
    TargetStep,
    cli_line,
)
from backup_tui.widgets.snapshot_tree import SnapshotTree
from engine.errors import EngineError, UsageError
from engine.events import Event
from engine.ops.restore_aid import TreeEntry
from engine.sources.base import RestoreCheck, RestoreForm

SIZE = (100, 32)


def status(app) -> str:
    return str(app.screen.query_one("#restore-status", Static).render())


def result_text(app) -> str:
    return str(app.screen.query_one("#restore-result", Static).render())


async def open_wizard(app, pilot: Pilot) -> None:
    """Enter on the snapshot under the cursor: the wizard's first step."""
    await settle(app, pilot)
    table(app).focus()
    await pilot.press("enter")
    await settle(app, pilot)
    assert isinstance(app.screen, SnapshotStep)


async def to_target(app, pilot: Pilot) -> None:
    await open_wizard(app, pilot)
    await pilot.press("enter")  # "This snapshot"
    await settle(app, pilot)
    assert isinstance(app.screen, TargetStep)


async def type_target(app, pilot: Pilot, value: str) -> None:
    field = app.screen.query_one("#restore-target", Input)
    field.value = value
    field.focus()
    await pilot.press("enter")
    await settle(app, pilot)


def restore_jobs(engine) -> list[dict]:
    return [j for j in engine.jobs() if j["kind"] == "restore"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- files ------------------------------------------------------------------------


@pytest.fixture
def files_engine(sandbox):
    fill(sandbox.src)
    (sandbox.src / "sub" / "deeper").mkdir()
    (sandbox.src / "sub" / "deeper" / "note.txt").write_text("deep\n" * 50)
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    return engine


def test_restore_one_directory_of_a_files_snapshot(sandbox, files_engine):
    """Enter on the row, this snapshot, a new directory, "sub" picked in the tree, review
    (the command line), restore: the directory's bytes are the source's; the result says
    how many files and that every blob was authenticated."""
    engine, out = files_engine, sandbox.root / "out"
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            app.screen.query_one("#restore-browse").focus()
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, PathStep)
            tree = app.screen.query_one(SnapshotTree)
            # the lone directories down to the fileset opened by themselves
            assert tree.cursor_node.data.path == str(sandbox.src)
            await pilot.press("down")  # directories first: sub
            assert tree.cursor_node.data.path == str(sandbox.src / "sub")
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, TargetStep)
            assert str(sandbox.src / "sub") in str(app.screen.query_one("#restore-path")
                                                   .render())
            await type_target(app, pilot, str(out))
            assert isinstance(app.screen, ReviewStep), status(app)
            summary = str(app.screen.query_one("#restore-summary").render())
            assert str(out) in summary and "files: 2" in summary
            command = app.screen.command
            assert command.startswith("backup-tui restore files ")
            assert f"--target {out}" in command and f"--path {sandbox.src / 'sub'}" in command
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, RunStep)
            text = result_text(app)
            assert "2 of 2 file(s)" in text and "authenticated" in text
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            assert not errors_shown(app)

    asyncio.run(flow())
    restored = out / str(sandbox.src / "sub").lstrip("/")
    assert tree_bytes(restored) == tree_bytes(sandbox.src / "sub")
    assert not (out / str(sandbox.src).lstrip("/") / "file-0.txt").exists()
    [job] = restore_jobs(engine)
    assert job["state"] == "succeeded"


def test_esc_at_each_step_leaves_nothing(sandbox, files_engine):
    engine, out = files_engine, sandbox.root / "out"
    app = console(engine)

    async def back_out(pilot: Pilot) -> None:
        await pilot.press("escape")
        await settle(app, pilot)
        assert isinstance(app.screen, InventoryScreen)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await open_wizard(app, pilot)
            await back_out(pilot)
            await to_target(app, pilot)
            await back_out(pilot)
            await to_target(app, pilot)
            app.screen.query_one("#restore-browse").focus()
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, PathStep)
            await pilot.press("escape")  # the tree: back to the target step
            await settle(app, pilot)
            assert isinstance(app.screen, TargetStep)
            await back_out(pilot)
            await to_target(app, pilot)
            await type_target(app, pilot, str(out))
            assert isinstance(app.screen, ReviewStep)
            await back_out(pilot)

    asyncio.run(flow())
    assert not out.exists()
    assert restore_jobs(engine) == []


def test_a_non_empty_directory_is_refused_and_says_why(sandbox, files_engine):
    out = sandbox.root / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    app = console(files_engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            await type_target(app, pilot, str(out))
            assert isinstance(app.screen, TargetStep)  # still asking
            assert "is not empty" in status(app) and "overwritten" in status(app)
            await type_target(app, pilot, "relative/dir")
            assert "absolute path" in status(app)

    asyncio.run(flow())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert restore_jobs(files_engine) == []


def test_as_of_a_time_in_the_future_or_before_the_first_backup_is_refused(sandbox,
                                                                          files_engine):
    app = console(files_engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await open_wizard(app, pilot)
            await pilot.press("down", "enter")  # "as of a time": the field
            field = app.screen.query_one("#restore-as-of", Input)
            assert app.screen.focused is field
            for text, said in (("2999-01-01T00:00", "in the future"),
                               ("2001-01-01T00:00", "the first one was taken"),
                               ("yesterday noon", "cannot read time")):
                field.value = text
                await pilot.press("enter")
                await settle(app, pilot)
                assert isinstance(app.screen, SnapshotStep)
                assert said in status(app)
            field.value = time.strftime("%Y-%m-%dT%H:%M:%S")  # now: the snapshot we have
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, TargetStep)

    asyncio.run(flow())


def test_the_engine_raising_mid_wizard_shows_an_error_dialog(sandbox, files_engine,
                                                            monkeypatch):
    engine = files_engine

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "plan_restore", broken)
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            await type_target(app, pilot, str(sandbox.root / "out"))
            assert isinstance(app.screen, ErrorDialog)
            text = str(app.screen.query_one("#restore-error-text").render())
            assert "RuntimeError: disk on fire" in text
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, TargetStep)  # the step is still there
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            monkeypatch.undo()  # the engine works again: so does the wizard
            await to_target(app, pilot)
            await type_target(app, pilot, str(sandbox.root / "out"))
            assert isinstance(app.screen, ReviewStep)

    asyncio.run(flow())


def test_cancel_during_the_restore_stops_and_says_what_was_left(sandbox, monkeypatch):
    # files written in this process (no forked writers), so the slowed events below pace it
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    for i in range(300):
        (sandbox.src / f"f{i:03d}.txt").write_text(f"{i}\n" * 100)
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    real = engine.restore

    def slow(plan, on_event, cancel):
        def each(event: Event) -> None:
            time.sleep(0.05)
            on_event(event)
        return real(plan, each, cancel)

    monkeypatch.setattr(engine, "restore", slow)
    out = sandbox.root / "out"
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            await type_target(app, pilot, str(out))
            await pilot.press("enter")
            for _ in range(100):  # until the first progress shows
                await pilot.pause(0.05)
                if isinstance(app.screen, RunStep) and app.screen.last is not None:
                    break
            assert isinstance(app.screen, RunStep) and app.screen.last is not None
            await pilot.press("escape")  # Esc does not stop a running restore: it says how
            assert "x cancels" in status(app)
            await pilot.press("x")
            await settle(app, pilot, rounds=50)
            text = result_text(app)
            assert "Cancelled" in text and "Left behind" in text and "of 300 file(s)" in text
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())
    written = len(list(out.rglob("f*.txt")))
    assert 0 < written < 300
    [job] = restore_jobs(engine)
    assert job["state"] != "succeeded"


def test_the_palette_offers_restore_files_for_the_newest_snapshot(sandbox, files_engine):
    engine = files_engine
    newest = engine.backup("files", "src").id  # a second snapshot: the palette takes it
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table(app).move_cursor(row=1)  # the older one under the cursor: not taken
            await pilot.press("ctrl+p")
            await pilot.press(*"Restore files")
            hits = app.screen.query_one(OptionList)
            for _ in range(50):  # the palette searches in the background
                await pilot.pause(0.1)
                if hits.option_count and "Restore files" in str(hits.get_option_at_index(0)
                                                                    .prompt):
                    break
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, SnapshotStep)
            assert app.screen.snap["id"] == newest

    asyncio.run(flow())


def test_a_read_only_console_does_not_open_the_wizard():
    class Viewer(CannedRestoreEngine):
        is_admin = False

    app = console(Viewer())

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            table(app).focus()
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)
            assert any("read-only" in n.message for n in app._notifications)
            assert app.screen.restore_nouns() == []

    asyncio.run(flow())


def test_a_resized_terminal_keeps_every_step_whole(sandbox, files_engine):
    """80x24, then 60x20 mid-wizard and again while restoring: each dialog stays inside
    the screen and the flow goes on."""
    out = sandbox.root / "out"
    app = console(files_engine)

    def inside() -> None:
        dialog = app.screen.query_one(".restore-dialog")
        screen = app.screen.region
        assert screen.contains_region(dialog.region), (dialog.region, screen)

    async def flow():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_target(app, pilot)
            inside()
            await pilot.resize_terminal(60, 20)
            await settle(app, pilot)
            inside()
            await type_target(app, pilot, str(out))
            assert isinstance(app.screen, ReviewStep)
            inside()
            await pilot.press("enter")
            await pilot.resize_terminal(80, 24)
            await settle(app, pilot)
            assert isinstance(app.screen, RunStep)
            inside()
            assert "authenticated" in result_text(app)

    asyncio.run(flow())
    assert tree_bytes(out / str(sandbox.src).lstrip("/")) == tree_bytes(sandbox.src)


def test_the_estimate_comes_from_past_restores_of_the_source(sandbox, files_engine):
    engine = files_engine
    snap = engine.snapshot("latest")
    first = engine.plan_restore(snap, target=str(sandbox.root / "one"))
    assert engine.restore_estimate(first) == (None, "no past restore or drill to go by")
    engine.restore(first)
    second = engine.plan_restore(snap, target=str(sandbox.root / "two"))
    seconds, basis = engine.restore_estimate(second)
    assert seconds is not None and basis == "the speed of the last 1 restore(s) of files:src"


# --- databases --------------------------------------------------------------------


@pytest.fixture
def shop(pg_cluster, sandbox):
    name = f"shop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SHOP_SQL, name)
    sandbox.filesets = {}
    sandbox.extra = _database("shop", pg_cluster.dsn(name))
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    engine.backup("db", "shop")
    return engine, name


def count(pg_cluster, db: str, table_name: str) -> int:
    return int(pg_cluster.psql(f"SELECT count(*) FROM {table_name}", db).strip())


def test_restore_a_database_into_a_new_name_and_compare(pg_cluster, shop):
    engine, name = shop
    new = f"{name}_copy"
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            field = app.screen.query_one("#restore-target", Input)
            assert field.value.startswith(f"{name}_restored_")  # prefilled
            await type_target(app, pilot, "1-not an identifier")
            assert "not a valid database name" in status(app)
            await type_target(app, pilot, new)
            assert isinstance(app.screen, ReviewStep), status(app)
            assert f"--target-db {new}" in app.screen.command
            await pilot.press("enter")  # no confirmation: nothing is replaced
            await settle(app, pilot, rounds=100)
            assert isinstance(app.screen, RunStep)
            text = result_text(app)
            assert f"2 table(s), 1200 row(s) in database {new}" in text, text
            assert "all 2 table(s) the snapshot's archive lists are there" in text
            rows = app.screen.query_one("#restore-rows", DataTable)
            assert rows.row_count == 2

    asyncio.run(flow())
    assert count(pg_cluster, new, "customers") == count(pg_cluster, name, "customers") == 200
    assert count(pg_cluster, new, "orders") == count(pg_cluster, name, "orders") == 1000


def test_replace_needs_the_name_typed_exactly(pg_cluster, shop):
    engine, name = shop
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            app.screen.query_one("#restore-target-choice").focus()
            await pilot.press("down", "enter")  # Replace <name>
            await settle(app, pilot)
            assert isinstance(app.screen, ReviewStep), status(app)
            assert "--replace" in app.screen.command and "--yes" in app.screen.command
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, ConfirmStep)
            field = app.screen.query_one("#restore-confirm", Input)
            for near in (name[:-1], name.upper(), name + " "):
                field.value = near
                await pilot.press("enter")
                await settle(app, pilot)
                assert isinstance(app.screen, ConfirmStep)
                assert "type the name exactly" in status(app)
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, InventoryScreen)

    asyncio.run(flow())
    olds = pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE "
                           f"'{name}__%'", "postgres").strip()
    assert olds == "0"
    assert restore_jobs(engine) == []


def test_replace_typed_exactly_swaps_and_keeps_the_old_database(pg_cluster, shop):
    engine, name = shop
    pg_cluster.psql("DELETE FROM orders WHERE id > 10", name)  # a mistake to undo
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await to_target(app, pilot)
            app.screen.query_one("#restore-target-choice").focus()
            await pilot.press("down", "enter")
            await settle(app, pilot)
            await pilot.press("enter")
            await settle(app, pilot)
            app.screen.query_one("#restore-confirm", Input).value = name
            await pilot.press("enter")
            await settle(app, pilot, rounds=100)
            assert isinstance(app.screen, RunStep)
            assert f"1200 row(s) in database {name}" in result_text(app)

    asyncio.run(flow())
    assert count(pg_cluster, name, "orders") == 1000
    [old] = pg_cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE "
                            f"'{name}__old%'", "postgres").split()
    assert count(pg_cluster, old, "orders") == 10


# --- helpers ----------------------------------------------------------------------


def test_cli_line_quotes_and_maps_the_options():
    snap = {"kind": "files", "id": "ab" * 32}
    assert cli_line(snap, {"target": "/tmp/my dir", "paths": ["/srv/a"]}) == (
        "backup-tui restore files abababababab --target '/tmp/my dir' --path /srv/a")
    assert cli_line({"kind": "db", "id": "cd" * 32}, {"target_db": "shop", "replace": True}) \
        == "backup-tui restore db cdcdcdcdcdcd --target-db shop --replace --yes"


# --- the look of each step at 80x24 -----------------------------------------------


@dataclass
class _Plan:
    snapshot: dict
    target_label: str
    _summary: dict

    def summary(self) -> dict:
        return dict(self._summary)


@dataclass
class _Result:
    snapshot: str
    target_db: str
    old_db: str | None
    bytes: int
    warnings: list
    notes: list


class CannedRestoreEngine(CannedEngine):
    """The canned console, with restore answers: the newest row is database shop."""

    def restore_form(self, snap: dict) -> RestoreForm:
        if snap["kind"] == "db":
            return RestoreForm("database", option="target_db",
                               default="shop_restored_20260503", replaces="shop",
                               replace_option="replace", noun="database",
                               on_stop="the temporary database was dropped")
        return RestoreForm("directory", option="target", paths_option="paths", noun="files",
                           on_stop="the files written so far stay")

    def check_restore_target(self, snap: dict, value: str) -> None:
        if not value.isidentifier():
            raise UsageError(f"{value!r} is not a valid database name")

    def plan_restore(self, snap: dict, **options) -> _Plan:
        target = options.get("target_db", "")
        return _Plan(snap, f"db:shop -> {target}", {
            "snapshot": snap["id"], "taken": snap["time"], "source": "shop",
            "server": "db-1:5432", "target_db": target, "replace": bool(options.get("replace")),
            "old_db": f"{target}__old_20260503" if options.get("replace") else None,
            "steps": [f"create database {target}__restoring and restore into it",
                      f"rename it to {target}"]})

    def restore_estimate(self, plan) -> tuple[float, str]:
        return 37.5, "the median time of the last 3 restore drill(s) of db:shop"

    def snapshot_dir(self, snap: dict, path: str = "/") -> list[TreeEntry]:
        return [TreeEntry("etc", "/srv/app/etc", "dir", 0),
                TreeEntry("data.db", "/srv/app/data.db", "file", 5_242_880)]

    def restore(self, plan, on_event=None, cancel=None) -> _Result:
        on_event(Event("j1", "restore", bytes_done=300_000_000, bytes_total=311_900_000,
                       final=True))
        return _Result(plan.snapshot["id"], "shop_restored_20260503", None, 311_900_000,
                       [], [])

    def check_restore(self, plan, result) -> RestoreCheck:
        return RestoreCheck(
            lines=["2 table(s), 3560 row(s) in database shop_restored_20260503",
                   "all 2 table(s) the snapshot's archive lists are there",
                   "row counts of 2 table(s) compared with the restore drill of this "
                   "snapshot"],
            rows=[("public.customers", 500, 500), ("public.orders", 3060, 3060)])


LOOK_SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _steps(*keys: str):
    async def run(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        pilot.app.screen.query_one("#snapshots").focus()
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)
    return run


@LOOK_SIZES
def test_look_snapshot_step(snap_compare, utc, size):
    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=_steps("enter"))


@LOOK_SIZES
def test_look_target_step(snap_compare, utc, size):
    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=_steps("enter", "enter"))


@LOOK_SIZES
def test_look_files_target_step(snap_compare, utc, size):
    """A files snapshot: the directory field, what is restored, the tree a Tab away."""
    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=_steps("down", "enter", "enter"))


@LOOK_SIZES
def test_look_review_step(snap_compare, utc, size):
    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=_steps("enter", "enter", "enter"))


@LOOK_SIZES
def test_look_confirm_step(snap_compare, utc, size):
    async def replace(pilot: Pilot) -> None:
        await _steps("enter", "enter")(pilot)
        pilot.app.screen.query_one("#restore-target-choice").focus()
        await pilot.press("down", "enter")
        await settle(pilot.app, pilot)
        await pilot.press("enter")
        await settle(pilot.app, pilot)
        pilot.app.screen.query_one("#restore-confirm", Input).value = "shp"
        await pilot.press("enter")

    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=replace)


@LOOK_SIZES
def test_look_result_step(snap_compare, utc, size):
    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size,
                        run_before=_steps("enter", "enter", "enter", "enter"))


@LOOK_SIZES
def test_look_tree_step(snap_compare, utc, size):
    async def tree(pilot: Pilot) -> None:
        await _steps("down")(pilot)  # a files snapshot: app-data
        await pilot.press("enter")
        await settle(pilot.app, pilot)
        await pilot.press("enter")
        await settle(pilot.app, pilot)
        pilot.app.screen.query_one("#restore-browse").focus()
        await pilot.press("enter")
        await settle(pilot.app, pilot)

    assert snap_compare(console(CannedRestoreEngine()), terminal_size=size, run_before=tree)


@LOOK_SIZES
def test_look_error_dialog(snap_compare, utc, size):
    class Broken(CannedRestoreEngine):
        def plan_restore(self, snap, **options):
            raise EngineError("database 'shop': cannot connect to db-1:5432: server "
                              "unreachable (is it running, and are host and port right?)")

    assert snap_compare(console(Broken()), terminal_size=size,
                        run_before=_steps("enter", "enter", "enter"))
