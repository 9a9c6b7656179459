"""The jobs table and the highlighted job in full below it: what ran, runs, and how far it is.

A row per catalog job (``Engine.jobs``), newest first, keyed by the job id:
kind, target, state, when it started, how long it ran (or runs), progress,
throughput, ETA (running jobs only), and its error when it has one, else its
last message, cut short (two columns of text would not fit 120 columns; the
detail has both in full). Any process may run a job (this console, the daemon, the CLI): it
writes its progress to the catalog about four times a second, so the figures
are as of the row's ``updated`` time. ``now`` is passed in (the console's clock,
fixed in snapshot tests) rather than read here.

Words: *fraction* is bytes done of the total when there is a byte total, else
items done of the item total; a ``dump`` phase's total is the database size, a
guess, shown with "~". A running backup's total may be an estimate too: a
fileset's is its last snapshot's figures or a scan, and 0 (unknown: an
indeterminate bar with bytes and rate) once outgrown; a dump's and a cluster's
are raised to what is done when the job outgrows them, so a total the job has
*reached* while still in that phase says nothing, and no fraction (nor ETA) is
shown then, rather than 100% from the start. A running job never reads 100%
(``job_panel.progress_fraction``, shared with the inventory's panel). *Rate*
is bytes done over the seconds from start to the last progress row. *ETA* is
what is left at that rate, less the time since that row.

Following: when a job starts, or one fails, the cursor moves to it (the newest
first), unless the user moved the cursor in the last ``USER_QUIET`` seconds: a
failure at night is what the operator wants to see, but never yanked from under
the keys. At the first show the cursor goes to the newest running job, if any.
A job the filter hides is not followed.

Columns by the table's width (``KeyedTable`` levels): all of them from 120 columns;
*compact* (from 70, the screen at 80) kind, target, state, started, duration and
progress (the detail has the rate and the ETA); *narrow* (the screen at 60) without
the start. The filter (``/``) knows ``kind``, ``source`` (the target, whole or after
its ``kind:``) and ``status`` (the state); free text matches the message, the
error and every cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import ProgressBar, Static

from backup_tui.format import cut, duration, human_bytes, local_time
from backup_tui.widgets.job_panel import ESTIMATED_PHASES, progress_fraction
from backup_tui.widgets.job_panel import outgrown as job_panel_outgrown
from backup_tui.widgets.keyed_table import COMPACT, FULL, NARROW, KeyedTable

STARTED_FORMAT = "%m-%d %H:%M"  # the detail has the seconds
MESSAGE_WIDTH = 26  # the table cuts the message or error here at least; the detail has
OTHER_COLUMNS = 96  # them whole. Beyond this, a wider table gives the message the rest.
RUNNING = "running"
FOLLOWED = (RUNNING, "failed")  # states the cursor follows a job into
USER_QUIET = 5.0  # seconds after the user moved the cursor during which it is not moved
STATE_STYLES = {  # theme variables; "running" uses the accent
    "succeeded": "text-success",
    "failed": "text-error",
    "interrupted": "text-warning",
    "incomplete": "text-warning",
    RUNNING: "text-accent",
}
ITEMS = {"backup": "files", "replicate": "objects"}  # what a job kind's items are


def _items(job: dict) -> str:
    """What a job's items are, for the numbers line: a backup counts files (a source without
    files counts none), a replication objects, and so does a backup replicating after."""
    kind = "replicate" if job.get("phase") == "replicate" else job["kind"]
    return ITEMS.get(kind, "items")


def outgrown(job: dict) -> bool:
    """A running job has done as much as its estimated total (see the module docstring)."""
    return job["state"] == RUNNING and job_panel_outgrown(
        job.get("phase"), job["bytes_done"] or 0, job["bytes_total"] or 0)


@dataclass(frozen=True)
class Figures:
    """A job's numbers at ``now``: see the module docstring for the words."""

    fraction: float | None
    estimated: bool  # the total is a guess (a dump's)
    elapsed: float  # seconds from start to the end, or to now while running
    rate: float | None  # bytes a second
    eta: float | None  # seconds left; running jobs with a byte or item total only

    @classmethod
    def of(cls, job: dict, now: float) -> Figures:
        started = job["started"] or now
        running = job["state"] == RUNNING
        end = now if running else (job["ended"] or job["updated"] or started)
        done, total = job["bytes_done"] or 0, job["bytes_total"] or 0
        items, items_total = job["items_done"] or 0, job["items_total"] or 0
        # An ended job's total is what it did: only a running one's may be an outgrown guess.
        fraction = progress_fraction(job.get("phase") if running else None, done, total,
                                     items, items_total, running)
        measured = (job["updated"] or started) - started  # progress rows are as of "updated"
        if not running:
            measured = end - started
        rate = done / measured if done and measured > 0 else None
        eta = None
        if running and fraction is not None:
            since_row = max(0.0, now - (job["updated"] or now))
            if total > 0 and rate:
                eta = max(0.0, (total - done) / rate - since_row)
            elif items and measured > 0:
                eta = max(0.0, (items_total - items) / (items / measured) - since_row)
        return cls(fraction, job.get("phase") in ESTIMATED_PHASES, end - started, rate, eta)

    @property
    def percent(self) -> str:
        if self.fraction is None:
            return ""
        return f"{'~' if self.estimated else ''}{self.fraction * 100:.0f}%"


