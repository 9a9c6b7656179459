"""The detail pane: one snapshot's full record as key/value lines.

Every snapshot shows its id, time, source and stats. The rest depends on what
the record has, never on its kind: ``paths`` (the paths backed up), ``postgres``
(what ``pg_dump`` saw: database, server version, dump size and time, pg_dump
version, where the connection came from, whether roles were saved), ``warnings``
and ``errors`` (the files it could not read) each get their section. A snapshot
of one ``stream`` (a dump) counts no files: its zero file counts are left out.
With the inventory row (``SnapshotInfo``) beside it, the pane adds
when the snapshot was last verified and, under "Replicas", each configured
replica and whether the snapshot is complete there (as of the last replication).
"""

from __future__ import annotations

import textwrap
from datetime import datetime

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from backup_tui.format import human_bytes
from engine.facade import SnapshotInfo

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
_FILE_COUNTS = {"files", "dirs", "unchanged_files"}  # always 0 for a stream
KEY_WIDTH = 13
# Values wrap under themselves beyond this: what #detail (app.tcss) leaves beside
# the keys once its scrollbar shows.
VALUE_WIDTH = 20


def _line(key: str, value: object, hang: bool = True) -> Content:
    """``key`` then ``value``, wrapped under itself; ``hang=False`` lets the pane wrap it
    instead, so that a selection copies it whole (the snapshot id)."""
    text = str(value)
    if hang:
        wrapped = textwrap.wrap(text, VALUE_WIDTH, break_on_hyphens=False) or [""]
        text = ("\n" + " " * KEY_WIDTH).join(wrapped)
    return Content.assemble((f"{key:<{KEY_WIDTH}}", "$foreground-muted"), text)


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


def _without(prefix: str, text: object) -> str:
    text = str(text)
    return text[len(prefix):] if text.startswith(prefix) else text


def _heading(title: str) -> list[Content]:
    return [Content(""), Content.styled(title, "bold")]


def _postgres(record: dict) -> list[Content]:
    """What pg_dump saw: the lines under "PostgreSQL"."""
    pg = record.get("postgres") or {}
    lines = _heading("PostgreSQL")
    if "dbname" in pg:
        lines.append(_line("database", pg["dbname"]))
    if "server_version" in pg:  # "PostgreSQL 15.20 (Debian ...)": the heading says PostgreSQL
        lines.append(_line("server", _without("PostgreSQL ", pg["server_version"])))
    if isinstance(pg.get("database_size"), int | float):
        lines.append(_line("db size", human_bytes(pg["database_size"])))
    if isinstance(pg.get("dump_bytes"), int | float):
        dump = human_bytes(pg["dump_bytes"])
        if pg.get("format"):
            jobs = f", {pg['jobs']} jobs" if pg.get("jobs", 1) != 1 else ""
            dump += f", {pg['format']}{jobs}"
        lines.append(_line("dump", dump))
    if isinstance(pg.get("dump_duration"), int | float):
        lines.append(_line("dump time", f"{pg['dump_duration']:.2f} s"))
    if "pg_dump" in pg:
        lines.append(_line("pg_dump", _without("pg_dump (PostgreSQL) ", pg["pg_dump"])))
    if "where" in pg:
        lines.append(_line("connection", pg["where"]))
    if "connection_from" in pg:
        lines.append(_line("from", pg["connection_from"]))
    lines.append(_line("roles", "saved" if record.get("globals") else "not saved"))
    return lines


def _errors(record: dict) -> list[Content]:
    errors = record.get("errors") or []
    total = int(record.get("errors_total", len(errors)))
    lines = _heading("Errors")
    if not errors:
        lines.append(Content("  none"))
    for err in errors[:MAX_ERRORS]:
        lines.append(Content.assemble(("  " + str(err.get("path", "?")), "$text-warning")))
        lines.append(Content(f"    {err.get('error', '')}"))
    if total > MAX_ERRORS:
        lines.append(Content(f"  ... and {total - MAX_ERRORS} more"))
    return lines


def _warnings(record: dict) -> list[Content]:
    lines = _heading("Warnings")
    warnings = record.get("warnings") or []
    lines += [Content.assemble(("  " + str(w), "$text-warning")) for w in warnings]
    return lines if warnings else [*lines, Content("  none")]


def _replicas(info: SnapshotInfo) -> list[Content]:
    lines = _heading("Replicas")
    for name, present in info.replicas.items():
        mark = ("✓ present", "$text-success") if present else ("· missing", "$text-warning")
        lines.append(Content.assemble(("  " + f"{name:<{KEY_WIDTH - 2}}", "$foreground-muted"),
                                      mark))
    return lines


def _stats(record: dict) -> list[Content]:
    stats = {k: v for k, v in record.get("stats", {}).items()
             if not ("stream" in record and k in _FILE_COUNTS and not v)}
    keys = [k for k in _STAT_LABELS if k in stats]
    keys += sorted(k for k in stats if k not in _STAT_LABELS)
    return _heading("Stats") + [_line(_STAT_LABELS.get(k, k), _stat(k, stats[k])) for k in keys]


def describe(record: dict, info: SnapshotInfo | None = None) -> Content:
    """The lines of the pane for a full snapshot record (as ``Engine.snapshot`` returns it)
    and its inventory row, if given (verified time, presence in each replica)."""
    total_errors = int(record.get("errors_total", len(record.get("errors") or [])))
    complete = not record.get("incomplete", False)
    lines: list[Content] = [
        Content.styled(f"Snapshot {str(record.get('id', ''))[:8]}", "bold"),
        _line("id", record.get("id", ""), hang=False),
        _line("time", _time(record.get("time", ""))),
        _line("kind", record.get("kind", "")),
        _line("source", record.get("source", "")),
        _line("host", record.get("host", "")),
        _line("parent", (record.get("parent") or "none")[:8]),
        _line("status", "complete" if complete
              else f"incomplete ({total_errors} error{'' if total_errors == 1 else 's'})"),
    ]
    if info is not None:
        lines.append(_line("verified", _time(info.verified) if info.verified else "never"))
        if info.replicas:
            lines += _replicas(info)
    if "postgres" in record:
        lines += _postgres(record)
    if "paths" in record:
        lines += _heading("Paths")
        lines += [Content(f"  {p}") for p in record["paths"]] or [Content("  none")]
    lines += _stats(record)
    if "warnings" in record:
        lines += _warnings(record)
    if "errors" in record:
        lines += _errors(record)
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

    def show(self, record: dict, info: SnapshotInfo | None = None) -> None:
        """Show ``record``; ``info``, its inventory row, adds verification and replicas.
        Showing the same snapshot again keeps the scroll position."""
        same = self.snapshot_id == record.get("id")
        self.snapshot_id = record.get("id")
        self.query_one("#detail-body", Static).update(describe(record, info))
        if not same:
            self.scroll_home(animate=False)

    def show_message(self, message: str, snapshot_id: str | None = None) -> None:
        self.snapshot_id = snapshot_id
        self.query_one("#detail-body", Static).update(Content(message))
