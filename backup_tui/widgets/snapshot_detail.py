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

Wrapping: the pane is beside the table on a wide screen and folded below it on a
narrow one (app.tcss), so its lines are laid out again for its width whenever it
changes. A value wraps under itself at spaces; a path (``/srv/app/data/...``)
wraps after a ``/``; the id, in groups of 8 hex digits, as few lines as it takes
(the heading has its short form).
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
WIDTH = 33  # the lines' width until the pane knows its own (KEY_WIDTH + the values')
MIN_VALUE_WIDTH = 16
ID_GROUP = 8  # an id wraps between groups of this many hex digits
UNWRAPPED = 10_000  # a width no value reaches


def wrap_path(path: str, width: int) -> list[str]:
    """``path`` in lines of at most ``width``, broken after a ``/`` (a name longer than a
    line is cut where it must)."""
    parts = [p + "/" for p in path.split("/")]
    parts[-1] = parts[-1][:-1]
    lines = [""]
    for part in filter(None, parts):
        while len(part) > width:  # a name longer than a line
            if lines[-1]:
                lines.append("")
            lines[-1], part = part[:width], part[width:]
            lines.append("")
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return [line for line in lines if line] or [""]


def wrap_id(text: str, width: int) -> list[str]:
    """An id in as few lines as ``width`` takes, each a whole number of groups of 8."""
    if len(text) <= width:
        return [text]
    per_line = max(1, width // ID_GROUP) * ID_GROUP
    lines = -(-len(text) // per_line)
    per_line = -(-len(text) // lines // ID_GROUP) * ID_GROUP  # even lines: 32 + 32, not 56 + 8
    return [text[i:i + per_line] for i in range(0, len(text), per_line)]


def wrap_value(text: str, width: int) -> list[str]:
    """A value in lines of at most ``width``: a path after its ``/``, else at spaces."""
    if "/" in text and " " not in text:
        return wrap_path(text, width)
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def _line(key: str, value: object, width: int = WIDTH, wrap=wrap_value) -> Content:
    """``key`` then ``value``, wrapped under itself in a line ``width`` wide."""
    wrapped = wrap(str(value), max(MIN_VALUE_WIDTH, width - KEY_WIDTH))
    return Content.assemble((f"{key:<{KEY_WIDTH}}", "$foreground-muted"),
                            ("\n" + " " * KEY_WIDTH).join(wrapped))


def _indented(text: str, indent: int, width: int, wrap=wrap_value) -> str:
    """``text`` wrapped at ``width`` less ``indent``, every line indented."""
    pad = " " * indent
    return "\n".join(pad + line for line in wrap(text, max(MIN_VALUE_WIDTH, width - indent)))


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


def _postgres(record: dict, width: int) -> list[Content]:
    """What pg_dump saw: the lines under "PostgreSQL"."""
    pg = record.get("postgres") or {}
    lines = _heading("PostgreSQL")
    if "dbname" in pg:
        lines.append(_line("database", pg["dbname"], width))
    if "server_version" in pg:  # "PostgreSQL 15.20 (Debian ...)": the heading says PostgreSQL
        lines.append(_line("server", _without("PostgreSQL ", pg["server_version"]), width))
    if isinstance(pg.get("database_size"), int | float):
        lines.append(_line("db size", human_bytes(pg["database_size"]), width))
    if isinstance(pg.get("dump_bytes"), int | float):
        dump = human_bytes(pg["dump_bytes"])
        if pg.get("format"):
            jobs = f", {pg['jobs']} jobs" if pg.get("jobs", 1) != 1 else ""
            dump += f", {pg['format']}{jobs}"
        lines.append(_line("dump", dump, width))
    if isinstance(pg.get("dump_duration"), int | float):
        lines.append(_line("dump time", f"{pg['dump_duration']:.2f} s", width))
    if "pg_dump" in pg:
        lines.append(_line("pg_dump", _without("pg_dump (PostgreSQL) ", pg["pg_dump"]), width))
    if "where" in pg:
        lines.append(_line("connection", pg["where"], width))
    if "connection_from" in pg:
        lines.append(_line("from", pg["connection_from"], width))
    lines.append(_line("roles", "saved" if record.get("globals") else "not saved", width))
    return lines


def _errors(record: dict, width: int) -> list[Content]:
    errors = record.get("errors") or []
    total = int(record.get("errors_total", len(errors)))
    lines = _heading("Errors")
    if not errors:
        lines.append(Content("  none"))
    for err in errors[:MAX_ERRORS]:
        lines.append(Content.styled(_indented(str(err.get("path", "?")), 2, width, wrap_path),
                                    "$text-warning"))
        lines.append(Content(_indented(str(err.get("error", "")), 4, width)))
    if total > MAX_ERRORS:
        lines.append(Content(f"  ... and {total - MAX_ERRORS} more"))
    return lines


def _warnings(record: dict, width: int) -> list[Content]:
    lines = _heading("Warnings")
    warnings = record.get("warnings") or []
    lines += [Content.styled(_indented(str(w), 2, width), "$text-warning") for w in warnings]
    return lines if warnings else [*lines, Content("  none")]


def _replicas(info: SnapshotInfo) -> list[Content]:
    lines = _heading("Replicas")
    for name, present in info.replicas.items():
        mark = ("✓ present", "$text-success") if present else ("· missing", "$text-warning")
        lines.append(Content.assemble(("  " + f"{name:<{KEY_WIDTH - 2}}", "$foreground-muted"),
                                      mark))
    return lines


def _stats(record: dict, width: int) -> list[Content]:
    stats = {k: v for k, v in record.get("stats", {}).items()
             if not ("stream" in record and k in _FILE_COUNTS and not v)}
    keys = [k for k in _STAT_LABELS if k in stats]
    keys += sorted(k for k in stats if k not in _STAT_LABELS)
    return _heading("Stats") + [_line(_STAT_LABELS.get(k, k), _stat(k, stats[k]), width)
                                   for k in keys]


def describe(record: dict, info: SnapshotInfo | None = None, width: int = WIDTH) -> Content:
    """The lines of the pane for a full snapshot record (as ``Engine.snapshot`` returns it)
    and its inventory row, if given (verified time, presence in each replica), for a pane
    ``width`` columns wide."""
    total_errors = int(record.get("errors_total", len(record.get("errors") or [])))
    complete = not record.get("incomplete", False)
    lines: list[Content] = [
        Content.styled(f"Snapshot {str(record.get('id', ''))[:8]}", "bold"),
        _line("id", record.get("id", ""), width, wrap_id),
        _line("time", _time(record.get("time", "")), width),
        _line("kind", record.get("kind", ""), width),
        _line("source", record.get("source", ""), width),
        _line("host", record.get("host", ""), width),
        _line("parent", (record.get("parent") or "none")[:8], width),
        _line("status", "complete" if complete
              else f"incomplete ({total_errors} error{'' if total_errors == 1 else 's'})",
              width),
    ]
    if info is not None:
        lines.append(_line("verified", _time(info.verified) if info.verified else "never", width))
        if info.replicas:
            lines += _replicas(info)
    if "postgres" in record:
        lines += _postgres(record, width)
    if "paths" in record:
        lines += _heading("Paths")
        lines += ([Content(_indented(str(p), 2, width, wrap_path)) for p in record["paths"]]
                  or [Content("  none")])
    lines += _stats(record, width)
    if "warnings" in record:
        lines += _warnings(record, width)
    if "errors" in record:
        lines += _errors(record, width)
    if record.get("program"):
        lines += [Content(""), _line("written by", record["program"], width)]
    return Content("\n").join(lines)


class SnapshotDetail(VerticalScroll):
    """Shows one snapshot record, or a short message when there is none."""

    def __init__(self, message: str = "", *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._first = message  # shown until the first show(): composed with the body
        self.snapshot_id: str | None = None
        self._shown: tuple[dict, SnapshotInfo | None] | None = None  # laid out again on resize

    def compose(self) -> ComposeResult:
        yield Static(Content(self._first), id="detail-body")

    @property
    def text(self) -> str:
        """What the pane shows, as plain text, each value on one line (not wrapped)."""
        if self._shown is not None:
            return describe(*self._shown, width=UNWRAPPED).plain
        visual = self.query_one("#detail-body", Static).visual
        return visual.plain if isinstance(visual, Content) else str(visual)

    @property
    def line_width(self) -> int:
        """The width its lines may take: inside the padding and border, the scrollbar's
        room kept whether it shows or not (else the lines would change as it comes)."""
        width = self.content_region.width - self.styles.scrollbar_size_vertical
        return width if width > KEY_WIDTH + MIN_VALUE_WIDTH else WIDTH

    def show(self, record: dict, info: SnapshotInfo | None = None) -> None:
        """Show ``record``; ``info``, its inventory row, adds verification and replicas.
        Showing the same snapshot again keeps the scroll position."""
        same = self.snapshot_id == record.get("id")
        self.snapshot_id = record.get("id")
        self._shown = (record, info)
        self.query_one("#detail-body", Static).update(describe(record, info, self.line_width))
        if not same:
            self.scroll_home(animate=False)

    def show_message(self, message: str, snapshot_id: str | None = None) -> None:
        self.snapshot_id = snapshot_id
        self._shown = None
        self.query_one("#detail-body", Static).update(Content(message))

    def on_resize(self) -> None:
        if self._shown is not None:
            record, info = self._shown
            self.query_one("#detail-body", Static).update(describe(record, info,
                                                                   self.line_width))
