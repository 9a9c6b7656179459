"""The console: Pilot flows on a real engine, the look on canned data, and the demo sandbox.

Flows drive ``BackupConsole`` over a real, initialised repository (the
``sandbox`` fixture). Snapshot tests use ``CannedEngine``, a stand-in with the
Engine methods the console calls and fixed data, with a fixed terminal size,
time zone UTC and no cursor blink, so the pictures never drift.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, ProgressBar
from textual.worker import WorkerCancelled

from backup_tui.app import BackupConsole
from backup_tui.demo import build_demo
from backup_tui.screens.fileset_picker import FilesetPicker
from backup_tui.widgets.job_panel import JobPanel
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.config import load_config, parse_config
from engine.errors import EngineError
from engine.facade import Engine, SnapshotInfo

SIZE = (110, 30)


# --- helpers ----------------------------------------------------------------------


async def settle(app: BackupConsole, pilot: Pilot, rounds: int = 10) -> None:
    """Wait until no worker runs and the messages they posted are handled."""
    for _ in range(rounds):
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:  # replaced by a newer request of its group
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


def fill(src, n: int = 5) -> None:
    for i in range(n):
        (src / f"file-{i}.txt").write_text(f"line {i}\n" * 200)
    (src / "sub").mkdir()
    (src / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 4096)


# --- flows on a real engine -------------------------------------------------------


def test_backup_now_adds_a_row_and_shows_it(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = BackupConsole(engine)

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
    app = BackupConsole(engine)

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

    monkeypatch.setattr(engine, "backup_files", broken)
    app = BackupConsole(engine)

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
    app = BackupConsole(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, FilesetPicker)
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, FilesetPicker)
            assert engine.snapshots() == []
            await pilot.press("b", "down", "enter")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["other"]
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_command_palette_backs_up_a_fileset(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = BackupConsole(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"back up now")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await settle(app, pilot)
            assert [s.source for s in engine.snapshots()] == ["src"]
            assert table(app).row_count == 1

    asyncio.run(flow())


def test_refresh_sees_a_backup_made_elsewhere(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    app = BackupConsole(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            result = sandbox.engine().backup_files("src")  # another process, in effect
            await pilot.press("r")
            await settle(app, pilot)
            assert table(app).selected_id == result.id

    asyncio.run(flow())


# --- the look, on canned data -----------------------------------------------------

T0 = datetime(2024, 6, 3, 2, 0, 11, tzinfo=UTC)


def _id(n: int) -> str:
    return hashlib.sha256(f"canned-{n}".encode()).hexdigest()


def _canned() -> list[tuple[SnapshotInfo, dict]]:
    rows = [
        # (hours after T0, kind, source, size, added, complete)
        (0, "files", "app-data", 21_460_000, 21_100_000, True),
        (1, "files", "app-config", 4_200, 4_200, True),
        (24, "files", "app-data", 22_010_000, 610_000, True),
        (25, "db", "shop", 310_400_000, 12_800_000, True),
        (48, "files", "app-data", 22_900_000, 905_000, False),
        (49, "db", "shop", 311_900_000, 1_480_000, True),
    ]
    out = []
    parents: dict[str, str] = {}
    for n, (hours, kind, source, size, added, complete) in enumerate(rows):
        sid = _id(n)
        info = SnapshotInfo(sid, T0 + timedelta(hours=hours), kind, source, "web-1", size,
                            added, complete, parents.get(source), 310 + 3 * n)
        errors = [] if complete else [
            {"path": "/srv/app/data/uploads/2024/06/IMG_0612.jpg", "error": "Permission denied"}
        ]
        record = {
            "id": sid, "time": info.time.isoformat(), "kind": kind, "source": source,
            "host": "web-1", "paths": [f"/srv/app/{source}"], "parent": info.parent,
            "incomplete": not complete, "errors": errors, "errors_total": len(errors),
            "stats": {"files": info.files, "dirs": 41, "size": size, "unchanged_files": 300,
                      "bytes_read": added, "added": added, "new_blobs": 12 + n,
                      "duration": 0.25 * (n + 1)},
            "program": "backup-tui 0.1.0",
        }
        parents[source] = sid
        out.append((info, record))
    return out


class CannedEngine:
    """The Engine methods the console calls, answering fixed data; backups fail."""

    config = parse_config({
        "repository": {"path": "/srv/backup/repo"},
        "fileset": [
            {"name": "app-data", "paths": ["/srv/app/data"]},
            {"name": "app-config", "paths": ["/srv/app/etc"]},
        ],
    })

    def __init__(self) -> None:
        self._data = _canned()

    def sources(self) -> list[tuple[str, str]]:
        return [("files", fs.name) for fs in self.config.filesets]

    def snapshots(self, source=None, kind=None) -> list[SnapshotInfo]:
        return [i for i, _ in self._data
                if (source is None or i.source == source) and (kind is None or i.kind == kind)]

    def snapshot(self, ref: str, source=None) -> dict:
        return next(dict(r) for i, r in self._data if i.id.startswith(ref))

    def backup_files(self, name, on_event=None, cancel=None):
        raise EngineError("the canned engine makes no backups")


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
    """Six canned snapshots, newest first and selected, its record in the detail pane."""
    assert snap_compare(BackupConsole(CannedEngine()), terminal_size=SIZE, run_before=_loaded)


def test_inventory_look_second_row(snap_compare, utc):
    """The cursor on the incomplete snapshot: its errors show in the detail pane."""

    async def select(pilot: Pilot) -> None:
        await _loaded(pilot)
        await pilot.press("down")
        await _loaded(pilot)

    assert snap_compare(BackupConsole(CannedEngine()), terminal_size=SIZE, run_before=select)


def test_fileset_picker_look(snap_compare, utc):
    """b with two filesets opens the picker over the inventory."""
    assert snap_compare(BackupConsole(CannedEngine()), terminal_size=SIZE, press=["b"],
                        run_before=_loaded)


# --- the demo sandbox -------------------------------------------------------------


def test_build_demo_makes_a_sandbox_the_console_opens(tmp_path):
    config_path = build_demo(tmp_path / "demo", kdf={"name": "scrypt", "n": 2**10, "r": 8,
                                                     "p": 1})
    config = load_config(config_path)
    assert [fs.name for fs in config.filesets] == ["app-data", "app-config"]
    assert (tmp_path / "demo" / "repo.pass").stat().st_mode & 0o777 == 0o600
    engine = Engine(config)
    [snap] = engine.snapshots()
    assert snap.source == "app-data" and snap.complete and snap.files > 200
    app = BackupConsole(engine)

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

    cheap = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}
    build_demo(tmp_path / "a", kdf=cheap)
    build_demo(tmp_path / "b", kdf=cheap)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_build_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(EngineError, match="empty directory"):
        build_demo(tmp_path)