def numbers_line(job: dict, figures: Figures) -> str:
    """``96.0 MiB of 192.0 MiB · 4/8 files · 45.1 MiB/s · ETA 2.1 s``; "" before any."""
    parts = []
    if outgrown(job):
        parts.append(f"{human_bytes(job['bytes_done'])} so far (more than estimated)")
    elif job["bytes_total"]:
        about = "~" if figures.estimated else ""
        parts.append(f"{human_bytes(job['bytes_done'] or 0)} of "
                     f"{about}{human_bytes(job['bytes_total'])}")
    elif job["bytes_done"]:
        parts.append(human_bytes(job["bytes_done"]))
    if job["items_total"]:
        parts.append(f"{job['items_done'] or 0}/{job['items_total']} {_items(job)}")
    if figures.rate:
        parts.append(f"{human_bytes(figures.rate)}/s")
    if figures.eta is not None:
        parts.append(f"ETA {duration(figures.eta)}")
    return " · ".join(parts)


def started_at(job: dict, fmt: str = STARTED_FORMAT) -> str:
    return local_time(datetime.fromtimestamp(job["started"], UTC), fmt) if job["started"] else ""


def _fields(job: dict) -> dict[str, tuple[str, ...] | str]:
    """What the filter's ``kind:``, ``source:`` and ``status:`` look at."""
    target = job["target"] or ""
    return {"kind": job["kind"], "source": (target, target.partition(":")[2]),
            "status": job["state"]}


def _text(job: dict, cells: tuple[Text, ...]) -> str:
    """What the filter's free text looks in: the cells, the whole message and error."""
    return " ".join([job["id"], *(c.plain for c in cells), job["message"] or "",
                     job["error"] or "", job.get("phase") or ""])


