"""The schedule table and the highlighted schedule in full below it.

A row per schedule (``Engine.schedules``: one per source kind, then cleanup,
verify, replicate, drill), keyed by its kind: its cron expression, what it
does, whether it is active, paused or off (cron ``off``), its next run, its
last run, a mark when that last run was a missed run caught up at start, and
its result with the error, cut short (in one column: 120 columns hold no more).
``ScheduleDetail`` has the highlighted one in full, to the second.

A schedule with nothing to run with this config (the engine's ``runnable``
False: no source of its kind, no replica, nothing to drill) is greyed out, its
state "nothing to run" and no next run; the detail says why. A run now asked for
and not yet taken by a scheduler (``pending``) shows as "pending since HH:MM" in
place of the next run. Narrower than 120 columns the table leaves out what each
schedule does (and under 70 its cron too): the detail has them. Every time carries
its zone (the local one: "UTC", "CET"), so a reader need not guess which clock the
schedule speaks of.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.content import Content

from backup_tui.format import cut, local_time
from backup_tui.widgets.detail import StatusDetail
from backup_tui.widgets.keyed_table import COMPACT, FULL, NARROW, KeyedTable

TIME_FORMAT = "%m-%d %H:%M %Z"
LONG_FORMAT = "%Y-%m-%d %H:%M:%S %Z"
PENDING_FORMAT = "%H:%M"
NOTHING = "nothing to run"
WHAT_WIDTH = 26
RESULT_WIDTH = 30
CAUGHT_UP = "↻"  # the last run was a missed one, run once at start
RESULT_STYLES = {"succeeded": "text-success", "failed": "text-error"}


def is_off(schedule: dict) -> bool:
    """The schedule has no cron expression (``off``): it runs only when asked to."""
    return schedule["cron"].strip() in ("", "off")


def runnable(schedule: dict) -> bool:
    """The schedule has something to run with this config (the engine's ``runnable``)."""
    return schedule.get("runnable", True)


def state_of(schedule: dict) -> str:
    """``off`` (the config says so), ``nothing to run``, ``paused`` or ``active``."""
    if is_off(schedule):
        return "off"
    if not runnable(schedule):
        return NOTHING
    return "paused" if schedule["paused"] else "active"


def shown_time(iso: str | None, fmt: str = TIME_FORMAT, none: str = "never") -> str:
    return local_time(datetime.fromisoformat(iso), fmt) if iso else none


def pending_text(schedule: dict, fmt: str = PENDING_FORMAT) -> str:
    """``pending since 09:41`` while a run now waits for a scheduler, else ""."""
    pending = schedule.get("pending")
    return f"pending since {shown_time(pending, fmt)}" if pending else ""


def next_run_text(schedule: dict, fmt: str = TIME_FORMAT) -> str:
    state = state_of(schedule)
    if state == NOTHING:
        return "—"
    if state != "active":
        return state
    return shown_time(schedule["next_run"], fmt, none="none")


class ScheduleTable(KeyedTable):
    """Schedules as rows; the row key is the schedule kind."""

    COLUMNS = (
        ("kind", "Schedule"),
        ("cron", "Cron"),
        ("what", "What"),
        ("state", "State"),
        ("next", "Next run"),
        ("last", "Last run"),
        ("missed", CAUGHT_UP),
        ("result", "Last result"),
    )
    LEVELS = ((120, FULL), (70, COMPACT), (0, NARROW))
    HIDDEN = {COMPACT: ("what",), NARROW: ("what", "cron")}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.schedules: dict[str, dict] = {}  # the rows shown, by kind


    @property
    def selected(self) -> dict | None:
        """The schedule under the cursor, if any."""
        return self.schedules.get(self.cursor_key or "")

    def show(self, schedules: list[dict]) -> None:
        """Show ``schedules``; rows already there are updated in place (the cursor stays)."""
        kinds = [s["kind"] for s in schedules]
        if kinds != list(self.schedules):
            self.schedules = {s["kind"]: s for s in schedules}
            self.refill()
        else:
            self.schedules = {s["kind"]: s for s in schedules}
            for s in schedules:
                for (key, _), cell in zip(self.visible_columns(), self.visible(self._cells(s)),
                                          strict=True):
                    self.update_cell(s["kind"], key, cell, update_width=True)

    def refill(self) -> None:
        """The rows again from the schedules shown (after the columns changed)."""
        row = self.cursor_row
        self.clear()
        for s in self.schedules.values():
            self.add_row(*self.visible(self._cells(s)), key=s["kind"])
        if self.row_count:
            self.move_cursor(row=min(row, self.row_count - 1))

    def _style(self, variable: str) -> str:
        return self.app.theme_variables.get(variable, "")

    def _cells(self, s: dict) -> tuple[Text, ...]:
        state = state_of(s)
        if state == NOTHING:  # greyed out: see the module docstring
            grey = "dim"
            return tuple(Text(t, style=grey) for t in (
                s["kind"], s["cron"], cut(s["what"], WHAT_WIDTH), state, next_run_text(s),
                shown_time(s["last_run"]), "", cut(s["last_result"] or "", RESULT_WIDTH)))
        state_style = {"paused": self._style("text-warning"), "off": "dim"}.get(state, "")
        pending = pending_text(s)
        return (
            Text(s["kind"]),
            Text(s["cron"], style="dim" if is_off(s) else ""),
            Text(cut(s["what"], WHAT_WIDTH)),
            Text(state, style=state_style),
            Text(pending, style=self._style("text-accent") or "bold") if pending
            else Text(next_run_text(s), style=state_style),
            Text(shown_time(s["last_run"]), style="" if s["last_run"] else "dim"),
            Text(CAUGHT_UP if s["last_missed"] else "", style=self._style("text-warning")),
            self._result(s),
        )

    def _result(self, s: dict) -> Text:
        """``succeeded``, or ``failed: <the error>`` cut short."""
        result = s["last_result"] or ""
        style = self._style(RESULT_STYLES.get(result, "")) or "dim"
        if not s["last_error"]:
            return Text(result, style=style)
        return Text(cut(f"{result}: {s['last_error']}", RESULT_WIDTH), style=style)


def describe_schedule(s: dict, where_runs_go: str = "") -> Content:
    """The detail lines of one schedule: cron and what, why it has nothing to run, a
    pending run now (and who will take it: ``where_runs_go``), next run, last run,
    catch-up, error."""
    muted = "$foreground-muted"
    lines = [
        Content.assemble((s["kind"], "bold"), "  ", s["what"], ("   cron ", muted), s["cron"]),
    ]
    if not runnable(s):
        lines.append(Content.assemble(
            (f"{NOTHING}: ", "$text-warning"), f"{s.get('why') or 'nothing configured'}; "
            "the scheduler skips it"))
    if s.get("pending"):
        lines.append(Content.assemble(
            ("run now pending ", "$text-accent"),
            f"since {shown_time(s['pending'], LONG_FORMAT)}: "
            f"{where_runs_go or 'a scheduler takes it when one runs'}"))
    lines.append(Content.assemble(
        ("next run ", muted), next_run_text(s, LONG_FORMAT),
        ("   last run ", muted), shown_time(s["last_run"], LONG_FORMAT),
        *((" ", (s["last_result"], "bold")) if s["last_result"] else ())))
    if s["last_missed"]:
        lines.append(Content.assemble(
            (f"{CAUGHT_UP} missed run caught up: ", "$text-warning"),
            f"the run due {shown_time(s['last_missed'], LONG_FORMAT)} was missed while no "
            "scheduler was running; it ran once when one started"))
    if s["last_error"]:
        lines.append(Content.assemble(("last error: ", muted), (s["last_error"], "$text-error")))
    return Content("\n").join(lines)


class ScheduleDetail(StatusDetail):
    """One schedule in full under the table, after a status line (how run now will go)."""
