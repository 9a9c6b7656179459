"""The dashboard (``d``), the console's first screen: am I protected?

Top to bottom: the verdict ("Protected", or "N problems" and the health
reasons), a row per source (``backup_tui.widgets.dashboard``: the newest good
backup against its limit, the last verify, the last drill and its RTO, the
newest backup in each replica, the WAL archive's lag where the source archives
WAL, the failed backups of the last 24 hours), a line per replica (region, last
success, lag), and four plots (``backup_tui.widgets.dashboard_plots``:
repository size and bytes added per day, backup durations, drill RTOs).

The figures are the ``health`` command's: ``Engine.status()`` and
``Engine.health()``, read together in one thread worker (``EngineCaller``,
group ``dashboard``) when the screen shows, on ``r`` and every
``REFRESH_SECONDS`` while it shows (a tick finding the last read still under
way skips); a newer read replaces an older one. The plots' ``Engine.history()``
comes with the read when it shows first, on ``r``, every ``HISTORY_SECONDS``,
and right after a read whose sources have another snapshot or drill than at the
last history (``history_key``). A failed read says so on the status line above
the verdict; the last good figures stay. Enter on a source opens the inventory.

Sizes: ``HORIZONTAL_BREAKPOINTS`` give the screen a class (``-narrow`` under
76 cells, ``-wide`` from 120) and the table takes the matching column set;
``VERTICAL_BREAKPOINTS`` a ``-short`` class under 24 rows, which drops the rules
between the parts (``dashboard.tcss``). The verdict lists at most 2 reasons
under 24 rows, 4 under 40, then says how many more.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Header, Static
from textual.worker import Worker

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import DashboardFailed, DashboardLoaded
from backup_tui.screens.help import ConsoleFooter
from backup_tui.widgets.dashboard import (
    DashboardTable,
    layout_for,
    replica_lines,
    verdict,
)
from backup_tui.widgets.dashboard_plots import Plot, series
from engine.facade import Engine

REFRESH_SECONDS = 5.0
HISTORY_SECONDS = 60.0  # the plots' figures change with backups and drills, read less often
HISTORY_DAYS = 30
PLOTS = ("size", "added", "duration", "rto")


def history_key(status: dict) -> tuple:
    """What changes the history: each source's snapshots and its newest drill."""
    return tuple((s["kind"], s["name"], s.get("snapshots"), s.get("last"),
                  ((s.get("drill") or {}).get("last") or {}).get("id"))
                 for s in status.get("sources") or [])


class DashboardScreen(EngineCaller, Screen):
    """The verdict, the sources, the replicas and the plots; see the module docstring."""

    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("r", "refresh", "Refresh", id="refresh"),
        Binding("enter", "open_inventory", "Open in the inventory", show=False,
                id="open-inventory"),
    ]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (76, "-normal"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (24, "-tall")]
    AUTO_FOCUS = "#dash-sources"

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.loaded: DashboardLoaded | None = None  # the last good read
        self.history: dict = {}  # the last history read
        self._history_key: tuple = ()  # what the sources had then (history_key)
        self._history_at = -HISTORY_SECONDS  # time.monotonic() of that read
        self._reading: Worker | None = None
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="dash-body"):
            yield Static("Reading the status…", id="dash-status")
            yield Static("", id="dash-verdict")
            yield DashboardTable(id="dash-sources")
            yield Static("", id="dash-replicas")
            with Grid(id="dash-plots"):
                for key in PLOTS:
                    yield Plot(key, id=f"plot-{key}")
        yield ConsoleFooter()

    @property
    def table(self) -> DashboardTable:
        return self.query_one(DashboardTable)

    # -------------------------------------------------------------- reading
    def on_screen_resume(self) -> None:
        self.load()
        if self._timer is None:
            self._timer = self.set_interval(REFRESH_SECONDS, self._tick)
        else:
            self._timer.resume()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def action_refresh(self) -> None:
        self.load(history=True)

    def _tick(self) -> None:
        # A read that takes longer than the interval (a large repository) is not piled on.
        if self._reading is None or self._reading.is_finished:
            self.load()

    def load(self, history: bool = False) -> None:
        """Read the status and the health again, and the history too when asked, when
        ``HISTORY_SECONDS`` have passed, or none was read yet; the very first read is the
        verdict alone, so that it shows before the plots' read (a large repository)."""
        history = (history or not self.history
                   or time.monotonic() - self._history_at >= HISTORY_SECONDS)
        if self.loaded is None and self._reading is None:
            history = False  # the verdict first; its answer asks for the plots at once
        self._reading = self.call_engine(partial(self._read, history), group="dashboard",
                                         failed=DashboardFailed)

    def _read(self, history: bool) -> DashboardLoaded:
        """In the worker: the engine reads (stored figures only, no network)."""
        status, health = self.engine.overview()
        return DashboardLoaded(status, health,
                               self.engine.history(HISTORY_DAYS) if history else None)

    def on_dashboard_loaded(self, message: DashboardLoaded) -> None:
        self.loaded = message
        self.query_one("#dash-status", Static).update("")
        self.query_one("#dash-status").display = False
        key = history_key(message.status)
        if message.history is not None:
            self.history, self._history_key = message.history, key
            self._history_at = time.monotonic()
        if self.is_current:  # a late answer for a screen left meanwhile: shown on return
            self._show()
        if message.history is None and (key != self._history_key or not self.history):
            self.load(history=True)  # none yet, or a backup or a drill since: more to plot

    def on_dashboard_failed(self, message: DashboardFailed) -> None:
        status = self.query_one("#dash-status", Static)
        status.update(f"Cannot read the status: {message.error}")
        status.display = True

    # -------------------------------------------------------------- showing
    def _now(self, loaded: DashboardLoaded) -> datetime:
        """The time the engine checked: every age is measured to it."""
        checked = loaded.health.get("checked") or self.history.get("now")
        return datetime.fromisoformat(checked) if checked else datetime.now(UTC)

    def _show(self) -> None:
        loaded = self.loaded
        if loaded is None:
            return
        now = self._now(loaded)
        status = loaded.status
        most = 2 if self.size.height < 24 else 4 if self.size.height < 40 else 10
        self.query_one("#dash-verdict", Static).update(verdict(status, loaded.health, now,
                                                               most))
        replicas = status.get("replicas") or []
        self.table.show(status.get("sources") or [], [r["name"] for r in replicas], now,
                        layout_for(self.size.width))
        self.query_one("#dash-replicas", Static).update(replica_lines(replicas, now))
        for one in series(self.history):
            self.query_one(f"#plot-{one.key}", Plot).show(one)

    def on_resize(self, _event: events.Resize) -> None:
        self._show()  # the columns and the reasons shown follow the size

    # --------------------------------------------------------------- moving
    def action_open_inventory(self) -> None:
        self.app.switch_mode("inventory")

    @on(DataTable.RowSelected, "#dash-sources")
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open_inventory()
