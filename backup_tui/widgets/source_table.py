"""The sources table and the line under it: is each source protected, and how far back.

A row per configured source (``Engine.status()["sources"]``), keyed
``kind:name``: its kind, its name, the age of its newest complete backup, its
recovery point (for a cluster the newest archived WAL, else that backup), the
WAL in the replicas (clusters: "2/2 current", or the one replica behind and by
how much), and the last restore drill (passed or FAILED, with its RTO; "never").
``SourceDetail`` shows the highlighted source in full: the backup, the WAL
archive here and per replica (newest segment, archive time, lag, last error),
the drill (result, RTO trend, table rows, checks, error), and the health
reasons (``Engine.health()``) that name this source.

Every age is the one the engine computed (``age_hours``, ``age_seconds``): the
console never compares times with its own clock. Ages past their limit, a WAL
archive that cannot be read and a failed drill show in the error colour; a
replica behind in the warning colour.

Narrow (a table under 70 columns, the screen at 60): the WAL column is left out
(the detail has it) and names are cut shorter. The filter (``/``) knows ``kind``
(the kind or its label: ``db`` or ``database``), ``source`` (the name) and
``status``: ``late`` (no backup within its limit, or WAL past its limit),
``failed`` (the last drill), else ``ok``.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.content import Content

from backup_tui.format import cut, duration, local_time
from backup_tui.widgets.detail import StatusDetail
from backup_tui.widgets.keyed_table import FULL, NARROW, KeyedTable

NAME_WIDTH = 16  # the table cuts names here; the detail has them whole
NARROW_NAME_WIDTH = 12
WAL_WIDTH = 18
LONG_FORMAT = "%Y-%m-%d %H:%M:%S"
NONE = "—"  # a column that does not apply to the source's kind


def source_key(entry: dict) -> str:
    """The row key of a status entry."""
    return f"{entry['kind']}:{entry['name']}"


def age(seconds: float | None) -> str:
    """An age as short as a column can take: ``40 s``, ``12 min``, ``3.2 h``, ``4 d``."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def shown_time(iso: str | None, fmt: str = LONG_FORMAT) -> str:
    return local_time(datetime.fromisoformat(iso), fmt) if iso else "never"


def backup_late(entry: dict) -> bool:
    """No complete backup, or the newest is older than the source's limit."""
    hours = entry.get("age_hours")
    return hours is None or hours > entry.get("max_age_hours", 0)


def wal_late(wal: dict) -> bool:
    """The archive cannot be read, holds nothing, or its newest WAL is past the limit."""
    seconds = wal.get("age_seconds")
    return bool(wal.get("error")) or seconds is None or seconds > wal["max_age_minutes"] * 60


def replica_lag(wal: dict, state: dict) -> float | None:
    """Seconds of WAL the replica lacks against the local archive (None: it has none)."""
    if state.get("age_seconds") is None:
        return None
    if not state.get("behind") or wal.get("age_seconds") is None:
        return 0.0
    return max(0.0, state["age_seconds"] - wal["age_seconds"])


def lag_text(wal: dict, state: dict) -> str:
    lag = replica_lag(wal, state)
    if lag is None:
        return "no WAL"
    return "current" if not state.get("behind") else f"{age(lag)} behind"


def concerns(reason: str, entry: dict) -> bool:
    """Whether a health reason names this source (``db shop: ...``, ``cluster main: ...``)."""
    return any(reason.startswith(f"{who} {entry['name']}:")
               for who in (entry["kind"], entry.get("label", entry["kind"])))


def source_fields(entry: dict) -> dict[str, tuple[str, ...] | str]:
    """What the filter's ``kind:``, ``source:`` and ``status:`` look at."""
    drill = (entry.get("drill") or {}).get("last") or {}
    wal = entry.get("wal")
    late = backup_late(entry) or (wal is not None and wal_late(wal))
    status = ("late",) * late + ("failed",) * (drill.get("ok") is False)
    return {"kind": (entry["kind"], entry.get("label", entry["kind"])),
            "source": entry["name"], "status": status or ("ok",)}


