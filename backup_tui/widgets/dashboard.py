"""The dashboard's verdict, its sources table and its replica lines: "am I protected?".

Everything here reads ``Engine.status()`` and ``Engine.health()`` as the
``health`` command does, and measures every age against the time the engine
checked (``health()["checked"]``), never the console's own clock.

* ``verdict``: "Protected" or "N problems", then each health reason.
* ``DashboardTable``: a row per source (any kind: the columns read the status
  entry's fields, not its kind): the newest good backup's age against its
  limit (✓ ok / ✗ late), the last verify, the last drill and its RTO, the
  newest good backup in each replica (a tick per replica, in configuration
  order), the WAL archive's age for a source that archives WAL (its entry has
  ``wal``) and the replicas' WAL lag, and the failed backups of the last 24 h.
  Three widths (``NARROW``, ``NORMAL``, ``WIDE``): narrower columns under 76
  cells, more of them from 120.
* ``replica_lines``: per replica its region, the last success and, when
  failing, the error and how far behind it is (``Engine.replica_states``).
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.content import Content
from textual.widgets import DataTable

from backup_tui.format import cut, duration, human_bytes, local_time
from backup_tui.widgets.source_table import age, backup_late, lag_text, source_key, wal_late

NARROW, NORMAL, WIDE = "narrow", "normal", "wide"
MUTED = "$foreground-muted"
NONE = "—"  # a column that does not apply to this source


def when(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def since(iso: str | None, now: datetime) -> float | None:
    """Seconds from ``iso`` to ``now`` (None without a time)."""
    moment = when(iso)
    return None if moment is None else (now - moment).total_seconds()


def layout_for(width: int) -> str:
    """Which column set a screen ``width`` cells wide takes."""
    return NARROW if width < 76 else NORMAL if width < 120 else WIDE


# ------------------------------------------------------------------ verdict
def verdict(status: dict, health: dict, now: datetime, most: int = 10) -> Content:
    """The line that answers the question, then the health reasons, one a line (at most
    ``most`` of them, then how many more)."""
    reasons = list(health.get("reasons") or [])
    if health.get("ok") and not reasons:
        head = Content.styled("✓ Protected", "bold $text-success")
    else:
        count = len(reasons)
        head = Content.styled(f"✗ {count} problem{'s' * (count != 1)}", "bold $text-error")
    sources = len(status.get("sources") or [])
    replicas = len(status.get("replicas") or [])
    facts = [f"{sources} source{'s' * (sources != 1)}",
             f"{replicas} replica{'s' * (replicas != 1)}"]
    if status.get("repository_bytes") is not None:
        facts.append(f"repository {human_bytes(status['repository_bytes'])}")
    facts.append(f"checked {local_time(now, '%H:%M:%S')}")
    lines = [Content.assemble(head, (" · " + ", ".join(facts), MUTED))]
    shown = reasons if len(reasons) <= most else reasons[:max(0, most - 1)]
    lines += [Content.assemble(("  • ", "$text-error"), (r, "$text-error")) for r in shown]
    if len(shown) < len(reasons):
        lines.append(Content.styled(f"  + {len(reasons) - len(shown)} more (o in the "
                                    "inventory: the sources)", MUTED))
    return Content("\n").join(lines)


# ------------------------------------------------------------- the sources
def _ok(text: str) -> tuple[str, str]:
    return (f"✓ {text}", "$text-success")


COLUMNS = {  # layout -> (key, header); the source column first
    NARROW: (("source", "Source"), ("backup", "Backup"), ("verify", "Verif"),
             ("drill", "Drill"), ("copies", "Cp"), ("wal", "WAL"), ("fails", "24h")),
    NORMAL: (("source", "Source"), ("backup", "Backup"), ("verify", "Verified"),
             ("drill", "Drill RTO"), ("copies", "Copies"), ("wal", "WAL"),
             ("fails", "Fails 24h")),
    WIDE: (("source", "Source"), ("backup", "Backup"), ("limit", "Limit"),
           ("verify", "Verified"), ("drill", "Last drill, RTO"), ("copies", "In replicas"),
           ("wal", "WAL archive"), ("walcopies", "WAL in replicas"), ("fails", "Fails 24h")),
}
SOURCE_WIDTH = {NARROW: 12, NORMAL: 18, WIDE: 26}


class DashboardTable(DataTable):
    """A row per source (key ``kind:name``); ``show`` fills it for a layout."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.shape = NORMAL
        self.entries: dict[str, dict] = {}

    def on_mount(self) -> None:
        self._columns_for(self.shape)

    def _columns_for(self, layout: str) -> None:
        self.shape = layout
        for key, label in COLUMNS[layout]:
            right = key in ("fails", "limit")
            self.add_column(Text(label, justify="right" if right else "left"), key=key)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    @property
    def selected(self) -> dict | None:
        """The status entry of the source under the cursor, if any."""
        return self.entries.get(self.cursor_key or "")

    def show(self, entries: list[dict], replicas: list[str], now: datetime,
             layout: str) -> None:
        """Replace the rows (configuration order), keeping the cursor on the same source."""
        current = self.cursor_key
        if layout != self.shape:
            self.clear(columns=True)
            self._columns_for(layout)
        else:
            self.clear()
        self.entries = {source_key(e): e for e in entries}
        cells = SourceCells(replicas, now, layout, self.app.theme_variables)
        for entry in entries:
            row = cells.row(entry)
            self.add_row(*(row[key] for key, _ in COLUMNS[layout]), key=source_key(entry))
        if current is not None and current in self.rows:
            self.move_cursor(row=self.get_row_index(current))


