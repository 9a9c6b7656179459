"""The inventory: snapshots in a table, the selected one's record beside it, backups on demand.

Every engine call runs in a thread worker and answers with a message from
``backup_tui.messages``; handlers on the UI thread update the widgets. Worker
groups: ``inventory`` (the list), ``detail`` (one record), ``backup`` (one job
at a time). A newer list or detail request replaces an older one; a result that
arrives for a request no longer current is dropped.
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
    DetailFailed,
    DetailLoaded,
    EventRelay,
    JobProgress,
    SnapshotsFailed,
    SnapshotsLoaded,
)
from backup_tui.screens.commands import BackupCommands
from backup_tui.screens.fileset_picker import FilesetPicker
from backup_tui.widgets.job_panel import JobPanel
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.config import FilesetConfig
from engine.errors import EngineError
from engine.events import CancelToken
from engine.facade import Engine


class InventoryScreen(Screen):
    """Snapshots of the repository; ``b`` backs up a fileset, ``r`` reloads."""

    BINDINGS = [
        Binding("b", "backup", "Back up now", id="backup"),
        Binding("r", "refresh", "Refresh", id="refresh"),
    ]
    COMMANDS = Screen.COMMANDS | {BackupCommands}

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self._details: dict[str, dict] = {}  # snapshot id -> record (snapshots never change)
        self._cancel: CancelToken | None = None  # set while a backup runs

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="inventory"):
            yield SnapshotTable(id="snapshots")
            yield SnapshotDetail(id="detail")
        yield JobPanel(id="job")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SnapshotDetail).show_message("Loading snapshots…")
        self.load_snapshots()

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
                "No snapshots yet. Press b to back up a fileset."
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

    # --------------------------------------------------------------- backup
    def backup_filesets(self) -> tuple[FilesetConfig, ...]:
        return self.engine.config.filesets

    def action_backup(self) -> None:
        filesets = self.backup_filesets()
        if not filesets:
            self.notify("No [[fileset]] is configured.", title="Nothing to back up",
                        severity="warning", markup=False)
        elif len(filesets) == 1:
            self.start_backup(filesets[0].name)
        else:
            self.app.push_screen(FilesetPicker(filesets), self._picked)

    def _picked(self, name: str | None) -> None:
        if name is not None:
            self.start_backup(name)

    def start_backup(self, name: str) -> None:
        if self._cancel is not None:
            self.notify("A backup is already running; wait for it to end.", severity="warning")
            return
        self._cancel = CancelToken()
        self.query_one(JobPanel).start(name)
        self.run_backup(name, self._cancel)

    @work(thread=True, exclusive=True, group="backup", exit_on_error=False)
    def run_backup(self, name: str, cancel: CancelToken) -> None:
        try:
            result = self.engine.backup_files(name, EventRelay(self), cancel)
        except EngineError as e:
            self.post_message(BackupFailed(name, str(e)))
        else:
            self.post_message(BackupFinished(name, result))

    def on_job_progress(self, message: JobProgress) -> None:
        self.query_one(JobPanel).show_event(message.event)

    def on_backup_finished(self, message: BackupFinished) -> None:
        self._cancel = None
        result = message.result
        self.query_one(JobPanel).finish(message.source, result)
        if result.complete:
            self.notify(f"Snapshot {result.id[:8]} of {message.source} saved.",
                        title="Backup complete", markup=False)
        else:
            self.notify(f"Snapshot {result.id[:8]} of {message.source} saved, but "
                        f"{len(result.errors)} file(s) could not be read.",
                        title="Backup incomplete", severity="warning", markup=False)
        self.load_snapshots(select=result.id)

    def on_backup_failed(self, message: BackupFailed) -> None:
        self._cancel = None
        self.query_one(JobPanel).fail(message.source, message.error)
        self.notify(message.error, title=f"Backup of {message.source} failed",
                    severity="error", markup=False)

    # ------------------------------------------------------- unexpected errors
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised something other than an EngineError: report it, keep running."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        text = f"{type(error).__name__}: {error}"
        if event.worker.group == "backup":
            self.post_message(BackupFailed(self.query_one(JobPanel).source or "?", text))
        else:
            self.notify(text, title="Unexpected error", severity="error", markup=False)
