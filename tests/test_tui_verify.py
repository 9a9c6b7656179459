"""Verify from the console: ``v`` (and ``V``, reading all data) on the inventory, and the palette.

A real files engine (Sandbox): ``v`` verifies the snapshot under the cursor as a
job in the panel and ends with ok; after a pack is corrupted in place (same size),
``V`` reads the data and names the pack in the panel and a notification. The
palette offers "Verify… snapshot <id>" and "Verify… every snapshot", each also
reading all data, next to "Replicate now".
A read-only console verifies too (verify changes nothing in the repository).
"""

from __future__ import annotations

import asyncio

from test_tui import console, fill, settle
from test_tui_jobs import canned_console

from backup_tui.screens.commands import JobCommands, verify_commands
from backup_tui.widgets.job_panel import JobPanel
from engine.facade import Engine

SIZE = (110, 30)


def panel(app) -> JobPanel:
    return app.screen.query_one(JobPanel)


def notes(app, severity: str) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications if n.severity == severity]


def corrupt_a_pack(repo) -> str:
    """Flip bytes in the middle of the largest pack, keeping its size; its name."""
    pack = max((p for p in (repo / "data").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    pack.write_bytes(bytes(data))
    return pack.name


def test_v_verifies_the_snapshot_and_V_finds_a_corrupted_pack(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    result = engine.backup("files", "src")
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("v")
            await settle(app, pilot)
            text = panel(app).text
            assert f"Verified snapshot {result.id[:8]}: ok" in text, text
            assert "structure and pack sizes" in text
            assert panel(app).has_class("-done")
            assert ("Verified", f"Snapshot {result.id[:8]}: ok.") in notes(app, "information")
            assert engine.catalog.verified().get(result.id)  # the verified time was kept
            # A pack corrupted in place (same size): V reads it and names it.
            name = corrupt_a_pack(sandbox.repo)
            await pilot.press("V")
            await settle(app, pilot)
            text = panel(app).text
            assert panel(app).has_class("-failed")
            assert f"Verified snapshot {result.id[:8]}: " in text and "problem(s)" in text
            assert name in text and "read every blob" in text, text
            [(title, message)] = notes(app, "error")
            assert "problem(s)" in title and name in message

    asyncio.run(flow())


def test_the_palette_verifies_the_selected_snapshot_or_every_one(sandbox):
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    first = engine.backup("files", "src")
    (sandbox.src / "more.txt").write_text("more\n")
    second = engine.backup("files", "src")
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            entries = {text: command for text, command, _ in verify_commands(app.screen)}
            selected = app.screen.selected_snapshot()
            assert selected in (first.id, second.id)
            assert list(entries) == [
                f"Verify… snapshot {selected[:8]}",
                f"Verify… snapshot {selected[:8]}, reading all data",
                "Verify… every snapshot",
                "Verify… every snapshot, reading all data",
            ]
            entries["Verify… every snapshot, reading all data"]()
            await settle(app, pilot)
            text = panel(app).text
            assert "Verified every snapshot: ok" in text
            assert "2 snapshot(s)" in text and "read every blob" in text
            verified = engine.catalog.verified()
            assert first.id in verified and second.id in verified

    asyncio.run(flow())


def test_a_read_only_console_verifies_a_real_snapshot(sandbox, monkeypatch):
    """Not an admin: b is disabled, v verifies (it changes nothing in the repository)."""
    fill(sandbox.src)
    engine = sandbox.engine(init=True)
    result = engine.backup("files", "src")
    monkeypatch.setattr(Engine, "is_admin", property(lambda self: False))
    app = console(engine)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert app.read_only and app.screen.check_action("backup", ()) is None
            await pilot.press("v")
            await settle(app, pilot)
            assert f"Verified snapshot {result.id[:8]}: ok" in panel(app).text
            assert not notes(app, "error")

    asyncio.run(flow())


def test_palette_has_verify_and_replicate_and_a_read_only_console_verifies():
    app = canned_console(admin=False)
    admin = canned_console()

    async def flow():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            screen = app.screen
            assert screen.check_action("verify", ()) is True  # not greyed: it changes nothing
            assert screen.check_action("backup", ()) is None
            texts = [t for t, _, _ in JobCommands._commands(_provider(screen))]
            assert any(t.startswith("Verify… snapshot ") for t in texts)
            assert "Replicate now" not in texts  # mutating: an admin's
        async with admin.run_test(size=(80, 24)) as pilot:
            await settle(admin, pilot)
            texts = [t for t, _, _ in JobCommands._commands(_provider(admin.screen))]
            assert "Replicate now" in texts and "Verify… every snapshot" in texts

    asyncio.run(flow())


class _provider:
    """What JobCommands reads of its provider: the screen."""

    def __init__(self, screen) -> None:
        self.screen = screen