class SourceCells:
    """The cells of one source's row, by column key (``Text``: names are data, not markup)."""

    def __init__(self, replicas: list[str], now: datetime, layout: str,
                 colours: dict[str, str]) -> None:
        self.replicas = replicas
        self.now = now
        self.shape = layout
        self.colours = colours  # the theme's variables: "text-error" -> a colour

    def row(self, entry: dict) -> dict[str, Text]:
        # Narrow: the kind's short name ("db") instead of its label ("database").
        noun = entry["kind"] if self.shape == NARROW else entry.get("label", entry["kind"])
        cells = {
            "source": Text(cut(f"{noun} {entry['name']}", SOURCE_WIDTH[self.shape])),
            "backup": self._backup(entry),
            "limit": Text(f"{entry.get('max_age_hours')} h", style="dim", justify="right"),
            "verify": self._age(since(entry.get("last_verified"), self.now)),
            "drill": self._drill(entry.get("drill")),
            "copies": self._copies(entry),
            "wal": self._wal(entry.get("wal")),
            "walcopies": self._wal_copies(entry.get("wal")),
            "fails": self._fails(int(entry.get("failures_24h") or 0)),
        }
        return cells

    def _text(self, parts: tuple[str, str] | str) -> Text:
        """Content-style (text, "$variable") to a rich Text in the theme's colour."""
        if isinstance(parts, str):
            return Text(parts)
        text, style = parts
        return Text(text, style=self._style(style))

    def _style(self, style: str) -> str:
        """``bold $text-error`` with the theme's colour for the variable."""
        return " ".join(self.colours.get(word[1:], "") if word.startswith("$") else word
                        for word in style.split())

    def _backup(self, entry: dict) -> Text:
        hours = entry.get("age_hours")
        if hours is None:
            return self._text(("✗ never", "bold $text-error"))
        shown = age(hours * 3600)
        if backup_late(entry):
            return self._text((f"✗ {shown}", "bold $text-error"))
        return self._text(_ok(shown))

    def _age(self, seconds: float | None) -> Text:
        return Text("never", style="dim") if seconds is None else Text(age(seconds))

    def _drill(self, drill: dict | None) -> Text:
        if drill is None:
            return Text(NONE, style="dim")
        last = drill.get("last")
        if last is None:
            return Text("never", style="dim")
        if not last.get("ok"):
            return self._text(("✗ FAIL" if self.shape == NARROW else "✗ failed",
                               "bold $text-error"))
        rto = last.get("rto_seconds")
        text = duration(rto) if rto is not None else "ok"
        if self.shape == WIDE:
            finished = since(last.get("finished") or last.get("started"), self.now)
            text = f"{age(finished)} ago, {text}"
        return self._text(_ok(text))

    def _copies(self, entry: dict) -> Text:
        """A tick per replica: does it hold the newest good backup."""
        present = entry.get("in_replicas") or {}
        if not self.replicas or not entry.get("last_good"):
            return Text(NONE, style="dim")
        out = Text()
        for n, name in enumerate(self.replicas):
            if n:
                out.append(" " if self.shape == WIDE else "")
            if self.shape == WIDE:
                out.append(f"{name} ")
            ok = present.get(name, False)
            out.append("✓" if ok else "✗", style=self._style(
                "$text-success" if ok else "$text-warning"))
        return out

    def _wal(self, wal: dict | None) -> Text:
        if wal is None:
            return Text(NONE, style="dim")
        if wal.get("error"):
            return self._text(("✗ unreadable", "bold $text-error"))
        if not wal.get("newest"):
            return self._text(("✗ empty", "bold $text-error"))
        shown = age(wal.get("age_seconds"))
        behind = any(s.get("behind") or not s.get("newest")
                     for s in (wal.get("replicas") or {}).values())
        if wal_late(wal):
            return self._text((f"✗ {shown}", "bold $text-error"))
        if behind and self.shape != WIDE:  # the wide layout says it in its own column
            return self._text((f"! {shown}", "$text-warning"))
        return self._text(_ok(shown))

    def _wal_copies(self, wal: dict | None) -> Text:
        if wal is None:
            return Text(NONE, style="dim")
        replicas = wal.get("replicas") or {}
        if not replicas:
            return Text("no replica", style="dim")
        lagging = [f"{name} {lag_text(wal, state)}" for name, state in replicas.items()
                   if state.get("behind") or not state.get("newest")]
        if not lagging:
            return self._text(_ok(f"{len(replicas)}/{len(replicas)} current"))
        return self._text((cut(", ".join(lagging), 24), "$text-warning"))

    def _fails(self, count: int) -> Text:
        if not count:
            return Text("0", style="dim", justify="right")
        return Text(str(count), style=self._style("bold $text-error"), justify="right")


# ------------------------------------------------------------------ replicas
def replica_lines(replicas: list[dict], now: datetime) -> Content:
    """A line per replica: name, region, last success; a failing one with its error and lag."""
    if not replicas:
        return Content.styled("No replica configured: every backup lives in one place.",
                              "$text-warning")
    lines = []
    for r in replicas:
        parts: list = [(r["name"], "bold"), (f" {r.get('region') or ''} ", MUTED)]
        last = since(r.get("last_success"), now)
        if r.get("failing"):
            parts.append(("✗ failing", "bold $text-error"))
            parts.append((f" (last ok {age(last)} ago)" if last is not None
                           else " (never replicated)", MUTED))
        elif last is None:
            parts.append(("✗ never replicated", "bold $text-error"))
        else:
            parts += [("✓", "$text-success"), (f" {age(last)} ago", "")]
        behind = r.get("objects_behind")
        if behind:
            parts.append((f", {behind} objects / {human_bytes(r.get('bytes_behind') or 0)} "
                          "behind", "$text-warning"))
        if r.get("failing") and r.get("last_error"):
            parts.append((": " + " ".join(r["last_error"].split()), "$text-error"))
        lines.append(Content.assemble(*parts))
    return Content("\n").join(lines)
