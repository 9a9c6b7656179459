"""``?``: the keys of the current screen, and Escape going back.

The help lists the bindings of the screen showing and of the app, read from the
same place the footer reads them, so a key that does nothing there is left out
and one that cannot act now is marked. Esc or ``?`` closes it. Escape on the
jobs and schedule screens goes back to the inventory, and on the inventory's
other tabs to the snapshots. Canned data, as the other
console look tests: the help is about keys, not about the engine.
"""

from __future__ import annotations

import asyncio

from test_tui import no_cursor_blink, settle  # noqa: F401 (a fixture: snapshots hold still)
from test_tui_jobs import (
    canned_console,
    utc,  # noqa: F401 - the fixture
)
from textual.pilot import Pilot

from backup_tui.screens.help import HelpScreen, KeyHelp
from backup_tui.screens.jobs import JobsScreen

SIZE = (80, 24)


def keys(app) -> dict[str, KeyHelp]:
    """The help showing, by description."""
    assert isinstance(app.screen, HelpScreen)
    return {k.description: k for k in app.screen.keys}


def test_help_lists_the_keys_of_each_screen_and_closes_with_esc_or_question_mark():
    app = canned_console()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            shown = keys(app)
            # The inventory's own keys first, then the app's, with their keys.
            assert shown["Back up"] == KeyHelp("b", "Back up")
            assert shown["Replicate now"].keys == "R"
            assert shown["Refresh"].keys == "r"
            assert shown["Quit"].keys == "q, ^q"
            assert shown["Jobs"].keys == "j" and shown["Help"].keys == "?"
            assert "Inventory" not in shown  # i does nothing on the inventory
            order = [k.description for k in app.screen.keys]
            assert order.index("Back up") < order.index("Jobs") < order.index("Focus Next")
            assert "b           Back up" in app.screen.text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            # The jobs screen: its own keys; ? closes the help as well.
            await pilot.press("j")
            await settle(app, pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            shown = keys(app)
            assert shown["Cancel job"].keys == "c" and shown["Back"].keys == "esc"
            assert "Back up" not in shown and "Jobs" not in shown
            assert shown["Inventory"].keys == "i"
            # The top job runs, but this console does not run it: c is there, and usable
            # (it then says why it cannot cancel another process's job).
            assert shown["Cancel job"].enabled
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, JobsScreen)
            # On a job that has ended, c cannot act: listed, marked "not now".
            await pilot.press("down", "down")
            await pilot.press("question_mark")
            await pilot.pause()
            assert not keys(app)["Cancel job"].enabled
            assert "Cancel job (not now)" in app.screen.text
            await pilot.press("escape")
            await pilot.pause()
            # Escape on a screen goes back to the inventory.
            await pilot.press("escape")
            await pilot.pause()
            assert app.current_mode == "inventory"
            await pilot.press("s")
            await settle(app, pilot)
            await pilot.press("escape")
            await pilot.pause()
            assert app.current_mode == "inventory"
            # ...and on the inventory from another tab to the snapshots.
            views = app.screen.query_one("#views")
            await pilot.press("o")
            await settle(app, pilot)
            assert views.active == "sources-tab"
            await pilot.press("question_mark")
            await pilot.pause()
            assert keys(app)["Back to the snapshots"].keys == "esc"
            await pilot.press("escape", "escape")
            await pilot.pause()
            assert views.active == "snapshots-tab" and app.current_mode == "inventory"

    asyncio.run(flow())


def test_help_of_a_read_only_console_marks_what_it_cannot_do():
    app = canned_console(admin=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            shown = keys(app)
            assert not shown["Back up"].enabled and not shown["Replicate now"].enabled
            assert shown["Refresh"].enabled and shown["Quit"].enabled
            assert "Back up (not now)" in app.screen.text

    asyncio.run(flow())


def test_help_is_not_opened_over_a_dialog():
    app = canned_console()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("b")  # the picker: several sources
            await pilot.pause()
            picker = app.screen
            await pilot.press("question_mark")
            await pilot.pause()
            assert app.screen is picker
            app.action_help()  # from the palette or a binding elsewhere: still not over it
            await pilot.pause()
            assert app.screen is picker

    asyncio.run(flow())


def _then(*keys: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)

    return run_before


def test_help_look(snap_compare, utc):  # noqa: F811 - the fixture
    """? on the jobs screen at 80x24: its keys, then the app's, then focus and copy."""
    assert snap_compare(canned_console(), terminal_size=SIZE,
                        run_before=_then("j", "question_mark"))


def test_the_help_of_a_screen_is_kept_and_shows_the_keys_as_they_are_now():
    """? opens the same help again (built once per screen, for a quick second open), with
    its lines rewritten when the screen's keys changed meanwhile."""
    from textual.widgets import Static

    app = canned_console()

    async def flow():
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(app, pilot)
            await pilot.press("question_mark")
            await settle(app, pilot)
            first = app.screen
            assert isinstance(first, HelpScreen)
            await pilot.press("escape")
            await settle(app, pilot)
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("question_mark")
            await settle(app, pilot)
            assert app.screen is first
            lines = first.query_one("#help-lines", Static)
            before = lines.visual.plain
            changed = [KeyHelp(k.keys, k.description, not k.enabled, k.ids) for k in first.keys]
            first.show_keys(changed)
            await settle(app, pilot)
            assert lines.visual.plain != before and "(not now)" in lines.visual.plain
            assert first.text == lines.visual.plain
            await pilot.press("escape")
            await pilot.press("j")  # another screen: a help of its own
            await settle(app, pilot)
            await pilot.press("question_mark")
            await settle(app, pilot)
            assert isinstance(app.screen, HelpScreen) and app.screen is not first

    asyncio.run(flow())
