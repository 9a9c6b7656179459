"""The job panel: a running backup's progress bar and one line of numbers, or the last outcome.

It shows engine events as they come: for a fileset, bytes and files done of the
totals the scan found and the path being read; for a database, the bytes
pg_dump has streamed of an estimate (the database's size on the server, which a
dump rarely reaches). Both show the rate since the job's first event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import ProgressBar, Static

from engine.events import Event
from engine.facade import human_bytes

if TYPE_CHECKING:  # the facade returns it; the console only reads its fields
    from engine.ops.backup import BackupResult

PATH_WIDTH = 70  # the current path is cut from the left beyond this
ESTIMATED_PHASES = ("dump",)  # phases whose bytes_total is a guess, shown as "~"


def _tail(path: str, width: int = PATH_WIDTH) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def source_label(kind: str, source: str) -> str:
    """``database shop`` or ``fileset app-data``."""
    return f"{'database' if kind == 'db' else 'fileset'} {source}"


def progress_line(event: Event, started: float) -> str:
    """Bytes, files and rate of one event, e.g. ``3.1 MiB of 20.0 MiB · 40/312 files · 9 MiB/s``;
    "" before there are any."""
    parts = []
    if event.bytes_total:
        about = "~" if event.phase in ESTIMATED_PHASES else ""
        parts.append(f"{human_bytes(event.bytes_done)} of {about}{human_bytes(event.bytes_total)}")
    if event.items_total:
        parts.append(f"{event.items_done}/{event.items_total} files")
    elapsed = event.time - started
    if event.bytes_done and elapsed > 0:
        parts.append(f"{human_bytes(event.bytes_done / elapsed)}/s")
    return " · ".join(parts)


class JobPanel(Vertical):
    """Idle, running (bar + numbers + path), done or failed; the state is a CSS class."""

    STATES = ("-idle", "-running", "-done", "-failed")

    def __init__(self, hint: str = "No backup running. Press b to back up now.", *,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.hint = hint  # the idle line
        self._job_id: str | None = None
        self._started = 0.0
        self.kind: str | None = None  # "files" or "db": the job shown
        self.source: str | None = None  # its fileset or database

    def compose(self) -> ComposeResult:
        yield Static(Content(self.hint), id="job-title")
        yield ProgressBar(total=100, show_eta=False, id="job-bar")
        yield Static("", id="job-numbers")
        yield Static("", id="job-path")

    def on_mount(self) -> None:
        self._set_state("-idle")

    @property
    def text(self) -> str:
        """What the panel shows, as plain text, one line per part."""
        parts = (self.query_one(f"#{i}", Static).visual
                 for i in ("job-title", "job-numbers", "job-path"))
        return "\n".join(v.plain if isinstance(v, Content) else str(v) for v in parts)

    @property
    def bar(self) -> ProgressBar:
        return self.query_one("#job-bar", ProgressBar)

    def _set_state(self, state: str) -> None:
        self.remove_class(*self.STATES)
        self.add_class(state)

    def _text(self, widget_id: str, text: str) -> None:
        # Content, not str: paths and engine messages are data, never markup.
        self.query_one(f"#{widget_id}", Static).update(Content(text))

    def start(self, kind: str, source: str) -> None:
        self._job_id, self.kind, self.source = None, kind, source
        self._set_state("-running")
        self._text("job-title", f"Backing up {source_label(kind, source)}…")
        self.bar.update(total=None, progress=0)
        self._text("job-numbers", "starting")
        self._text("job-path", "")

    def show_event(self, event: Event) -> None:
        if event.job_id != self._job_id:
            self._job_id, self._started = event.job_id, event.time
        fraction = event.fraction
        if event.phase == "done":
            self.bar.update(total=100, progress=100)
        elif fraction is not None:
            self.bar.update(total=100, progress=round(fraction * 100, 1))
        numbers = progress_line(event, self._started)
        self._text("job-numbers", f"{event.phase}: {numbers}" if numbers else event.phase)
        if event.phase == "backup":
            self._text("job-path", _tail(event.message))
        elif event.message:
            self._text("job-path", event.message)

    def finish(self, source: str, result: BackupResult) -> None:
        self._set_state("-done")
        self.bar.update(total=100, progress=100)
        label = source_label(result.kind, source)
        if result.kind == "db":
            status = f"{len(result.warnings)} warning(s)" if result.warnings else "complete"
            numbers = f"dump {human_bytes(result.size)}"
        else:
            status = ("complete" if result.complete
                      else f"INCOMPLETE, {len(result.errors)} error(s)")
            numbers = f"{result.files} files, {human_bytes(result.size)}"
        self._text("job-title", f"Backed up {label}: snapshot {result.id[:8]}, {status}")
        self._text("job-numbers", f"{numbers}, new data {human_bytes(result.added)} "
                                  f"in {result.duration:.1f} s")
        self._text("job-path", result.warnings[0] if result.warnings else "")

    def fail(self, kind: str, source: str, error: str) -> None:
        self._set_state("-failed")
        self._text("job-title", f"Backup of {source_label(kind, source)} failed")
        self._text("job-numbers", error)
        self._text("job-path", "")
