"""The dashboard (``d``), the console's first screen: am I protected?

Top to bottom: the verdict ("Protected", or "N problems" and the health
reasons), a row per source (``backup_tui.widgets.dashboard``: the newest good
backup against its limit, the last verify, the last drill and its RTO, the
newest backup in each replica, the WAL archive's lag where the source archives
WAL, the failed backups of the last 24 hours), a line per replica (region, last
success, lag), and four plots (``backup_tui.widgets.dashboard_plots``:
repository size and bytes added per day, backup durations, drill RTOs).

The figures are the ``health`` command's: ``Engine.status()``,
``Engine.health()`` and ``Engine.history()``, read together in one thread worker
(``EngineCaller``, group ``dashboard``) when the screen shows, on ``r`` and every
``REFRESH_SECONDS`` while it shows; a newer read replaces an older one. A
failed read says so on the status line above the verdict; the last good figures
stay. Enter on a source opens the inventory.

Sizes: ``HORIZONTAL_BREAKPOINTS`` give the screen a class (``-narrow`` under
76 cells, ``-wide`` from 120) and the table takes the matching column set;
``VERTICAL_BREAKPOINTS`` a ``-short`` class under 24 rows, which drops the rules
between the parts (``dashboard.tcss``). The verdict lists at most 2 reasons
under 24 rows, 4 under 40, then says how many more.
"""

from __future__ import annotations

from datetime import UTC, datetime

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Header, Static

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
HISTORY_DAYS = 30
PLOTS = ("size", "added", "duration", "rto")


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
            self._timer = self.set_interval(REFRESH_SECONDS, self.load)
        else:
            self._timer.resume()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def action_refresh(self) -> None:
        self.load()

    def load(self) -> None:
        """Read the status, the health and the history again."""
        self.call_engine(self._read, group="dashboard", failed=DashboardFailed)

    def _read(self) -> DashboardLoaded:
        """In the worker: the three engine reads (stored figures only, no network)."""
        return DashboardLoaded(self.engine.status(), self.engine.health(),
                               self.engine.history(HISTORY_DAYS))

    def on_dashboard_loaded(self, message: DashboardLoaded) -> None:
        self.loaded = message
        self.query_one("#dash-status", Static).update("")
        self.query_one("#dash-status").display = False
        self._show()

    def on_dashboard_failed(self, message: DashboardFailed) -> None:
        status = self.query_one("#dash-status", Static)
        status.update(f"Cannot read the status: {message.error}")
        status.display = True

    # -------------------------------------------------------------- showing
    def _now(self, loaded: DashboardLoaded) -> datetime:
        """The time the engine checked: every age is measured to it."""
        checked = loaded.health.get("checked") or loaded.history.get("now")
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
        for one in series(loaded.history):
            self.query_one(f"#plot-{one.key}", Plot).show(one)

    def on_resize(self, _event: events.Resize) -> None:
        self._show()  # the columns and the reasons shown follow the size

    # --------------------------------------------------------------- moving
    def action_open_inventory(self) -> None:
        self.app.switch_mode("inventory")

    @on(DataTable.RowSelected, "#dash-sources")
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open_inventory()