class SourceTable(KeyedTable):
    """Configured sources as rows; the row key is ``kind:name``."""

    COLUMNS = (  # two-line headers keep the columns narrow: 80 columns hold them all
        ("kind", "Kind"),
        ("name", "Name"),
        ("backup", "Last\nbackup"),
        ("point", "Recovery\npoint"),
        ("wal", "WAL in\nreplicas"),
        ("drill", "Last\ndrill"),
    )
    RIGHT = ("backup", "point")
    LEVELS = ((70, FULL), (0, NARROW))
    HIDDEN = {NARROW: ("wal",)}
    NOUN = "sources"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True,
                         header_height=2)
        self.entries: dict[str, dict] = {}  # the rows shown, by key

    def refill(self) -> None:
        self.show(list(self.entries.values()))

    @property
    def selected(self) -> dict | None:
        """The status entry of the source under the cursor, if any."""
        return self.entries.get(self.cursor_key or "")

    def show(self, entries: list[dict]) -> None:
        """Replace the rows (in configuration order), keeping the cursor on the same source."""
        current = self.cursor_key
        self.clear()
        self.entries = {source_key(e): e for e in entries}
        for entry in entries:
            cells = self._cells(entry)
            text = " ".join([entry.get("description", ""), *(c.plain for c in cells)])
            if self.shows(source_fields(entry), text):
                self.add_row(*self.visible(cells), key=source_key(entry))
        self.show_count(len(entries))
        if current is not None and current in self.rows:
            self.move_cursor(row=self.get_row_index(current))

    def _style(self, name: str) -> str:
        return self.app.theme_variables.get(name, "")

    def _cells(self, entry: dict) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and names are data.
        error = self._style("text-error")
        hours = entry.get("age_hours")
        backup = Text(age(None if hours is None else hours * 3600), justify="right",
                      style=error if backup_late(entry) else "")
        return (
            Text(entry.get("label", entry["kind"])),
            Text(cut(entry["name"], NAME_WIDTH if self.level == FULL else NARROW_NAME_WIDTH)),
            backup,
            self._point(entry, backup),
            self._wal(entry),
            self._drill(entry),
        )

    def _point(self, entry: dict, backup: Text) -> Text:
        """A cluster recovers to its newest archived WAL; anything else to its last backup."""
        wal = entry.get("wal")
        if wal is None:
            return backup.copy()
        text = "unreadable" if wal.get("error") else age(wal.get("age_seconds"))
        return Text(text, justify="right", style=self._style("text-error") if wal_late(wal)
                    else "")

    def _wal(self, entry: dict) -> Text:
        wal = entry.get("wal")
        if wal is None:
            return Text(NONE, style="dim")
        replicas = wal.get("replicas") or {}
        if not replicas:
            return Text("no replica", style="dim")
        lagging = {n: s for n, s in replicas.items() if s.get("behind") or not s.get("newest")}
        if not lagging:
            return Text(f"{len(replicas)}/{len(replicas)} current")
        failing = any(s.get("error") for s in lagging.values())
        style = self._style("text-error" if failing else "text-warning")
        if len(lagging) == 1:
            [(name, state)] = lagging.items()
            return Text(cut(f"{name} {lag_text(wal, state)}", WAL_WIDTH), style=style)
        current = len(replicas) - len(lagging)
        return Text(f"{current}/{len(replicas)} current", style=style)

    def _drill(self, entry: dict) -> Text:
        drill = entry.get("drill")
        if drill is None:
            return Text(NONE, style="dim")
        last = drill.get("last")
        if last is None:
            return Text("never", style="dim")
        rto = last.get("rto_seconds")
        if not last.get("ok"):
            return Text("FAILED", style=f"bold {self._style('text-error')}")
        return Text("passed" + (f" {duration(rto)}" if rto is not None else ""),
                    style=self._style("text-success"))


# ------------------------------------------------------------------- the detail

MUTED = "$foreground-muted"
SHORT_FORMAT = "%m-%d %H:%M"
MINUTE_FORMAT = "%Y-%m-%d %H:%M"


def _label(text: str) -> tuple[str, str]:
    return (text, MUTED)


def _backup_lines(entry: dict) -> list[Content]:
    hours = entry.get("age_hours")
    limit = entry.get("max_age_hours")
    style = "$text-error" if backup_late(entry) else ""
    if entry.get("last_good"):
        backup = Content.assemble(
            _label("backup "), (shown_time(entry["last_good"], MINUTE_FORMAT), style),
            (f" ({age(hours * 3600)} old, limit {limit} h)", style))
    else:
        backup = Content.assemble(_label("backup "), ("none complete", "$text-error"),
                                  f" (limit {limit} h)")
    count = entry.get("snapshots", 0)
    nxt = shown_time(entry["next_run"], SHORT_FORMAT) if entry.get("next_run") else "none"
    lines = [Content.assemble(backup, _label(f", {count} snapshot{'s' * (count != 1)}, next "),
                              nxt)]
    failure = entry.get("last_failure")
    if failure and (not entry.get("last_good") or failure > entry["last_good"]):
        lines.append(Content.assemble(_label(f"backup failed {shown_time(failure)}: "),
                                      (entry.get("last_failure_error") or "", "$text-error")))
    return lines


