"""The replicas table and the line under it: where each S3 replica is and how far behind.

A row per configured replica, keyed by its name, from ``Engine.replica_states``:
region, bucket and prefix, snapshots complete there, objects and bytes it lacks
(as of the last replication or lag check; "?" before either), the last success
and the last error, cut short. ``ReplicaDetail`` shows the highlighted replica
in full: where it is, when its lag was measured, the whole last error.

An error older than the last success is history: it shows dimmed.

Narrower tables (``KeyedTable`` levels) leave out the bucket and region (from 70
columns, *compact*: the screen at 80) and the last error too (*narrow*: at 60),
and show the last success without the year; the detail line has them all.
The filter (``/``) knows ``source`` (the replica's name) and ``status``:
``failing`` (its last error is current), ``behind`` (objects to copy), else
``current``.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.content import Content

from backup_tui.format import cut, human_bytes, local_time
from backup_tui.widgets.detail import StatusDetail
from backup_tui.widgets.keyed_table import COMPACT, FULL, NARROW, KeyedTable

ERROR_WIDTH = 30  # the table cuts the last error here; the detail line has it whole
COMPACT_ERROR_WIDTH = 24
UNKNOWN = "?"


def _when(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _shown_time(iso: str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    moment = _when(iso)
    return local_time(moment, fmt) if moment else "never"


def location(state: dict) -> str:
    """``bucket/prefix/``: where the replica's repository lives in S3."""
    prefix = state.get("prefix", "").strip("/")
    return f"{state['bucket']}/{prefix + '/' if prefix else ''}"


def error_is_current(state: dict) -> bool:
    """The last error happened after the last success (or there was no success)."""
    error, success = _when(state.get("last_error_time")), _when(state.get("last_success"))
    return bool(state.get("last_error")) and (success is None or error is None or error > success)


def _cut(text: str, width: int = ERROR_WIDTH) -> str:
    """The error in one short line, without the replica's location (its row says where)."""
    text = " ".join(text.split())
    if text.startswith("s3://") and ": " in text:
        text = text.split(": ", 1)[1]
    return cut(text, width)


def replica_fields(state: dict) -> dict[str, tuple[str, ...] | str]:
    """What the filter's ``source:`` and ``status:`` look at."""
    if state.get("last_error") and error_is_current(state):
        status = "failing"
    else:
        status = "behind" if state.get("objects_behind") else "current"
    return {"source": state["name"], "status": status}


class ReplicaTable(KeyedTable):
    """Replicas as rows; the row key is the replica name."""

    COLUMNS = (  # two-line headers keep the narrow number columns narrow
        ("name", "Replica"),
        ("region", "Region"),
        ("where", "Bucket/prefix"),
        ("snapshots", "Snap-\nshots"),
        ("objects", "Objects\nbehind"),
        ("bytes", "Bytes\nbehind"),
        ("success", "Last success"),
        ("error", "Last error"),
    )
    RIGHT = ("snapshots", "objects", "bytes")
    LEVELS = ((110, FULL), (70, COMPACT), (0, NARROW))
    HIDDEN = {COMPACT: ("region", "where"), NARROW: ("region", "where", "error")}
    NOUN = "replicas"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True,
                         header_height=2)
        self.states: dict[str, dict] = {}  # the rows shown, by replica name

    def refill(self) -> None:
        self.show(list(self.states.values()))

    @property
    def selected(self) -> dict | None:
        """The state of the replica under the cursor, if any."""
        return self.states.get(self.cursor_key or "")

    def show(self, states: list[dict]) -> None:
        """Replace the rows (in configuration order), keeping the cursor on the same replica."""
        current = self.selected
        self.clear()
        self.states = {s["name"]: s for s in states}
        for state in states:
            cells = self._cells(state)
            text = " ".join([state.get("last_error") or "", *(c.plain for c in cells)])
            if self.shows(replica_fields(state), text):
                self.add_row(*self.visible(cells), key=state["name"])
        self.show_count(len(states))
        if current is not None and current["name"] in self.rows:
            self.move_cursor(row=self.get_row_index(current["name"]))

    def _cells(self, state: dict) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and errors are data.
        objects, nbytes = state.get("objects_behind"), state.get("bytes_behind")
        behind_style = "" if not objects else self.app.theme_variables.get("text-warning", "")
        error = state.get("last_error") or ""
        width = ERROR_WIDTH if self.level == FULL else COMPACT_ERROR_WIDTH
        if error and error_is_current(state):
            error_text = Text(_cut(error, width),
                              style=self.app.theme_variables.get("text-error", ""))
        else:
            error_text = Text(_cut(error, width) if error else "none", style="dim")
        return (
            Text(state["name"]),
            Text(state.get("region", "")),
            Text(location(state)),
            Text(str(state.get("snapshots", 0)), justify="right"),
            Text(UNKNOWN if objects is None else str(objects), style=behind_style,
                 justify="right"),
            Text(UNKNOWN if nbytes is None else human_bytes(nbytes), style=behind_style,
                 justify="right"),
            Text(_shown_time(state.get("last_success"),
                             "%Y-%m-%d %H:%M" if self.level == FULL else "%m-%d %H:%M")),
            error_text,
        )


def describe_replica(state: dict) -> Content:
    """The detail lines of one replica: where, lag measured when, its last error in full."""
    where = f"s3://{location(state)} in {state.get('region', '')}"
    if state.get("endpoint_url"):
        where += f" at {state['endpoint_url']}"
    checked = state.get("checked")
    lines = [
        Content.assemble((state["name"], "bold"), "  ", where),
        Content.assemble(("lag measured ", "$foreground-muted"),
                         _shown_time(checked, "%Y-%m-%d %H:%M:%S") if checked else "never",
                         ("   last success ", "$foreground-muted"),
                         _shown_time(state.get("last_success"), "%Y-%m-%d %H:%M:%S")),
    ]
    error = state.get("last_error")
    if error:
        style = "$text-error" if error_is_current(state) else "$foreground-muted"
        when = _shown_time(state.get("last_error_time"), "%Y-%m-%d %H:%M:%S")
        lines.append(Content.assemble((f"last error {when}: ", "$foreground-muted"),
                                      (error, style)))
    else:
        lines.append(Content.styled("no error recorded", "$foreground-muted"))
    return Content("\n").join(lines)


class ReplicaDetail(StatusDetail):
    """One replica in full under the table, after a status line (say, "measuring the lag")."""
