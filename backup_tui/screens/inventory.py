"""The inventory: snapshots in a table, the selected one's record beside it, backups on demand.

``b`` backs up a fileset and ``d`` a database (``d`` shows only when databases
are configured); with several, a ``SourcePicker`` asks which. Every engine call
runs in a thread worker and answers with a message from ``backup_tui.messages``;
handlers on the UI thread update the widgets. Worker groups: ``inventory`` (the
list), ``detail`` (one record), ``connections`` (where each database connects,
read once for the picker and the palette), ``backup`` (one job at a time, files
or database). A newer list or detail request replaces an older one; a result
that arrives for a request no longer current is dropped.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header
from textual.worker import Worker, WorkerState, get_current_worker

from backup_tui.messages import (
    BackupFailed,
    BackupFinished,
    ConnectionsLoaded,
    DetailFailed,
    DetailLoaded,
    EventRelay,
    JobProgress,
    SnapshotsFailed,
    SnapshotsLoaded,
)
from backup_tui.screens.commands import BackupCommands
from backup_tui.screens.source_picker import SourceChoice, SourcePicker
from backup_tui.widgets.job_panel import JobPanel, source_label
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.errors import EngineError
from engine.events import CancelToken
from engine.facade import Engine


class InventoryScreen(Screen):
    """Snapshots of the repository; ``b`` backs up a fileset, ``d`` a database, ``r`` reloads."""

    BINDINGS = [
        Binding("b", "backup", "Back up files", id="backup"),
        Binding("d", "backup_db", "Back up database", id="backup-db"),
        Binding("r", "refresh", "Refresh", id="refresh"),
    ]
    COMMANDS = Screen.COMMANDS | {BackupCommands}

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self._details: dict[str, dict] = {}  # snapshot id -> record (snapshots never change)
        self._cancel: CancelToken | None = None  # set while a backup runs
        self._connections: dict[str, str] = {}  # database -> where it connects, once read

    @property
    def _has_databases(self) -> bool:
        return bool(self.engine.config.databases)

    def _keys_hint(self) -> str:
        return "b to back up a fileset" + (", d a database" if self._has_databases else "")

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="inventory"):
            yield SnapshotTable(id="snapshots")
            yield SnapshotDetail(id="detail")
        yield JobPanel(f"No backup running. Press {self._keys_hint()}.", id="job")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SnapshotDetail).show_message("Loading snapshots…")
        self.load_snapshots()
        if self._has_databases:
            self.load_connections()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Without a [[database]], d does nothing and the footer does not offer it.
        return action != "backup_db" or self._has_databases

    def on_unmount(self) -> None:
        if self._cancel is not None:  # let a running backup stop instead of outliving the app
            self._cancel.cancel()

    # ------------------------------------------------------------ inventory
    def action_refresh(self) -> None:
        self.load_snapshots(self.query_one(SnapshotTable).selected_id)

    @work(thread=True, exclusive=True, group="inventory", exit_on_error=False)
    def load_snapshots(self, select: str | None = None) -> None:
        try:
            snapshots = self.engine.snapshots()
        except EngineError as e:
            message: SnapshotsLoaded | SnapshotsFailed = SnapshotsFailed(str(e))
        else:
            message = SnapshotsLoaded(snapshots, select)
        if not get_current_worker().is_cancelled:
            self.post_message(message)

    def on_snapshots_loaded(self, message: SnapshotsLoaded) -> None:
        table = self.query_one(SnapshotTable)
        table.show(message.snapshots, message.select)
        if not table.row_count:
            self.query_one(SnapshotDetail).show_message(
                f"No snapshots yet. Press {self._keys_hint()}."
            )
        else:
            self._show_detail(table.selected_id)

    def on_snapshots_failed(self, message: SnapshotsFailed) -> None:
        self.query_one(SnapshotDetail).show_message(f"Cannot read the repository:\n{message.error}")
        self.notify(message.error, title="Cannot list snapshots", severity="error")

    # --------------------------------------------------------------- detail
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.row_key.value)

    def _show_detail(self, snapshot_id: str | None) -> None:
        detail = self.query_one(SnapshotDetail)
        if snapshot_id is None or detail.snapshot_id == snapshot_id:
            return  # nothing selected, or shown or being loaded already
        if snapshot_id in self._details:
            detail.show(self._details[snapshot_id])
        else:
            detail.show_message(f"Loading snapshot {snapshot_id[:8]}…", snapshot_id)
            self.load_detail(snapshot_id)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def load_detail(self, snapshot_id: str) -> None:
        try:
            record = self.engine.snapshot(snapshot_id)
        except EngineError as e:
            self.post_message(DetailFailed(snapshot_id, str(e)))
        else:
            self.post_message(DetailLoaded(snapshot_id, record))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        self._details[message.snapshot_id] = message.record
        if self.query_one(SnapshotTable).selected_id == message.snapshot_id:
            self.query_one(SnapshotDetail).show(message.record)

    def on_detail_failed(self, message: DetailFailed) -> None:
        if self.query_one(SnapshotTable).selected_id == message.snapshot_id:
            self.query_one(SnapshotDetail).show_message(
                f"Cannot read snapshot {message.snapshot_id[:8]}:\n{message.error}"
            )

    # ----------------------------------------------------------- connections
    @work(thread=True, exclusive=True, group="connections", exit_on_error=False)
    def load_connections(self) -> None:
        connections = {}
        for db in self.engine.config.databases:
            try:
                c = self.engine.database_connection(db["name"])
            except EngineError as e:
                connections[db["name"]] = str(e)
            else:
                connections[db["name"]] = f"{c['where']}, from {c['from']}"
        self.post_message(ConnectionsLoaded(connections))

    def on_connections_loaded(self, message: ConnectionsLoaded) -> None:
        self._connections = message.connections

    # --------------------------------------------------------------- backup
    def backup_choices(self, kind: str | None = None) -> list[SourceChoice]:
        """The sources ``b``, ``d`` and the palette offer: filesets, then databases."""
        choices = [SourceChoice("files", fs.name, ", ".join(fs.paths))
                   for fs in self.engine.config.filesets]
        choices += [SourceChoice("db", db["name"], self._connections.get(db["name"], ""))
                    for db in self.engine.config.databases]
        return [c for c in choices if kind is None or c.kind == kind]

    def action_backup(self) -> None:
        self._backup_one_of("files", "Back up which fileset?", "No [[fileset]] is configured.")

    def action_backup_db(self) -> None:
        self._backup_one_of("db", "Back up which database?", "No [[database]] is configured.")

    def _backup_one_of(self, kind: str, question: str, none_configured: str) -> None:
        choices = self.backup_choices(kind)
        if not choices:
            self.notify(none_configured, title="Nothing to back up", severity="warning",
                        markup=False)
        elif len(choices) == 1:
            self.start_backup(kind, choices[0].name)
        else:
            self.app.push_screen(SourcePicker(question, choices),
                                 lambda name: self._picked(kind, name))

    def _picked(self, kind: str, name: str | None) -> None:
        if name is not None:
            self.start_backup(kind, name)

    def start_backup(self, kind: str, name: str) -> None:
        if self._cancel is not None:
            self.notify("A backup is already running; wait for it to end.", severity="warning")
            return
        self._cancel = CancelToken()
        self.query_one(JobPanel).start(kind, name)
        self.run_backup(kind, name, self._cancel)

    @work(thread=True, exclusive=True, group="backup", exit_on_error=False)
    def run_backup(self, kind: str, name: str, cancel: CancelToken) -> None:
        backup = self.engine.backup_db if kind == "db" else self.engine.backup_files
        try:
            result = backup(name, EventRelay(self), cancel)
        except EngineError as e:
            self.post_message(BackupFailed(kind, name, str(e)))
        else:
            self.post_message(BackupFinished(name, result))

    def on_job_progress(self, message: JobProgress) -> None:
        self.query_one(JobPanel).show_event(message.event)

    def on_backup_finished(self, message: BackupFinished) -> None:
        self._cancel = None
        result = message.result
        self.query_one(JobPanel).finish(message.source, result)
        saved = f"Snapshot {result.id[:8]} of {source_label(result.kind, message.source)} saved"
        if not result.complete:
            self.notify(f"{saved}, but {len(result.errors)} file(s) could not be read.",
                        title="Backup incomplete", severity="warning", markup=False)
        elif result.warnings:
            self.notify(f"{saved}, with warnings:\n" + "\n".join(result.warnings),
                        title="Backup complete", severity="warning", markup=False)
        else:
            self.notify(f"{saved}.", title="Backup complete", markup=False)
        self.load_snapshots(select=result.id)

    def on_backup_failed(self, message: BackupFailed) -> None:
        self._cancel = None
        self.query_one(JobPanel).fail(message.kind, message.source, message.error)
        self.notify(message.error,
                    title=f"Backup of {source_label(message.kind, message.source)} failed",
                    severity="error", markup=False)

    # ------------------------------------------------------- unexpected errors
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised something other than an EngineError: report it, keep running."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        text = f"{type(error).__name__}: {error}"
        if event.worker.group == "backup":
            panel = self.query_one(JobPanel)
            self.post_message(BackupFailed(panel.kind or "files", panel.source or "?", text))
        else:
            self.notify(text, title="Unexpected error", severity="error", markup=False)
