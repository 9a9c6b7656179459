"""The inventory: snapshots in a table, the selected one's record beside it, jobs on demand.

Two tabs over one job panel. "Snapshots": the table (a presence column per S3
replica) and the selected snapshot's record. "Replicas" (``p``; shown only when
replicas are configured): see ``backup_tui.screens.replicas``.

A job is a backup or a replication, one at a time, in the job panel. ``b``
backs up a fileset and ``d`` a database (``d`` shows only when databases are
configured); with several, a ``SourcePicker`` asks which. ``R`` replicates now
(every replica; each one fails or succeeds on its own). A backup replicates by
itself afterwards when replicas say ``replicate_after_backup``. Every engine
call runs in a thread worker and answers with a message from
``backup_tui.messages``; handlers on the UI thread update the widgets. Worker
groups: ``inventory`` (the list), ``detail`` (one record), ``connections``
(where each database connects, read once for the picker and the palette),
``job`` (the job). A newer list or detail request replaces an older one; a
result that arrives for a request no longer current is dropped.

A read-only console (the user is not an admin) shows ``b``, ``d`` and ``R``
disabled and leaves them out of the command palette: they would be refused.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from backup_tui.messages import (
    BackupFailed,
    BackupFinished,
    ConnectionsLoaded,
    DetailFailed,
    DetailLoaded,
    EventRelay,
    JobProgress,
    ReplicationFailed,
    ReplicationFinished,
    SnapshotsFailed,
    SnapshotsLoaded,
)
from backup_tui.screens.commands import JobCommands
from backup_tui.screens.replicas import ReplicasPane
from backup_tui.screens.source_picker import SourceChoice, SourcePicker
from backup_tui.widgets.job_panel import REPLICATE, JobPanel, replication_summary, source_label
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.errors import EngineError
from engine.events import CancelToken
from engine.facade import Engine

SNAPSHOTS_TAB, REPLICAS_TAB = "snapshots-tab", "replicas-tab"


class InventoryScreen(Screen):
    """Snapshots of the repository and its replicas; backups and replication on demand."""

    BINDINGS = [
        Binding("b", "backup", "Back up files", id="backup"),
        Binding("d", "backup_db", "Back up database", id="backup-db"),
        Binding("R", "replicate", "Replicate now", id="replicate"),
        Binding("p", f"show_tab('{REPLICAS_TAB}')", "Replicas", id="show-replicas"),
        Binding("p", f"show_tab('{SNAPSHOTS_TAB}')", "Snapshots", id="show-snapshots"),
        Binding("r", "refresh", "Refresh", id="refresh"),
    ]
    COMMANDS = Screen.COMMANDS | {JobCommands}
    AUTO_FOCUS = "#snapshots"

    def __init__(self, engine: Engine, read_only: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.read_only = read_only  # not an admin: look, do not change
        self._details: dict[str, dict] = {}  # snapshot id -> record (snapshots never change)
        self._cancel: CancelToken | None = None  # set while a job runs
        self._connections: dict[str, str] = {}  # database -> where it connects, once read

    @property
    def _has_databases(self) -> bool:
        return bool(self.engine.config.databases)

    def replica_names(self) -> list[str]:
        """The configured replicas, in configuration order."""
        return [r["name"] for r in self.engine.config.replicas]

    def _keys_hint(self) -> str:
        """What to press to start a job, as a sentence."""
        if self.read_only:
            return "Read-only console: backups and replication need an admin."
        return ("Press b to back up a fileset" + (", d a database" if self._has_databases else "")
                + (", R to replicate" if self.replica_names() else "") + ".")

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent(id="views", initial=SNAPSHOTS_TAB,
                           classes="" if self.replica_names() else "-single"):
            with TabPane("Snapshots", id=SNAPSHOTS_TAB), Horizontal(id="inventory"):
                yield SnapshotTable(tuple(self.replica_names()), id="snapshots")
                yield SnapshotDetail(id="detail")
            if self.replica_names():
                yield ReplicasPane(self.engine, id=REPLICAS_TAB)
        idle = "No job running" if self.replica_names() else "No backup running"
        yield JobPanel(f"{idle}. {self._keys_hint()}", id="job")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SnapshotDetail).show_message("Loading snapshots…")
        self.load_snapshots()
        if self._has_databases:
            self.load_connections()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Keys that do nothing here are not offered: d without a [[database]], R and p
        # without a [[replica]]; p goes to the tab that is not showing. A read-only console
        # shows b, d and R disabled.
        mutating = None if self.read_only else True
        if action == "backup":
            return mutating
        if action == "backup_db":
            return self._has_databases and mutating
        if action == "replicate":
            return bool(self.replica_names()) and mutating
        if action == "show_tab":
            return bool(self.replica_names()) and parameters[0] != self._tab
        return True

    @property
    def _tab(self) -> str:
        """The tab showing (the footer may ask before the tabs exist, or after)."""
        views = self.query("#views").results(TabbedContent)
        return next((v.active for v in views), SNAPSHOTS_TAB)

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#views", TabbedContent).active = tab

    @on(TabbedContent.TabActivated, "#views")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == REPLICAS_TAB:
            self.query_one(ReplicasPane).load(check=True)
            self.query_one("#replica-table").focus()
        else:
            self.query_one(SnapshotTable).focus()
        self.refresh_bindings()

    def on_unmount(self) -> None:
        if self._cancel is not None:  # let a running job stop instead of outliving the app
            self._cancel.cancel()

    # ------------------------------------------------------------ inventory
    def action_refresh(self) -> None:
        if self._tab == REPLICAS_TAB:
            self.query_one(ReplicasPane).load(check=True)
        else:
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
                f"No snapshots yet. {self._keys_hint()}"
            )
        else:  # again: presence in the replicas and the verified time may have changed
            self._show_detail(table.selected_id, again=True)

    def on_snapshots_failed(self, message: SnapshotsFailed) -> None:
        self.query_one(SnapshotDetail).show_message(f"Cannot read the repository:\n{message.error}")
        self.notify(message.error, title="Cannot list snapshots", severity="error")

    # --------------------------------------------------------------- detail
    @on(DataTable.RowHighlighted, "#snapshots")
    def _snapshot_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.row_key.value)

    def _show_detail(self, snapshot_id: str | None, again: bool = False) -> None:
        """Show a snapshot's record; ``again``: even if it is showing (its row changed)."""
        detail = self.query_one(SnapshotDetail)
        if snapshot_id is None or (detail.snapshot_id == snapshot_id and not again):
            return  # nothing selected, or shown or being loaded already
        if snapshot_id in self._details:
            detail.show(self._details[snapshot_id], self._info(snapshot_id))
        elif detail.snapshot_id == snapshot_id:
            return  # being loaded already
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

    def _info(self, snapshot_id: str):
        return self.query_one(SnapshotTable).infos.get(snapshot_id)

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        self._details[message.snapshot_id] = message.record
        if self.query_one(SnapshotTable).selected_id == message.snapshot_id:
            self.query_one(SnapshotDetail).show(message.record, self._info(message.snapshot_id))

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

    def _job_running(self) -> bool:
        if self._cancel is not None:
            what = "A replication" if self.query_one(JobPanel).kind == REPLICATE else "A backup"
            self.notify(f"{what} is already running; wait for it to end.", severity="warning")
        return self._cancel is not None

    def start_backup(self, kind: str, name: str) -> None:
        if self._job_running():
            return
        self._cancel = CancelToken()
        self.query_one(JobPanel).start(kind, name)
        self.run_backup(kind, name, self._cancel)

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
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
        self._replicated(result.replication)
        self.load_snapshots(select=result.id)

    def on_backup_failed(self, message: BackupFailed) -> None:
        self._cancel = None
        self.query_one(JobPanel).fail(message.kind, message.source, message.error)
        self.notify(message.error,
                    title=f"Backup of {source_label(message.kind, message.source)} failed",
                    severity="error", markup=False)

    # ------------------------------------------------------------ replication
    def action_replicate(self) -> None:
        self.start_replication()

    def start_replication(self) -> None:
        """Replicate now: every configured replica, in the job panel."""
        names = self.replica_names()
        if not names:
            self.notify("No [[replica]] is configured.", title="Nothing to replicate",
                        severity="warning", markup=False)
            return
        if self._job_running():
            return
        self._cancel = CancelToken()
        self.query_one(JobPanel).start(REPLICATE, ", ".join(names))
        self.run_replication(self._cancel)

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
    def run_replication(self, cancel: CancelToken) -> None:
        try:
            results = self.engine.replicate(on_event=EventRelay(self), cancel=cancel)
        except EngineError as e:
            self.post_message(ReplicationFailed(str(e)))
        else:
            self.post_message(ReplicationFinished(results))

    def on_replication_finished(self, message: ReplicationFinished) -> None:
        self._cancel = None
        self.query_one(JobPanel).finish_replication(message.results)
        if all(r.ok for r in message.results):  # else the panel says which did, and
            self.notify(replication_summary(message.results) + ".",  # _replicated which not
                        title="Replication complete", markup=False)
        self._replicated(message.results)
        self.load_snapshots(self.query_one(SnapshotTable).selected_id)

    def on_replication_failed(self, message: ReplicationFailed) -> None:
        self._cancel = None
        self.query_one(JobPanel).fail(REPLICATE, "", message.error)
        self.notify(message.error, title="Replication failed", severity="error", markup=False)

    def _replicated(self, results: list) -> None:
        """After a replication (its own or a backup's): name each replica that failed, and
        show the replicas' stored figures again."""
        for r in results:
            if not r.ok:
                self.notify(r.error or "failed", title=f"Replica {r.replica} failed",
                            severity="error", markup=False, timeout=15)
        if results and self.replica_names():
            self.query_one(ReplicasPane).load(check=False)

    # ------------------------------------------------------- unexpected errors
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised something other than an EngineError: report it, keep running."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        text = f"{type(error).__name__}: {error}"
        panel = self.query_one(JobPanel)
        if event.worker.group == "job" and panel.kind == REPLICATE:
            self.post_message(ReplicationFailed(text))
        elif event.worker.group == "job":
            self.post_message(BackupFailed(panel.kind or "files", panel.source or "?", text))
        else:
            self.notify(text, title="Unexpected error", severity="error", markup=False)
