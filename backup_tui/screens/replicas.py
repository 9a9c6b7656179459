"""The replicas tab of the inventory: each S3 replica, how far behind it is, its last error.

Opening the tab shows the figures the catalog holds (from the last replication
or lag check) at once, then measures the lag again in a thread worker
(``Engine.replica_states(check=True)`` lists the repository and each replica,
network I/O) and shows the new figures. Both come from one engine call
(``EngineCaller.call_engine``, group ``replicas``): a newer request replaces an
older one and the older one's answers are dropped; a failure shows in the
status line.
"Replicate now" is a job of the inventory screen (one job panel, one job at a
time); when it ends, the screen asks this pane to show the stored figures again.
``/`` filters the replicas (``FilterBar``, opened by the inventory screen).
"""

from __future__ import annotations

from functools import partial

from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import DataTable, TabPane

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import ReplicasFailed, ReplicasLoaded
from backup_tui.widgets.filter_bar import FilterBar
from backup_tui.widgets.replica_table import ReplicaDetail, ReplicaTable, describe_replica
from engine.facade import Engine

MEASURING = "Measuring the lag: listing the repository and each replica…"
NO_MATCH = "No replica matches the filter: Esc clears it, / changes it."


class ReplicasPane(EngineCaller, TabPane):
    """A table of the configured replicas and the highlighted one in full below it."""

    def __init__(self, engine: Engine, *, id: str | None = None) -> None:
        super().__init__("Replicas", id=id)
        self.engine = engine
        self.checking = False  # a lag check is running

    def compose(self) -> ComposeResult:
        yield FilterBar("#replica-table", id="replica-filter")
        yield ReplicaTable(id="replica-table")
        yield ReplicaDetail(id="replica-detail")

    @property
    def table(self) -> ReplicaTable:
        return self.query_one(ReplicaTable)

    @property
    def detail(self) -> ReplicaDetail:
        return self.query_one(ReplicaDetail)

    def load(self, check: bool = True) -> None:
        """Show the stored figures; with ``check``, then the lag measured now."""
        self.checking = check
        self.detail.show(status=MEASURING if check else "")
        self.call_engine(partial(self._states, check), group="replicas", failed=ReplicasFailed)

    def _states(self, check: bool) -> ReplicasLoaded:
        """In the worker: the stored figures, then (``check``) the measured ones."""
        stored = ReplicasLoaded(self.engine.replica_states(check=False), checked=False)
        if not check:
            return stored
        self.post_answer(stored)
        return ReplicasLoaded(self.engine.replica_states(check=True), checked=True)

    def on_replicas_loaded(self, message: ReplicasLoaded) -> None:
        message.stop()
        if message.checked or not self.checking:
            self.checking = False
            self.detail.show(status="")
        self.table.show(message.states)
        self._show_selected()

    def on_replicas_failed(self, message: ReplicasFailed) -> None:
        message.stop()
        self.checking = False
        self.detail.show(status=f"Cannot read the replica states: {message.error}")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()  # the inventory's own table is the only one it follows
        self._show_selected()

    def on_filter_bar_applied(self, _event: FilterBar.Applied) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        state = self.table.selected
        if state is not None:
            self.detail.show(describe_replica(state))
        elif self.table.states:
            self.detail.show(Content.styled(NO_MATCH, "$foreground-muted"))