def _wal_lines(wal: dict) -> list[Content]:
    limit = wal["max_age_minutes"]
    if wal.get("error"):
        head = Content.assemble(_label("WAL archive "), ("unreadable: " + wal["error"],
                                                         "$text-error"))
    elif not wal.get("newest"):
        head = Content.assemble(_label("WAL archive "), ("empty", "$text-error"),
                                _label(" (is archive_command set to wal-push?)"))
    else:
        style = "$text-error" if wal_late(wal) else ""
        head = Content.assemble(
            _label("WAL "), (wal["newest"], "bold"), _label(" at "),
            (shown_time(wal.get("archived")), style),
            (f" ({age(wal.get('age_seconds'))} ago, limit {limit} min)", style))
    lines = [head]
    for name, state in (wal.get("replicas") or {}).items():
        lag = lag_text(wal, state)
        parts: list = [("  " + name, "bold"), " "]
        if lag == "current":
            parts += [("current", "$text-success"), _label(", shipped "),
                      shown_time(state.get("shipped"), MINUTE_FORMAT)]
        elif state.get("newest"):
            parts += [state["newest"], _label(" at "), shown_time(state.get("archived")),
                      ", ", (lag, "$text-warning")]
        else:
            parts += [("no WAL shipped yet", "$text-warning")]
        if state.get("error"):
            parts += [_label(f"; error {shown_time(state.get('error_time'), SHORT_FORMAT)}: "),
                      (state["error"], "$text-error")]
        lines.append(Content.assemble(*parts))
    return lines


def _drill_lines(drill: dict) -> list[Content]:
    last = drill.get("last")
    if last is None:
        return [Content.assemble(_label("drill "), "never run",
                                 _label(f" (limit {drill.get('max_age_hours')} h once drilled)"))]
    ok = last.get("ok")
    result = ("passed", "$text-success") if ok else ("FAILED", "bold $text-error")
    parts: list = [_label("drill "), result, " ",
                   shown_time(last.get("finished") or last.get("started"), MINUTE_FORMAT)]
    if last.get("snapshot"):
        parts += [_label(" of "), last["snapshot"][:8]]
    if last.get("rto_seconds") is not None:
        parts += [_label(", RTO "), duration(last["rto_seconds"])]
    if last.get("error"):
        parts += [_label(": "), (last["error"], "$text-error")]
    lines = [Content.assemble(*parts)]
    trend = drill.get("rto_trend") or []
    rows = last.get("rows") or {}
    if trend or rows:
        more: list = []
        if trend:
            more += [_label("RTO trend "), ", ".join(duration(s) for s in trend)]
        if rows:
            more += [_label(("; " if trend else "") + "row counts "),
                     ", ".join(f"{table} {count}" for table, count in rows.items())]
        lines.append(Content.assemble(*more))
    for check in last.get("checks") or []:  # when the engine's summary carries them
        mark = ("✓ ", "$text-success") if check.get("ok") else ("✗ ", "$text-error")
        lines.append(Content.assemble("  ", mark, check.get("name", ""), _label(": "),
                                      str(check.get("detail", ""))))
    return lines


def describe_source(entry: dict, reasons: list[str]) -> Content:
    """The detail lines of one source: see the module docstring. The health reasons that
    name it come first: they are what an operator has to act on."""
    lines = [Content.assemble((entry.get("label", entry["kind"]), "bold"), " ",
                              (entry["name"], "bold"), "  ", entry.get("description", ""))]
    mine = [r.split(": ", 1)[1] for r in reasons if concerns(r, entry)]
    lines += [Content.assemble(("✗ ", "bold $text-error"), (r, "$text-error")) for r in mine]
    if not mine:
        lines.append(Content.styled("✓ healthy", "$text-success"))
    lines += _backup_lines(entry)
    if entry.get("wal") is not None:
        lines += _wal_lines(entry["wal"])
    if entry.get("drill") is not None:
        lines += _drill_lines(entry["drill"])
    return Content("\n").join(lines)


class SourceDetail(StatusDetail):
    """One source in full under the table, after a status line (say, "reading the status")."""
