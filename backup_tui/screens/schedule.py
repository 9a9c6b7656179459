"""The schedule screen (``s``): each schedule, its next and last run; run now, pause, resume.

The schedules are read (``Engine.schedules``, through ``EngineCaller``, group
``schedules``) when the screen shows and every ``POLL_SECONDS`` while it does,
so a run that ends elsewhere (the daemon) updates its row. ``n`` asks for a run
now and ``space`` (or ``P``) pauses or resumes the highlighted schedule: the
screen posts a ``ScheduleActionRequested`` and the app acts on it, as it does
for the command palette's. Both need an admin: a read-only console shows them
disabled.
A run now goes through the catalog either way: the scheduler that runs the
schedule (this console's, or the daemon's when the console is a viewer) takes
it within a second; until one does, the row says "pending since HH:MM" and the
detail who will take it. A schedule with nothing to run with this config is
greyed out (``backup_tui.widgets.schedule_table``) and ``n`` is disabled on it.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Header

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import ScheduleActionRequested, SchedulesFailed, SchedulesLoaded
from backup_tui.screens.help import ConsoleFooter
from backup_tui.widgets.schedule_table import (
    ScheduleDetail,
    ScheduleTable,
    describe_schedule,
    runnable,
)
from engine.facade import Engine

POLL_SECONDS = 1.0


class ScheduleScreen(EngineCaller, Screen):
    """The ``[schedule]`` of the config with what the catalog knows of each run."""

    BINDINGS = [
        Binding("n", "run_now", "Run now", id="run-now"),
        Binding("space", "pause", "Pause", id="pause"),
        Binding("space", "resume", "Resume", id="resume"),
        Binding("P", "toggle_pause", "Pause/resume", show=False, id="pause-resume"),
        Binding("escape", "app.switch_mode('inventory')", "Back", show=False, id="back"),
    ]
    AUTO_FOCUS = "#schedules"

    def __init__(self, engine: Engine, read_only: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.read_only = read_only
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ScheduleTable(id="schedules")
        yield ScheduleDetail(id="schedule-detail")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.detail.show(status="Reading the schedules…")

    @property
    def table(self) -> ScheduleTable:
        return self.query_one(ScheduleTable)

    @property
    def detail(self) -> ScheduleDetail:
        return self.query_one(ScheduleDetail)

    # ---------------------------------------------------------------- keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # space is Pause or Resume, whichever the highlighted schedule needs; a read-only
        # console shows the keys disabled: it may look, not change.
        if action not in ("run_now", "pause", "resume", "toggle_pause"):
            return True
        schedule = self._selected
        if action == "run_now" and schedule is not None and not runnable(schedule):
            return None  # shown disabled: there is nothing to run (the detail says why)
        if action in ("pause", "resume") and (
                schedule is None or schedule["paused"] != (action == "resume")):
            return False
        return None if self.read_only else True

    @property
    def _selected(self) -> dict | None:
        """The highlighted schedule (the footer may ask before the table exists)."""
        tables = self.query("#schedules").results(ScheduleTable)
        return next((t.selected for t in tables), None)

    def action_run_now(self) -> None:
        self._request("run")

    def action_pause(self) -> None:
        self._request("pause")

    def action_resume(self) -> None:
        self._request("resume")

    def action_toggle_pause(self) -> None:
        schedule = self._selected
        if schedule is not None:
            self._request("resume" if schedule["paused"] else "pause")

    def _request(self, action: str) -> None:
        """Ask the app for ``action`` of the highlighted schedule."""
        schedule = self._selected
        if schedule is not None:
            self.post_message(ScheduleActionRequested(schedule["kind"], action))

    # -------------------------------------------------------------- polling
    def on_screen_resume(self) -> None:
        self.load()
        if self._timer is None:
            self._timer = self.set_interval(POLL_SECONDS, self.load)
        else:
            self._timer.resume()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def load(self) -> None:
        """Read the schedules again (after a change, or on the timer)."""
        self.call_engine(lambda: SchedulesLoaded(self.engine.schedules()), group="schedules",
                         failed=SchedulesFailed)

    def on_schedules_loaded(self, message: SchedulesLoaded) -> None:
        self.table.show(message.schedules)
        self.detail.show(status="")
        self._show_selected()

    def on_schedules_failed(self, message: SchedulesFailed) -> None:
        self.detail.show(status=f"Cannot read the schedules: {message.error}")

    @on(DataTable.RowHighlighted, "#schedules")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        schedule = self.table.selected
        if schedule is not None:
            host = getattr(self.app, "scheduler_host", None)  # who takes a run now
            self.detail.show(describe_schedule(schedule,
                                               host.where_runs_go() if host else ""))
        self.refresh_bindings()  # space says Pause or Resume for the highlighted one
