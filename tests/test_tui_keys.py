"""Keys: stable binding ids, ``[console] keys`` remapping them, the footer at 80 and 60 columns.

Every binding of the console has an id; ``[console] keys`` in the config remaps by
id (Textual's keymap): the new key acts, the old one no longer does, and keys that
share a key on purpose (``p`` to the replicas and back) move together. An id that
no binding has refuses to start with the list of ids; a key that two bindings of a
screen would then share is a warning at start. The help (``?``) shows each key's id.
The footer puts the app's keys first (the screens, ``?`` Help, ``q`` Quit), so they
stay visible at 80x24 and 60x20 on every screen. Canned data (test_tui_jobs.py): this
is about keys, not the engine.
"""

from __future__ import annotations

import asyncio

import pytest
from test_tui import no_cursor_blink, settle  # noqa: F401 (a fixture: snapshots hold still)
from test_tui_jobs import (
    NOW,
    CannedJobsEngine,
    canned_console,
    utc,  # noqa: F401 - the fixture
)
from textual.pilot import Pilot
from textual.widgets._footer import FooterKey

from backup_tui.app import BackupConsole
from backup_tui.screens.help import (
    ConsoleFooter,
    HelpScreen,
    binding_ids,
    bindings_without_id,
    console_keymap,
)
from backup_tui.screens.jobs import JobsScreen
from engine.config import parse_config
from engine.errors import ConfigError

MODES = ("dashboard", "inventory", "jobs", "schedule")


def remapped(keys: dict[str, str], admin: bool = True) -> BackupConsole:
    """The canned console with ``[console] keys``."""
    engine = CannedJobsEngine(admin)
    engine.config = parse_config({**_config_of(engine), "console": {"keys": keys}})
    return BackupConsole(engine, start="inventory", run_scheduler=False, clock=lambda: NOW)


def _config_of(engine) -> dict:
    cfg = engine.config
    return {"repository": {"path": str(cfg.repo_path)}, "state": {"dir": str(cfg.state_dir)}}


def test_every_binding_of_the_console_has_an_id():
    assert bindings_without_id() == []
    ids = binding_ids()
    for expected in ("backup", "replicate", "verify", "show-replicas", "refresh", "inventory",
                     "jobs", "schedule", "help", "quit", "run-now", "cancel-job", "back"):
        assert expected in ids, expected


def test_a_remapped_key_acts_and_the_old_one_does_not():
    app = remapped({"jobs": "J", "show-replicas": "ctrl+r", "help": "f1"})

    async def flow():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("i")
            await settle(app, pilot)
            assert app.current_mode == "inventory"
            await pilot.press("j")
            await settle(app, pilot)
            assert app.current_mode == "inventory"  # j no longer goes to the jobs
            await pilot.press("J")
            await settle(app, pilot)
            assert isinstance(app.screen, JobsScreen)
            await pilot.press("i")
            await settle(app, pilot)
            # p went with show-replicas to ctrl+r, and so did its way back (show-snapshots)
            views = app.screen.query_one("#views")
            await pilot.press("p")
            await settle(app, pilot)
            assert views.active == "snapshots-tab"
            await pilot.press("ctrl+r")
            await settle(app, pilot)
            assert views.active == "replicas-tab"
            await pilot.press("ctrl+r")
            await settle(app, pilot)
            assert views.active == "snapshots-tab"
            # The help opens with f1 (not ?), shows the new keys with their ids, and f1
            # closes it again.
            await pilot.press("question_mark")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            shown = {k.description: k for k in app.screen.keys}
            assert (shown["Jobs"].keys, shown["Jobs"].ids) == ("J", "jobs")
            assert (shown["Replicas"].keys, shown["Replicas"].ids) == ("^r", "show-replicas")
            assert "Jobs  jobs" in app.screen.text
            await pilot.press("f1")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            assert not [n for n in app._notifications if n.severity == "warning"]

    asyncio.run(flow())


def test_an_unknown_binding_id_refuses_to_start_with_the_ids():
    with pytest.raises(ConfigError) as refused:
        remapped({"backpu": "B"})
    message = str(refused.value)
    assert "console.keys: no binding of the console has the id 'backpu'" in message
    assert "backup" in message and "show-replicas" in message and "quit" in message


def test_a_key_two_bindings_would_share_is_a_warning_at_start():
    keymap, clashes = console_keymap({"backup": "q", "pause": "n"})
    assert keymap["resume"] == "n"  # space was pause and resume: they move together
    assert "InventoryScreen: q would be backup and quit" in clashes
    assert "ScheduleScreen: n would be pause and resume and run-now" in clashes
    assert console_keymap({"show-replicas": "ctrl+r", "quit": "ctrl+q"})[1] == []
    app = remapped({"backup": "q"})

    async def flow():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            warnings = [n for n in app._notifications if n.severity == "warning"]
            assert any("InventoryScreen: q would be backup and quit" in n.message
                       for n in warnings)
            assert app.is_running  # a warning, not a refusal

    asyncio.run(flow())


