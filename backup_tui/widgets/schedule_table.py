"""The schedule table and the highlighted schedule in full below it.

A row per schedule (``Engine.schedules``: one per source kind, then cleanup,
verify, replicate), keyed by its kind: its cron expression, what it
does, whether it is active, paused or off (cron ``off``), its next run, its
last run, a mark when that last run was a missed run caught up at start, and
its result with the error, cut short (in one column: 120 columns hold no more).
``ScheduleDetail`` has the highlighted one in full, to the second.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.content import Content

from backup_tui.format import cut, local_time
from backup_tui.widgets.detail import StatusDetail
from backup_tui.widgets.keyed_table import KeyedTable

TIME_FORMAT = "%m-%d %H:%M"
LONG_FORMAT = "%Y-%m-%d %H:%M:%S"
WHAT_WIDTH = 26
RESULT_WIDTH = 30
CAUGHT_UP = "↻"  # the last run was a missed one, run once at start
RESULT_STYLES = {"succeeded": "text-success", "failed": "text-error"}


def is_off(schedule: dict) -> bool:
    """The schedule has no cron expression (``off``): it runs only when asked to."""
    return schedule["cron"].strip() in ("", "off")


def state_of(schedule: dict) -> str:
    """``paused``, ``off`` or ``active``."""
    if schedule["paused"]:
        return "paused"
    return "off" if is_off(schedule) else "active"


def shown_time(iso: str | None, fmt: str = TIME_FORMAT, none: str = "never") -> str:
    return local_time(datetime.fromisoformat(iso), fmt) if iso else none


def next_run_text(schedule: dict, fmt: str = TIME_FORMAT) -> str:
    state = state_of(schedule)
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
            self.clear()
            for s in schedules:
                self.add_row(*self._cells(s), key=s["kind"])
        else:
            for s in schedules:
                for (key, _), cell in zip(self.COLUMNS, self._cells(s), strict=True):
                    self.update_cell(s["kind"], key, cell, update_width=True)
        self.schedules = {s["kind"]: s for s in schedules}

    def _style(self, variable: str) -> str:
        return self.app.theme_variables.get(variable, "")

    def _cells(self, s: dict) -> tuple[Text, ...]:
        state = state_of(s)
        state_style = {"paused": self._style("text-warning"), "off": "dim"}.get(state, "")
        return (
            Text(s["kind"]),
            Text(s["cron"], style="dim" if is_off(s) else ""),
            Text(cut(s["what"], WHAT_WIDTH)),
            Text(state, style=state_style),
            Text(next_run_text(s), style=state_style),
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


def describe_schedule(s: dict) -> Content:
    """The detail lines of one schedule: cron and what, next run, last run, catch-up, error."""
    muted = "$foreground-muted"
    lines = [
        Content.assemble((s["kind"], "bold"), "  ", s["what"], ("   cron ", muted), s["cron"]),
        Content.assemble(("next run ", muted), next_run_text(s, LONG_FORMAT),
                         ("   last run ", muted), shown_time(s["last_run"], LONG_FORMAT),
                         *((" ", (s["last_result"], "bold")) if s["last_result"] else ())),
    ]
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