class JobTable(KeyedTable):
    """Jobs as rows, newest first; the row key is the job id."""

    COLUMNS = (
        ("kind", "Kind"),
        ("target", "Target"),
        ("state", "State"),
        ("started", "Started"),
        ("duration", "Duration"),
        ("progress", "Progress"),
        ("rate", "Throughput"),
        ("eta", "ETA"),
        ("message", "Message or error"),
    )
    RIGHT = ("duration", "progress", "rate", "eta")
    LEVELS = ((120, FULL), (70, COMPACT), (0, NARROW))
    HIDDEN = {COMPACT: ("rate", "eta", "message"),
              NARROW: ("started", "rate", "eta", "message")}
    NOUN = "jobs"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.jobs: dict[str, dict] = {}  # every job read (the filter may hide some), by id
        self._all: list[dict] = []  # as last shown, with its time: the filter shows them again
        self._now = 0.0
        self._order: list[str] | None = []  # None: build the rows again at the next show
        self._cells_shown: dict[str, tuple[Text, ...]] = {}
        self._states: dict[str, str] | None = None  # job id -> state at the last show
        self.touched = float("-inf")  # time.monotonic() when the user last moved the cursor

    @property
    def selected(self) -> dict | None:
        """The job under the cursor, if any."""
        return self.jobs.get(self.cursor_key or "")

    def show(self, jobs: list[dict], now: float) -> None:
        """Show ``jobs`` (newest first). The cursor follows a job that starts or fails (see
        the module docstring); else it stays on its job, or on the top row when it was
        there; cells that did not change are left alone."""
        self._all, self._now = jobs, now
        current = self.selected
        at_top = self.cursor_row == 0
        follow = self._to_follow(jobs)
        self.jobs = {j["id"]: j for j in jobs}
        cells = {j["id"]: self.visible(self._cells(j, now)) for j in jobs}
        order = [j["id"] for j in jobs if self.shows(_fields(j), _text(j, cells[j["id"]]))]
        if follow not in order:  # hidden by the filter
            follow = None
        if order != self._order:
            self.clear()
            for job_id in order:
                self.add_row(*cells[job_id], key=job_id)
            if follow is None and current is not None and not at_top and current["id"] in self.rows:
                self.move_cursor(row=self.get_row_index(current["id"]))
        else:
            for job_id, row in cells.items():
                before = self._cells_shown.get(job_id, ())
                for (key, _), cell, old in zip(self.visible_columns(), row, before,
                                               strict=True):
                    if cell.plain != old.plain or cell.style != old.style:
                        self.update_cell(job_id, key, cell, update_width=True)
        if follow is not None and follow != self.cursor_key:
            self.move_cursor(row=self.get_row_index(follow))
        self._order, self._cells_shown = order, cells
        self.show_count(len(jobs))

    @property
    def message_width(self) -> int:
        """Where the message column cuts: what the other columns leave of a wide table."""
        return max(MESSAGE_WIDTH, self.size.width - OTHER_COLUMNS)

    def on_resize(self, event: events.Resize) -> None:
        cut_at = self.message_width
        super().on_resize(event)  # a new level fills the rows again
        if self.level == FULL and cut_at != getattr(self, "_cut_at", cut_at):
            self.refill()
        self._cut_at = cut_at

    def refill(self) -> None:
        self._order = None  # the columns or the filter changed: build the rows again
        self.show(self._all, self._now)

    def _to_follow(self, jobs: list[dict]) -> str | None:
        """The job the cursor should go to now, if any (see the module docstring)."""
        before, self._states = self._states, {j["id"]: j["state"] for j in jobs}
        if before is None:  # the first show: the newest running job
            return next((j["id"] for j in jobs if j["state"] == RUNNING), None)
        if time.monotonic() - self.touched < USER_QUIET:
            return None
        return next((j["id"] for j in jobs
                     if j["state"] in FOLLOWED and before.get(j["id"]) != j["state"]), None)

    # The user's own moves: the table then leaves the cursor alone for a while.
    def _moved_by_user(self) -> None:
        self.touched = time.monotonic()

    def action_cursor_up(self) -> None:
        self._moved_by_user()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._moved_by_user()
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._moved_by_user()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._moved_by_user()
        super().action_page_down()

    def action_scroll_top(self) -> None:
        self._moved_by_user()
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._moved_by_user()
        super().action_scroll_bottom()

    def action_scroll_home(self) -> None:
        self._moved_by_user()
        super().action_scroll_home()

    def action_scroll_end(self) -> None:
        self._moved_by_user()
        super().action_scroll_end()

    async def _on_click(self, event: events.Click) -> None:
        self._moved_by_user()
        await super()._on_click(event)

    def _style(self, state: str) -> str:
        return self.app.theme_variables.get(STATE_STYLES.get(state, ""), "")

    def _cells(self, job: dict, now: float) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and messages are data.
        figures = Figures.of(job, now)
        running = job["state"] == RUNNING
        dim = "" if running else "dim"
        return (
            Text(job["kind"]),
            Text(job["target"] or ""),
            Text(job["state"], style=self._style(job["state"])),
            Text(started_at(job)),
            Text(duration(figures.elapsed), justify="right"),
            Text(figures.percent, justify="right", style=dim),
            Text(f"{human_bytes(figures.rate)}/s" if figures.rate else "", justify="right",
                 style=dim),
            Text(duration(figures.eta) if figures.eta is not None else "", justify="right"),
            Text(cut(job["error"], self.message_width), style=self._style("failed"))
            if job["error"] else Text(cut(job["message"], self.message_width), style=dim),
        )


