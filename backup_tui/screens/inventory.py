"""The inventory: snapshots in a table, the selected one's record beside it, jobs on demand.

Tabs over one job panel. "Snapshots": the table (a presence column per S3
replica, or one tick each when narrow) and the selected snapshot's record,
beside the table from 100 columns and folded below it under (``-narrow``,
app.tcss). "Replicas" (``p``; shown only when
replicas are configured): see ``backup_tui.screens.replicas``. "Sources"
(``o``): each source's newest backup, recovery point, WAL in the replicas and
last restore drill; see ``backup_tui.screens.sources``. ``p`` and ``o`` go back
to the snapshots from their own tab. ``/`` filters the table of the tab showing
(``backup_tui.widgets.filter_bar``), each tab its own; Escape clears a filter in
effect before it goes back.

A job is a backup or a replication, one at a time, in the job panel. ``b``
backs up a source: the engine lists them (``Engine.sources``: fileset,
database, whatever kinds it has), and with more than one a ``SourcePicker``
asks which. ``R`` replicates now (every replica; each one fails or succeeds on
its own). A backup replicates by itself afterwards when replicas say
``replicate_after_backup``. Every engine call goes through
``EngineCaller.call_engine`` (a thread worker, a message back, one error path);
handlers on the UI thread update the widgets. Worker groups: ``inventory`` (the
list), ``detail`` (one record), ``sources`` (read at mount: a database's
description resolves where it connects), ``job`` (the job). A newer list or
detail request replaces an older one and the older one's answer is dropped.
The replica names are read when the screen is built: they shape it (a column
each, the tab), and the engine answers them from its configuration.

``v`` verifies the snapshot under the cursor (``V``: reading all its data) as a
job in the panel, which ends with ok or the problems found; the palette verifies
it or every snapshot, either way (``JobCommands``). Verify stays available in a
read-only console: it reads the repository and changes nothing in it; the engine
runs it for anyone and only skips its catalog bookkeeping (the verified time)
when the catalog cannot be written (``Engine.verify``).

A read-only console (the user is not an admin) shows ``b`` and ``R`` disabled
and leaves them out of the command palette: they would be refused.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Header, TabbedContent, TabPane

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import (
    BackupFailed,
    BackupFinished,
    DetailFailed,
    DetailLoaded,
    EventRelay,
    JobProgress,
    ReplicationFailed,
    ReplicationFinished,
    RestoreChoices,
    RestoreFormLoaded,
    SnapshotsFailed,
    SnapshotsLoaded,
    SourcesLoaded,
    VerifyFailed,
    VerifyFinished,
)
from backup_tui.screens.commands import JobCommands, RecoveryCommands
from backup_tui.screens.help import ConsoleFooter
from backup_tui.screens.pitr_wizard import PitrWizard
from backup_tui.screens.replicas import ReplicasPane
from backup_tui.screens.restore_wizard import RestoreWizard
from backup_tui.screens.source_picker import SourcePicker
from backup_tui.screens.sources import SourcesPane
from backup_tui.widgets.filter_bar import FilterBar
from backup_tui.widgets.job_panel import (
    BACKUP,
    REPLICATE,
    VERIFY,
    JobPanel,
    replication_summary,
)
from backup_tui.widgets.snapshot_detail import SnapshotDetail
from backup_tui.widgets.snapshot_table import SnapshotTable
from engine.events import CancelToken
from engine.facade import Engine

if TYPE_CHECKING:
    from engine.sources.base import SourceInfo

SNAPSHOTS_TAB, REPLICAS_TAB, SOURCES_TAB = "snapshots-tab", "replicas-tab", "sources-tab"
NO_MATCH = "No snapshot matches the filter: Esc clears it, / changes it."
FILTERS = {SNAPSHOTS_TAB: "#snapshot-filter", REPLICAS_TAB: "#replica-filter",
           SOURCES_TAB: "#source-filter"}  # the tab -> its filter bar


class InventoryScreen(EngineCaller, Screen):
    """Snapshots of the repository and its replicas; backups and replication on demand."""

    BINDINGS = [
        Binding("enter", "restore", "Restore", id="restore"),
        Binding("b", "backup", "Back up", id="backup"),
        Binding("R", "replicate", "Replicate now", id="replicate"),
        Binding("p", f"show_tab('{REPLICAS_TAB}')", "Replicas", id="show-replicas"),
        Binding("p", f"show_tab('{SNAPSHOTS_TAB}')", "Snapshots", id="show-snapshots"),
        Binding("o", f"sources_tab('{SOURCES_TAB}')", "Sources", id="show-sources"),
        Binding("o", f"sources_tab('{SNAPSHOTS_TAB}')", "Snapshots", id="sources-back"),
        Binding("r", "refresh", "Refresh", id="refresh"),
        Binding("v", "verify", "Verify", id="verify"),
        Binding("V", "verify(True)", "Verify, reading all data", show=False, id="verify-data"),
        Binding("slash", "filter", "Filter", show=False, id="filter"),
        Binding("escape", "clear_filter", "Clear the filter", show=False, id="clear-filter"),
        Binding("escape", "back", "Back to the snapshots", show=False, id="back"),
        Binding("t", "pitr", "Point in time", show=False, id="pitr"),
    ]
    COMMANDS = Screen.COMMANDS | {JobCommands, RecoveryCommands}
    AUTO_FOCUS = "#snapshots"
    # -narrow: the detail pane folds below the table (app.tcss); the table's columns
    # follow its own width (backup_tui/widgets/snapshot_table.py).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self, engine: Engine, read_only: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.read_only = read_only  # not an admin: look, do not change
        self.replicas = engine.replica_names()  # they shape the screen: see the docstring
        self.sources: list[SourceInfo] | None = None  # once read
        self._details: dict[str, dict] = {}  # snapshot id -> record (snapshots never change)
        self._cancel: CancelToken | None = None  # set while a job runs

    def replica_names(self) -> list[str]:
        """The configured replicas, in configuration order."""
        return self.replicas

    def _keys_hint(self) -> str:
        """What to press to start a job, as a sentence."""
        if self.read_only:
            return "Read-only console: backups and replication need an admin."
        return "Press b to back up" + (", R to replicate" if self.replicas else "") + "."

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent(id="views", initial=SNAPSHOTS_TAB):
            with TabPane("Snapshots", id=SNAPSHOTS_TAB):
                yield FilterBar("#snapshots", id="snapshot-filter")
                with Horizontal(id="inventory"):
                    yield SnapshotTable(tuple(self.replicas), id="snapshots")
                    yield SnapshotDetail("Loading snapshots…", id="detail")
            if self.replicas:
                yield ReplicasPane(self.engine, id=REPLICAS_TAB)
            yield SourcesPane(self.engine, id=SOURCES_TAB)
        idle = "No job running" if self.replicas else "No backup running"
        yield JobPanel(f"{idle}.", self._keys_hint(), id="job")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.load_snapshots()
        self.load_sources()
        self.load_restore_nouns()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Keys that do nothing here are not offered: b once no source turned out to be
        # configured, R and p without a [[replica]]. p goes to the replicas, or from them
        # back to the snapshots; o likewise to the sources. A read-only console shows b
        # and R disabled.
        mutating = None if self.read_only else True
        if action == "restore":  # on the snapshots tab, with a snapshot under the cursor
            return self._tab == SNAPSHOTS_TAB and mutating
        if action == "backup":
            return self.sources != [] and mutating
        if action == "replicate":
            return bool(self.replicas) and mutating
        if action == "pitr":
            return mutating
        if action == "verify":  # not mutating: a read-only console verifies too
            return self._tab == SNAPSHOTS_TAB
        if action == "show_tab":
            back = parameters[0] == SNAPSHOTS_TAB
            return bool(self.replicas) and (self._tab == REPLICAS_TAB) == back
        if action == "sources_tab":
            return (self._tab == SOURCES_TAB) == (parameters[0] == SNAPSHOTS_TAB)
        if action == "back":  # Escape goes back: from another tab to the snapshots
            return self._tab != SNAPSHOTS_TAB
        if action == "clear_filter":  # Escape clears a filter in effect, then goes back
            bars = self.query(FILTERS[self._tab]).results(FilterBar)
            return any(bool(bar.table.filter) for bar in bars)
        return True

    @property
    def _tab(self) -> str:
        """The tab showing (the footer may ask before the tabs exist, or after)."""
        views = self.query("#views").results(TabbedContent)
        return next((v.active for v in views), SNAPSHOTS_TAB)

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#views", TabbedContent).active = tab

    def action_sources_tab(self, tab: str) -> None:
        self.action_show_tab(tab)

    def action_back(self) -> None:
        self.action_show_tab(SNAPSHOTS_TAB)

    # --------------------------------------------------------------- filter
    # / (backup_tui/widgets/filter_bar.py) filters the table of the tab showing; each
    # tab keeps its own filter, through reloads.
    def action_filter(self) -> None:
        self.query_one(FILTERS[self._tab], FilterBar).open()

    def action_clear_filter(self) -> None:
        self.query_one(FILTERS[self._tab], FilterBar).action_clear_filter()

    @on(FilterBar.Applied)
    def _filtered(self, event: FilterBar.Applied) -> None:
        self.refresh_bindings()
        if event.bar.id != "snapshot-filter":
            return  # the tab's pane shows its highlighted row itself
        table = self.query_one(SnapshotTable)
        if table.row_count:
            self._show_detail(table.selected_id)
        elif table.infos:
            self.query_one(SnapshotDetail).show_message(NO_MATCH)

    @on(TabbedContent.TabActivated, "#views")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        sources = self.query_one(SourcesPane)
        sources.showing(event.pane.id == SOURCES_TAB)
        if event.pane.id == REPLICAS_TAB:
            self.query_one(ReplicasPane).load(check=True)
            self.query_one("#replica-table").focus()
        elif event.pane.id == SOURCES_TAB:
            sources.table.focus()
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
        elif self._tab == SOURCES_TAB:
            self.query_one(SourcesPane).load()
        else:
            self.load_snapshots(self.query_one(SnapshotTable).selected_id)

    def load_snapshots(self, select: str | None = None) -> None:
        """Read the list again; then put the cursor on ``select`` (a snapshot id) if given."""
        self.call_engine(lambda: SnapshotsLoaded(self.engine.snapshots(), select),
                         group="inventory", failed=SnapshotsFailed,
                         alert="Cannot list snapshots")

    def on_snapshots_loaded(self, message: SnapshotsLoaded) -> None:
        table = self.query_one(SnapshotTable)
        table.show(message.snapshots, message.select)
        if not table.infos:
            self.query_one(SnapshotDetail).show_message(
                f"No snapshots yet. {self._keys_hint()}"
            )
        elif not table.row_count:
            self.query_one(SnapshotDetail).show_message(NO_MATCH)
        else:  # again: presence in the replicas and the verified time may have changed
            self._show_detail(table.selected_id, again=True)

    def on_snapshots_failed(self, message: SnapshotsFailed) -> None:
        self.query_one(SnapshotDetail).show_message(f"Cannot read the repository:\n{message.error}")

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
            self.call_engine(lambda: DetailLoaded(snapshot_id, self.engine.snapshot(snapshot_id)),
                             group="detail", failed=partial(DetailFailed, snapshot_id))

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

    # ------------------------------------------------------- point in time
    def action_pitr(self) -> None:
        self.open_pitr()

    def open_pitr(self) -> None:
        """The point-in-time wizard (backup_tui/screens/pitr_wizard.py)."""
        self.app.push_screen(PitrWizard(self.engine), self._recovered)

    def _recovered(self, result: dict | None) -> None:
        if result and result.get("port"):
            self.notify(f"{result['source']} recovered into {result['pgdata']}: the server "
                        f"runs on port {result['port']}.", title="Point-in-time recovery",
                        markup=False, timeout=15)
        elif result and result.get("target_db"):
            self.notify(f"Restored into database {result['target_db']}.",
                        title="Point-in-time recovery", markup=False)

    # --------------------------------------------------------------- backup
    def load_sources(self, pick: bool = False) -> None:
        """Ask the engine which sources there are; ``pick``: then ask which to back up."""
        self.call_engine(lambda: SourcesLoaded(self.engine.sources(), pick), group="sources",
                         alert="Cannot list the sources")

    def on_sources_loaded(self, message: SourcesLoaded) -> None:
        self.sources = message.sources
        self.refresh_bindings()
        if message.pick:
            self._pick_source()

    def backup_choices(self) -> list[SourceInfo]:
        """The sources ``b`` and the palette offer (none until they are read)."""
        return self.sources or []

    def action_backup(self) -> None:
        if self._job_running():  # say so now, not after a source was picked
            return
        if self.sources is None:  # not read yet (or reading failed): read, then ask
            self.load_sources(pick=True)
        else:
            self._pick_source()

    def _pick_source(self) -> None:
        sources = self.backup_choices()
        if not sources:
            self.notify("No source is configured.", title="Nothing to back up",
                        severity="warning", markup=False)
        elif len(sources) == 1:
            self.start_backup(sources[0])
        else:
            self.app.push_screen(SourcePicker("Back up which source?", sources), self._picked)

    def _picked(self, source: SourceInfo | None) -> None:
        if source is not None:
            self.start_backup(source)

    def _job_running(self) -> bool:
        if self._cancel is not None:
            what = {REPLICATE: "A replication", VERIFY: "A verify"}.get(
                self.query_one(JobPanel).kind, "A backup")
            self.notify(f"{what} is already running; wait for it to end.", severity="warning")
        return self._cancel is not None

    def start_backup(self, source: SourceInfo) -> None:
        """Back up ``source`` in the job panel (then replicate, when replicas say so)."""
        if self._job_running():
            return
        self._cancel = cancel = CancelToken()
        self.query_one(JobPanel).start(BACKUP, source.title)
        relay = EventRelay(self, cancel=cancel, what=f"the backup of {source.title}")
        self.call_engine(
            lambda: BackupFinished(self.engine.backup(source.kind, source.name, relay, cancel)),
            group="job", failed=partial(BackupFailed, source),
            alert=f"Backup of {source.title} failed", job=True)

    def on_job_progress(self, message: JobProgress) -> None:
        self.query_one(JobPanel).show_event(message.event)

    def on_backup_finished(self, message: BackupFinished) -> None:
        self._cancel = None
        result = message.result
        self.query_one(JobPanel).finish(result)
        saved = f"Snapshot {result.id[:8]} of {result.label} {result.source} saved"
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
        if self._tab == SOURCES_TAB:  # its newest backup and recovery point moved
            self.query_one(SourcesPane).load()

    def on_backup_failed(self, message: BackupFailed) -> None:
        self._cancel = None  # the notification came from the one error path
        self.query_one(JobPanel).fail(message.error)

    # ------------------------------------------------------------ replication
    def action_replicate(self) -> None:
        self.start_replication()

    def start_replication(self) -> None:
        """Replicate now: every configured replica, in the job panel."""
        if not self.replicas:
            self.notify("No [[replica]] is configured.", title="Nothing to replicate",
                        severity="warning", markup=False)
            return
        if self._job_running():
            return
        self._cancel = cancel = CancelToken()
        self.query_one(JobPanel).start(REPLICATE, ", ".join(self.replicas))
        relay = EventRelay(self, cancel=cancel, what="the replication to "
                           + ", ".join(self.replicas))
        self.call_engine(
            lambda: ReplicationFinished(self.engine.replicate(on_event=relay, cancel=cancel)),
            group="job", failed=ReplicationFailed, alert="Replication failed", job=True)

    def on_replication_finished(self, message: ReplicationFinished) -> None:
        self._cancel = None
        self.query_one(JobPanel).finish_replication(message.results)
        if all(r.ok for r in message.results):  # else the panel says which did, and
            self.notify(replication_summary(message.results) + ".",  # _replicated which not
                        title="Replication complete", markup=False)
        self._replicated(message.results)
        self.load_snapshots(self.query_one(SnapshotTable).selected_id)

    def on_replication_failed(self, message: ReplicationFailed) -> None:
        self._cancel = None  # the notification came from the one error path
        self.query_one(JobPanel).fail(message.error)

    # ---------------------------------------------------------------- verify
    def action_verify(self, read_data: bool = False) -> None:
        snapshot_id = self.query_one(SnapshotTable).selected_id
        if snapshot_id is None:
            self.notify("No snapshot to verify yet.", severity="warning", markup=False)
            return
        self.start_verify(snapshot_id, read_data)

    def selected_snapshot(self) -> str | None:
        """The snapshot under the cursor (the palette's "Verify snapshot …")."""
        tables = self.query("#snapshots").results(SnapshotTable)
        return next((t.selected_id for t in tables), None)

    def start_verify(self, snapshot_id: str | None, read_data: bool = False) -> None:
        """Verify one snapshot, or every one (None), in the job panel; ``read_data``: read
        and authenticate every blob, not only the structure and the packs' sizes."""
        if self._job_running():
            return
        what = f"snapshot {snapshot_id[:8]}" if snapshot_id else "every snapshot"
        self._cancel = cancel = CancelToken()
        self.query_one(JobPanel).start(VERIFY, what)
        relay = EventRelay(self, cancel=cancel, what=f"the verify of {what}")
        refs = [snapshot_id] if snapshot_id else None
        self.call_engine(
            lambda: VerifyFinished(self.engine.verify(refs, read_data, relay, cancel), what),
            group="job", failed=VerifyFailed, alert=f"Verify of {what} failed", job=True)

    def on_verify_finished(self, message: VerifyFinished) -> None:
        self._cancel = None
        report = message.report
        self.query_one(JobPanel).finish_verify(report)
        if report.ok:
            self.notify(f"{message.what.capitalize()}: ok.", title="Verified", markup=False)
        else:
            self.notify("\n".join(p.message for p in report.problems[:5]),
                        title=f"Verify of {message.what}: {len(report.problems)} problem(s)",
                        severity="error", markup=False, timeout=20)
        self.load_snapshots(self.query_one(SnapshotTable).selected_id)  # verified times

    def on_verify_failed(self, message: VerifyFailed) -> None:
        self._cancel = None  # the notification came from the one error path
        self.query_one(JobPanel).fail(message.error)

    def _replicated(self, results: list) -> None:
        """After a replication (its own or a backup's): name each replica that failed, and
        show the replicas' stored figures again."""
        for r in results:
            if not r.ok:
                self.notify(r.error or "failed", title=f"Replica {r.replica} failed",
                            severity="error", markup=False, timeout=15)
        if results and self.replicas:
            self.query_one(ReplicasPane).load(check=False)

    # --------------------------------------------------------------- restore
    # Enter on a snapshot, or "Restore <noun>…" in the palette: the restore wizard
    # (backup_tui/screens/restore_wizard.py) for that snapshot, what it asks for as the
    # engine describes it (Engine.restore_form).
    @on(DataTable.RowSelected, "#snapshots")
    def _snapshot_chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if self.check_action("restore", ()):
            self.action_restore()
        else:
            self.notify("This console is read-only: restoring needs an admin.",
                        severity="warning", markup=False)

    def action_restore(self) -> None:
        snapshot_id = self.query_one(SnapshotTable).selected_id
        if snapshot_id is None:
            self.notify("No snapshot to restore yet.", severity="warning", markup=False)
            return
        self.open_restore(snapshot_id)

    def open_restore(self, snapshot_id: str) -> None:
        """The restore wizard for one snapshot (its record and form read in a thread)."""
        def read() -> RestoreFormLoaded:
            snap = self._details.get(snapshot_id) or self.engine.snapshot(snapshot_id)
            return RestoreFormLoaded(snap, self.engine.restore_form(snap))

        self.call_engine(read, group="restore-form", alert="Cannot restore this snapshot")

    def on_restore_form_loaded(self, message: RestoreFormLoaded) -> None:
        form: Any = message.form
        if not form.into:
            self.notify(form.instead, title="Restored another way", severity="warning",
                        markup=False, timeout=15)
            return
        RestoreWizard(self.app, self.engine, message.snap, form, self._restore_ended).start()

    def _restore_ended(self) -> None:
        self.load_snapshots(self.query_one(SnapshotTable).selected_id)

    def load_restore_nouns(self) -> None:
        """What "Restore <noun>…" the palette offers: one per noun of the configured
        sources' forms (read in a thread)."""
        def read() -> RestoreChoices:
            out: dict[str, list] = {}
            for source in self.engine.sources():
                form = self.engine.restore_form({"id": "", "kind": source.kind,
                                                 "source": source.name})
                if form.into:
                    out.setdefault(form.noun or source.label, []).append(source)
            return RestoreChoices(list(out.items()))

        self.call_engine(read, group="restore-nouns")

    def on_restore_choices(self, message: RestoreChoices) -> None:
        self._restore_sources = dict(message.choices)

    def restore_nouns(self) -> list[str]:
        """The palette's "Restore <noun>…" entries (none before they are read)."""
        return [] if self.read_only else list(getattr(self, "_restore_sources", {}))

    def restore_noun(self, noun: str) -> None:
        """From the palette: pick the source (when several), then its newest snapshot."""
        sources = getattr(self, "_restore_sources", {}).get(noun, [])
        if len(sources) == 1:
            self._restore_newest(sources[0])
        elif sources:
            self.app.push_screen(SourcePicker(f"Restore which {noun}?", sources),
                                 lambda s: s is not None and self._restore_newest(s))

    def _restore_newest(self, source: SourceInfo) -> None:
        infos = [i for i in self.query_one(SnapshotTable).infos.values()
                 if (i.kind, i.source) == (source.kind, source.name)]
        if not infos:
            self.notify(f"No snapshot of {source.title} yet.", severity="warning",
                        markup=False)
            return
        self.open_restore(max(infos, key=lambda i: i.time).id)
