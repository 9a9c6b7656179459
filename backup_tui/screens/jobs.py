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
highlighted one in full, with a progress bar while it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import JobsFailed, JobsLoaded
from backup_tui.widgets.job_table import JobDetail, JobTable
from engine.facade import Engine

POLL_SECONDS = 0.5
JOBS_SHOWN = 50
NO_JOBS = "No jobs yet: backups, verifies and replications show here as they run."


class JobsScreen(EngineCaller, Screen):
    """Every job the catalog holds, newest first, refreshed twice a second."""

    BINDINGS = [Binding("escape", "app.switch_mode('inventory')", "Back", show=False)]
    AUTO_FOCUS = "#jobs"

    def __init__(self, engine: Engine, clock: Callable[[], float],
                 runner: Callable[[int | None], str] = lambda pid: "") -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock  # the time "now" for durations and ETAs (fixed in snapshot tests)
        self.runner = runner  # pid -> which process that is ("the daemon, pid 123")
        self.now = clock()  # as of the jobs shown
        self._timer: Timer | None = None
        self.polls = 0  # answers shown (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield JobTable(id="jobs")
        yield JobDetail(id="jobs-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(JobDetail).show_message("Reading the jobs…")

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
            self.detail.show_message(NO_JOBS)
        else:
            self.detail.show(job, self.now, self.runner(job.get("pid")))


def runner_label(pid: int | None, daemon_pid: int | None) -> str:
    """Which process runs a job: this console, the daemon, or another (the CLI, say)."""
    if not pid:
        return ""
    if pid == os.getpid():
        return "run by this console"
    if pid == daemon_pid:
        return f"run by the daemon (pid {pid})"
    return f"run by pid {pid}"