class JobDetail(Vertical):
    """The highlighted job: a title, a progress bar while it runs, its numbers and words."""

    def __init__(self, message: str = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._first = message  # shown until the first show(): composed with the parts

    def compose(self) -> ComposeResult:
        # The first message is composed in, not set from the screen's on_mount: a screen
        # built ahead while the app shuts down is mounted with its parts cut short.
        yield Static(Content.styled(self._first, "$text-muted") if self._first else "",
                     id="jobs-title")
        yield ProgressBar(total=100, show_eta=False, id="jobs-bar")
        yield Static("", id="jobs-numbers")
        yield Static("", id="jobs-when")
        yield Static("", id="jobs-message")
        yield Static("", id="jobs-error")

    @property
    def bar(self) -> ProgressBar:
        return self.query_one("#jobs-bar", ProgressBar)

    @property
    def text(self) -> str:
        """What the detail shows, as plain text, one line per part."""
        parts = (self.query_one(f"#jobs-{i}", Static).visual
                 for i in ("title", "numbers", "when", "message", "error"))
        return "\n".join(v.plain if isinstance(v, Content) else str(v) for v in parts)

    def _text(self, part: str, content: Content | str) -> None:
        # Content, not str: messages and errors are data, never markup.
        self.query_one(f"#jobs-{part}", Static).update(
            content if isinstance(content, Content) else Content(content))

    def show_message(self, text: str) -> None:
        """No job to show: one line instead."""
        self.set_class(False, "-running")
        self._text("title", Content.styled(text, "$text-muted"))
        for part in ("numbers", "when", "message", "error"):
            self._text(part, "")

    def show(self, job: dict, now: float, runner: str = "") -> None:
        """``job`` as of ``now``; ``runner`` says which process runs it ("the daemon")."""
        figures = Figures.of(job, now)
        running = job["state"] == RUNNING
        self.set_class(running, "-running")
        state_style = "$" + STATE_STYLES.get(job["state"], "text-muted")
        phase = f", phase {job['phase']}" if job.get("phase") else ""
        self._text("title", Content.assemble((f"{job['kind']} {job['target']}", "bold"), ": ",
                                             (job["state"], state_style), phase))
        if running:
            if figures.fraction is None:
                self.bar.update(total=None, progress=0)
            else:
                self.bar.update(total=100, progress=round(figures.fraction * 100, 1))
        when = [f"started {started_at(job, '%Y-%m-%d %H:%M:%S')}",
                f"{'running for' if running else 'took'} {duration(figures.elapsed)}"]
        if running and job["updated"]:
            when.append(f"last progress {duration(now - job['updated'])} ago")
        if runner:
            when.append(runner)
        self._text("numbers", numbers_line(job, figures) or ("no figures yet" if running else ""))
        self._text("when", " · ".join(when))
        self._text("message", job["message"] or "")
        error = job["error"] or ""
        self._text("error", Content.styled(error, "$text-error") if error else "")
