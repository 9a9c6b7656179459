"""The sources tab of the inventory: is each source protected, how far back it recovers.

A row per configured source (fileset, database, cluster): its newest backup,
its recovery point, its WAL in the replicas and its last restore drill (see
``backup_tui.widgets.source_table``); the highlighted one in full below, with
the health reasons that name it. The figures come from ``Engine.status()`` and
``Engine.health()``, read together in a thread worker (``EngineCaller``, group
``source-states``) when the tab is shown, on ``r``, and every
``REFRESH_SECONDS`` while the tab shows on the current screen; a newer read
replaces an older one and the older one's answer is dropped. A failure shows
in the status line above the detail (no notification: the read repeats) and
the rows of the last good read stay. ``/`` filters the sources (``FilterBar``,
opened by the inventory screen).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.timer import Timer
from textual.widgets import DataTable, TabPane

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import SourceStatesFailed, SourceStatesLoaded
from backup_tui.widgets.filter_bar import FilterBar
from backup_tui.widgets.source_table import SourceDetail, SourceTable, describe_source
from engine.facade import Engine

REFRESH_SECONDS = 10.0
READING = "Reading the status of every source…"
NO_MATCH = "No source matches the filter: Esc clears it, / changes it."


class SourcesPane(EngineCaller, TabPane):
    """A table of the configured sources and the highlighted one in full below it."""

    def __init__(self, engine: Engine, *, id: str | None = None) -> None:
        super().__init__("Sources", id=id)
        self.engine = engine
        self.reasons: list[str] = []  # the health reasons of the last read
        self.loaded = False  # a read has answered
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield FilterBar("#source-table", id="source-filter")
        yield SourceTable(id="source-table")
        with VerticalScroll(id="source-scroll"):  # tab to it to scroll a long detail
            yield SourceDetail(id="source-detail")

    @property
    def table(self) -> SourceTable:
        return self.query_one(SourceTable)

    @property
    def detail(self) -> SourceDetail:
        return self.query_one(SourceDetail)

    def showing(self, shown: bool) -> None:
        """The tab was shown (read now, then every REFRESH_SECONDS) or hidden (stop)."""
        if not shown:
            if self._timer is not None:
                self._timer.pause()
            return
        self.load()
        if self._timer is None:
            self._timer = self.set_interval(REFRESH_SECONDS, self._tick)
        else:
            self._timer.resume()

    def _tick(self) -> None:
        if self.screen.is_current:  # the jobs or schedule screen may be showing instead
            self.load()

    def load(self) -> None:
        """Read the status and the health again."""
        if not self.loaded:
            self.detail.show(status=READING)
        self.call_engine(self._states, group="source-states", failed=SourceStatesFailed)

    def _states(self) -> SourceStatesLoaded:
        """In the worker: both engine reads (no network: stored figures only)."""
        return SourceStatesLoaded(self.engine.status()["sources"],
                                  list(self.engine.health()["reasons"]))

    def on_source_states_loaded(self, message: SourceStatesLoaded) -> None:
        message.stop()
        self.loaded = True
        self.reasons = message.reasons
        self.table.show(message.sources)
        self.detail.show(status="")
        if not message.sources:
            self.detail.show(Content.styled("No source is configured.", "$foreground-muted"))
        self._show_selected()

    def on_source_states_failed(self, message: SourceStatesFailed) -> None:
        message.stop()
        self.detail.show(status=f"Cannot read the status: {message.error}")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()  # the inventory's own table is the only one it follows
        self._show_selected()

    def on_filter_bar_applied(self, _event: FilterBar.Applied) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        entry = self.table.selected
        if entry is not None:
            self.detail.show(describe_source(entry, self.reasons))
        elif self.table.entries:
            self.detail.show(Content.styled(NO_MATCH, "$foreground-muted"))
