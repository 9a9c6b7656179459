"""The jobs screen (``j``): running and recent jobs of every process, live.

Jobs are read from the catalog, not from this console's own events: whoever
runs a job (this console, the daemon, the CLI) writes its progress there about
four times a second, so the daemon's jobs show as live as the console's own.
While the screen shows, a timer asks for the jobs every ``POLL_SECONDS`` and an
engine call (``EngineCaller.call_engine``, group ``jobs``) reads them; a poll is
skipped while the previous one is still reading (a busy catalog never piles up
threads). A read that fails says so in the detail line and polling goes on. The timer stops
while another screen shows.

The table (``JobTable``) has every job; below it, ``JobDetail`` has the
highlighted one in full, with a progress bar while it runs. The cursor follows
a job that starts or fails (``JobTable``), unless the user just moved it.

Cancelling (``c``, binding id ``cancel-job``): the highlighted running job, after
a ``ConfirmDialog`` that says what cancelling does to it (it defaults to "no").
Only this console's own jobs can be cancelled, through their ``CancelToken``
(``canceller`` answers with it); for another process's job (the daemon's, the
command line's) the engine has no way to ask, and ``canceller`` says so instead.
The command palette offers "Cancel job: <kind> <target>" for each running job.

Filtering (``/``, binding id ``filter``): a ``FilterBar`` over the table
(``kind:backup``, ``source:shop``, ``status:failed``, free text); Escape clears a
filter in effect (``clear-filter``), else goes back. Polls keep the filter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Header, Static

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import JobsFailed, JobsLoaded
from backup_tui.screens.commands import _ListedCommands
from backup_tui.screens.help import ConsoleFooter
from backup_tui.widgets.filter_bar import FilterBar
from backup_tui.widgets.job_table import RUNNING, JobDetail, JobTable
from engine.events import CancelToken
from engine.facade import Engine

POLL_SECONDS = 0.5
JOBS_SHOWN = 50
NO_JOBS = "No jobs yet: backups, verifies and replications show here as they run."
NO_MATCH = "No job matches the filter: Esc clears it, / changes it."
CANCEL_EFFECTS = {  # job kind -> what cancelling leaves behind
    "backup": "No snapshot is made: a snapshot is committed only at the end, so the "
              "repository stays consistent.",
    "replicate": "The replica keeps what was copied so far; the next run copies the rest.",
    "verify": "The verify ends unfinished; it changes nothing.",
    "restore": "What was written to the target so far is left there.",
    "cleanup": "What was removed stays removed; the repository stays consistent.",
}
DEFAULT_EFFECT = "The repository stays consistent."

Canceller = Callable[[dict], "CancelToken | str"]  # job -> its token, or why there is none


def cancel_effect(kind: str) -> str:
    """What cancelling a job of ``kind`` does, after "it stops at its next check"."""
    return CANCEL_EFFECTS.get(kind, DEFAULT_EFFECT)


class ConfirmDialog(ModalScreen[bool]):
    """A question with two answers; "no" has the focus, Esc and ``n`` say no, ``y`` yes."""

    BINDINGS = [
        Binding("escape,n", "answer(False)", "No", show=False, id="confirm-no"),
        Binding("y", "answer(True)", "Yes", show=False, id="confirm-yes"),
    ]
    AUTO_FOCUS = "#confirm-no"

    def __init__(self, title: str, text: str, yes: str, no: str) -> None:
        super().__init__()
        self.title_text, self.text, self.yes, self.no = title, text, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(Content(self.title_text), id="confirm-title")
            yield Static(Content(self.text), id="confirm-text")
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.no} (n)", id="confirm-no", variant="primary")
                yield Button(f"{self.yes} (y)", id="confirm-yes", variant="error")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class CancelCommands(_ListedCommands):
    """"Cancel job: <kind> <target>" for each running job, while the jobs screen shows."""

    def _commands(self):
        screen = self.screen
        if not isinstance(screen, JobsScreen):
            return
        for job in screen.running_jobs():
            yield (f"Cancel job: {job['kind']} {job['target']}",
                   partial(screen.cancel_job, job),
                   "Stop it at its next check (asks first)")


class JobsScreen(EngineCaller, Screen):
    """Every job the catalog holds, newest first, refreshed twice a second."""

    BINDINGS = [
        Binding("c", "cancel_job", "Cancel job", id="cancel-job"),
        Binding("slash", "filter", "Filter", show=False, id="filter"),
        Binding("escape", "clear_filter", "Clear the filter", show=False, id="clear-filter"),
        Binding("escape", "app.switch_mode('inventory')", "Back", show=False, id="back"),
    ]
    AUTO_FOCUS = "#jobs"
    COMMANDS = Screen.COMMANDS | {CancelCommands}

    def __init__(self, engine: Engine, clock: Callable[[], float],
                 runner: Callable[[int | None], str] = lambda pid: "",
                 canceller: Canceller = lambda job: "it is not run by this console") -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock  # the time "now" for durations and ETAs (fixed in snapshot tests)
        self.runner = runner  # pid -> which process that is ("the daemon, pid 123")
        self.canceller = canceller  # a running job -> its cancel token, or why there is none
        self.now = clock()  # as of the jobs shown
        self._timer: Timer | None = None
        self.polls = 0  # answers shown (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield FilterBar("#jobs", id="jobs-filter")
        yield JobTable(id="jobs")
        yield JobDetail("Reading the jobs…", id="jobs-detail")
        yield ConsoleFooter()

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    @property
    def detail(self) -> JobDetail:
        return self.query_one(JobDetail)

    # --------------------------------------------------------------- polling
    def on_screen_resume(self) -> None:
        self.poll()
        if self._timer is None:
            self._timer = self.set_interval(POLL_SECONDS, self.poll)
        else:
            self._timer.resume()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def poll(self) -> None:
        """Ask for the jobs, unless a read is still under way."""
        if not any(w.group == "jobs" and not w.is_finished for w in self.workers):
            self.call_engine(lambda: JobsLoaded(self.engine.jobs(JOBS_SHOWN), self.clock()),
                             group="jobs", failed=JobsFailed, exclusive=False)

    def on_jobs_loaded(self, message: JobsLoaded) -> None:
        self.now = message.now
        self.table.show(message.jobs, message.now)
        self.polls += 1
        self._show_selected()

    def on_jobs_failed(self, message: JobsFailed) -> None:
        self.detail.show_message(f"Cannot read the jobs: {message.error}")

    # ---------------------------------------------------------------- detail
    @on(DataTable.RowHighlighted, "#jobs")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        job = self.table.selected
        if job is None:
            self.detail.show_message(NO_MATCH if self.table.jobs else NO_JOBS)
        else:
            self.detail.show(job, self.now, self.runner(job.get("pid")))
        self.refresh_bindings()

    # ---------------------------------------------------------------- cancel
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":  # shown always, usable on a running job
            tables = self.query(JobTable).results(JobTable)
            job = next((t.selected for t in tables), None)
            return True if job is not None and job["state"] == RUNNING else None
        if action == "clear_filter":  # Escape clears a filter in effect, else goes back
            return any(bool(t.filter) for t in self.query(JobTable).results(JobTable))
        return True

    # ---------------------------------------------------------------- filter
    def action_filter(self) -> None:
        self.query_one("#jobs-filter", FilterBar).open()

    def action_clear_filter(self) -> None:
        self.query_one("#jobs-filter", FilterBar).action_clear_filter()

    @on(FilterBar.Applied, "#jobs-filter")
    def _filtered(self, _event: FilterBar.Applied) -> None:
        self._show_selected()

    def action_cancel_job(self) -> None:
        self.cancel_job(self.table.selected)

    def running_jobs(self) -> list[dict]:
        """The running jobs shown (the palette offers to cancel each)."""
        return [j for j in self.table.jobs.values() if j["state"] == RUNNING]

    def cancel_job(self, job: dict | None) -> None:
        """Cancel ``job`` after a confirmation, or say why it cannot be."""
        if job is None or job["state"] != RUNNING:
            self.notify("The job under the cursor is not running.", severity="warning")
            return
        what = f"{job['kind']} {job['target']}"
        found = self.canceller(job)
        if not isinstance(found, CancelToken):
            self.notify(f"Cannot cancel {what}: {found}", title="Cancel job",
                        severity="warning", markup=False, timeout=10)
            return
        text = (f"{what} stops at its next check and ends as interrupted. "
                f"{cancel_effect(job['kind'])}")
        self.app.push_screen(
            ConfirmDialog(f"Cancel {what}?", text, yes="Cancel the job", no="Keep it running"),
            lambda yes: self._cancel_answered(yes, found, what))

    def _cancel_answered(self, yes: bool | None, token: CancelToken, what: str) -> None:
        if yes:
            token.cancel()
            self.notify(f"Cancelling {what}: it stops at its next check.", title="Cancel job",
                        markup=False)
            self.poll()


def runner_label(pid: int | None, daemon_pid: int | None) -> str:
    """Which process runs a job: this console, the daemon, or another (the CLI, say)."""
    if not pid:
        return ""
    if pid == os.getpid():
        return "run by this console"
    if pid == daemon_pid:
        return f"run by the daemon (pid {pid})"
    return f"run by pid {pid}"
