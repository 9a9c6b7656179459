"""The job panel: a running backup's progress bar and one line of numbers, or the last outcome.

It shows engine events as they come: bytes and files done of the totals the scan
found, the rate since the job's first event, and the path being read.
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


def _tail(path: str, width: int = PATH_WIDTH) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def progress_line(event: Event, started: float) -> str:
    """Bytes, files and rate of one event, e.g. ``3.1 MiB of 20.0 MiB · 40/312 files · 9 MiB/s``."""
    parts = []
    if event.bytes_total:
        parts.append(f"{human_bytes(event.bytes_done)} of {human_bytes(event.bytes_total)}")
    if event.items_total:
        parts.append(f"{event.items_done}/{event.items_total} files")
    elapsed = event.time - started
    if event.bytes_done and elapsed > 0:
        parts.append(f"{human_bytes(event.bytes_done / elapsed)}/s")
    return " · ".join(parts) or event.phase


class JobPanel(Vertical):
    """Idle, running (bar + numbers + path), done or failed; the state is a CSS class."""

    STATES = ("-idle", "-running", "-done", "-failed")

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._job_id: str | None = None
        self._started = 0.0
        self.source: str | None = None  # the fileset of the job shown

    def compose(self) -> ComposeResult:
        yield Static("No backup running. Press b to back up now.", id="job-title")
        yield ProgressBar(total=100, show_eta=False, id="job-bar")
        yield Static("", id="job-numbers")
        yield Static("", id="job-path")

    def on_mount(self) -> None:
        self._set_state("-idle")

    @property
    def bar(self) -> ProgressBar:
        return self.query_one("#job-bar", ProgressBar)

    def _set_state(self, state: str) -> None:
        self.remove_class(*self.STATES)
        self.add_class(state)

    def _text(self, widget_id: str, text: str) -> None:
        # Content, not str: paths and engine messages are data, never markup.
        self.query_one(f"#{widget_id}", Static).update(Content(text))

    def start(self, source: str) -> None:
        self._job_id, self.source = None, source
        self._set_state("-running")
        self._text("job-title", f"Backing up {source}…")
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
        self._text("job-numbers", f"{event.phase}: {progress_line(event, self._started)}")
        if event.phase == "backup":
            self._text("job-path", _tail(event.message))
        elif event.message:
            self._text("job-path", event.message)

    def finish(self, source: str, result: BackupResult) -> None:
        self._set_state("-done")
        self.bar.update(total=100, progress=100)
        status = "complete" if result.complete else f"INCOMPLETE, {len(result.errors)} error(s)"
        self._text("job-title", f"Backed up {source}: snapshot {result.id[:8]}, {status}")
        self._text(
            "job-numbers",
            f"{result.files} files, {human_bytes(result.size)}, "
            f"new data {human_bytes(result.added)} in {result.duration:.1f} s",
        )
        self._text("job-path", "")

    def fail(self, source: str, error: str) -> None:
        self._set_state("-failed")
        self._text("job-title", f"Backup of {source} failed")
        self._text("job-numbers", error)
        self._text("job-path", "")
