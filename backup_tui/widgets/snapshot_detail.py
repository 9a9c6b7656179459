"""The detail pane: one snapshot's full record (id, paths, stats, errors) as key/value lines."""

from __future__ import annotations

from datetime import datetime

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from engine.facade import human_bytes

MAX_ERRORS = 50  # the pane lists this many; the count says how many there are

_BYTES = ("size", "added", "added_raw", "bytes_read")
_STAT_LABELS = {
    "files": "files",
    "dirs": "directories",
    "size": "size",
    "added": "new data",
    "added_raw": "new (raw)",
    "unchanged_files": "unchanged",
    "bytes_read": "read",
    "new_blobs": "new blobs",
    "duration": "duration",
}
KEY_WIDTH = 13


def _line(key: str, value: object) -> Content:
    return Content.assemble((f"{key:<{KEY_WIDTH}}", "$foreground-muted"), str(value))


def _stat(key: str, value: object) -> str:
    if key in _BYTES and isinstance(value, int | float):
        return human_bytes(value)
    if key == "duration" and isinstance(value, int | float):
        return f"{value:.2f} s"
    return str(value)


def _time(value: object) -> str:
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def describe(record: dict) -> Content:
    """The lines of the pane for a full snapshot record (as ``Engine.snapshot`` returns it)."""
    errors = record.get("errors") or []
    total_errors = int(record.get("errors_total", len(errors)))
    complete = not record.get("incomplete", False)
    lines: list[Content] = [
        Content.styled(f"Snapshot {str(record.get('id', ''))[:8]}", "bold"),
        _line("id", record.get("id", "")),
        _line("time", _time(record.get("time", ""))),
        _line("kind", record.get("kind", "")),
        _line("source", record.get("source", "")),
        _line("host", record.get("host", "")),
        _line("parent", (record.get("parent") or "none")[:8]),
        _line("status", "complete" if complete else f"incomplete ({total_errors} errors)"),
        Content(""),
        Content.styled("Paths", "bold"),
    ]
    lines += [Content(f"  {p}") for p in record.get("paths", [])] or [Content("  none")]
    lines += [Content(""), Content.styled("Stats", "bold")]
    stats = record.get("stats", {})
    keys = [k for k in _STAT_LABELS if k in stats]
    keys += sorted(k for k in stats if k not in _STAT_LABELS)
    lines += [_line(_STAT_LABELS.get(k, k), _stat(k, stats[k])) for k in keys]
    lines += [Content(""), Content.styled("Errors", "bold")]
    if not errors:
        lines.append(Content("  none"))
    for err in errors[:MAX_ERRORS]:
        lines.append(Content.assemble(("  " + str(err.get("path", "?")), "$text-warning")))
        lines.append(Content(f"    {err.get('error', '')}"))
    if total_errors > MAX_ERRORS:
        lines.append(Content(f"  ... and {total_errors - MAX_ERRORS} more"))
    if record.get("program"):
        lines += [Content(""), _line("written by", record["program"])]
    return Content("\n").join(lines)


class SnapshotDetail(VerticalScroll):
    """Shows one snapshot record, or a short message when there is none."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.snapshot_id: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="detail-body")

    @property
    def text(self) -> str:
        """What the pane shows, as plain text."""
        visual = self.query_one("#detail-body", Static).visual
        return visual.plain if isinstance(visual, Content) else str(visual)

    def show(self, record: dict) -> None:
        self.snapshot_id = record.get("id")
        self.query_one("#detail-body", Static).update(describe(record))
        self.scroll_home(animate=False)

    def show_message(self, message: str, snapshot_id: str | None = None) -> None:
        self.snapshot_id = snapshot_id
        self.query_one("#detail-body", Static).update(Content(message))