def footer_keys(app) -> dict[str, tuple[int, int]]:
    """Footer key -> (x, right) of what the footer shows of it, the palette key aside."""
    footer = app.screen.query_one(ConsoleFooter)
    palette = [k for k in footer.query(FooterKey) if k.has_class("-command-palette")]
    left_of = min((k.region.x for k in palette), default=app.size.width)
    return {k.key: (k.region.x, min(k.region.right, left_of))
            for k in footer.query(FooterKey) if not k.has_class("-command-palette")}


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
def test_help_and_quit_stay_in_the_footer_of_every_screen(size):
    app = canned_console()

    async def flow():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            for mode in MODES:
                await app.switch_mode(mode)
                await settle(app, pilot)
                shown = footer_keys(app)
                for key in ("question_mark", "q"):
                    x, right = shown[key]
                    assert right - x >= 6, (mode, key, shown)  # "? Help", "q Quit" whole
                keys = list(shown)
                assert keys.index("q") < min(keys.index(k) for k in keys
                                             if k not in ("d", "i", "j", "s", "question_mark",
                                                          "q")), (mode, keys)

    asyncio.run(flow())


# --- looks ----------------------------------------------------------------------------


def _then(*keys: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (160, 48)])
def test_help_look(snap_compare, utc, size):  # noqa: F811 - the fixture
    """? on the inventory: its keys, then the app's, each with its id; nothing cut at 60x20
    (the list scrolls)."""
    assert snap_compare(canned_console(), terminal_size=size, run_before=_then("i", "?"))


def test_help_look_remapped(snap_compare, utc):  # noqa: F811 - the fixture
    """The help of a console with [console] keys: the new keys, the same ids."""
    assert snap_compare(remapped({"backup": "B", "show-replicas": "ctrl+r", "quit": "ctrl+q"}),
                        terminal_size=(80, 24), run_before=_then("i", "?"))


def _picker_console():
    from test_tui import CannedEngine, console

    return console(CannedEngine())


@pytest.mark.parametrize("size", [(60, 20), (80, 24)])
def test_source_picker_look(snap_compare, utc, size):  # noqa: F811 - the fixture
    """b with four sources: the picker fits the screen, long descriptions wrapped."""
    assert snap_compare(_picker_console(), terminal_size=size, press=["b"],
                        run_before=_then())


@pytest.mark.parametrize("size", [(60, 20), (80, 24)])
def test_dialogs_fit_the_screen(size):
    """The help and the source picker stay whole on the screen: nothing cut off."""
    from backup_tui.screens.source_picker import SourcePicker

    async def flow(app, key, dialog, box, last):
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            await pilot.press(key)
            await settle(app, pilot)
            assert isinstance(app.screen, dialog)
            region = app.screen.query_one(box).region
            assert region.x >= 0 and region.y >= 0
            assert region.right <= size[0] and region.bottom <= size[1], region
            inner = app.screen.query_one(last).region
            assert inner.height and inner.bottom <= region.bottom, (inner, region)

    asyncio.run(flow(canned_console(), "question_mark", HelpScreen, "#help", "#help-hint"))
    asyncio.run(flow(_picker_console(), "b", SourcePicker, "#picker", "#picker-options"))


@pytest.mark.parametrize("size", [(60, 20), (80, 24)])
def test_the_quit_question_fits_the_screen(size):
    """The confirmation (quit while a job runs, cancel a job) at 60x20: its buttons stay on
    the screen under the longest question the console asks."""
    from backup_tui.screens.jobs import ConfirmDialog, cancel_effect

    question = ("This console runs the backup of fileset app-data. Quitting cancels it: it "
                "stops at its next check and ends as interrupted. " + cancel_effect("backup")
                + "\n\nThis console's scheduler runs verify: it gets 5 s to end, then it is "
                "interrupted; the repository stays consistent.")
    app = canned_console()

    async def flow():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            app.push_screen(ConfirmDialog("Quit while a job runs?", question,
                                          yes="Quit and cancel", no="Keep running"))
            await settle(app, pilot)
            box = app.screen.query_one("#confirm").region
            assert box.right <= size[0] and box.bottom <= size[1], box
            for button in ("#confirm-no", "#confirm-yes"):
                region = app.screen.query_one(button).region
                assert region.height and region.bottom <= box.bottom, (button, region, box)

    asyncio.run(flow())


def test_readme_lists_every_binding_id():
    """README's "Console keys" table names every id [console] keys can remap."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### Console keys"):]
    assert [i for i in binding_ids() if f"`{i}`" not in table] == []
