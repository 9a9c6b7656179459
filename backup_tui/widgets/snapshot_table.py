"""The inventory table: one row per snapshot, newest first, keyed by snapshot id.

Its columns follow its width (``KeyedTable`` levels):

- *full* (100 columns and more): time, kind, source, size, new data, status, when
  it was last verified, then one column per configured replica, headed by its name:
  ``✓`` when the snapshot is complete in that replica (as of the last replication),
  ``·`` when it is not.
- *compact* (from 74): the time without the year, the source cut short, size,
  new data, status, a verified mark (``✓`` verified, ``·`` never) and the replicas
  as ticks, one character per replica in configuration order, in one column.
- *narrow* (below 74, the table at 60 columns): the same without size and new data.

The detail pane has what a narrow row leaves out. The filter (``/``) knows the
fields ``kind``, ``source`` and ``status`` (complete, incomplete); free text
matches the id, the time and every cell.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import partial

from rich.text import Text

from backup_tui.format import cut, human_bytes, local_time
from backup_tui.widgets.keyed_table import COMPACT, FULL, NARROW, KeyedTable
from engine.facade import SnapshotInfo

PRESENT, ABSENT = "✓", "·"
VERIFIED, NEVER = "✓", "·"
REPLICA_KEY = "replica:"  # column key prefix of a replica's presence column
TICKS_KEY = "replicas"  # the compact levels' one column of replica ticks
SHORT_TIME = "%m-%d %H:%M"
SOURCE_WIDTH = 14  # the compact levels cut source names here
FIRST_ROWS = 100  # rows added at once by show(): more than a 160x48 screen shows
BATCH_ROWS = 250  # then this many at a time,
FILL_PAUSE = 0.01  # seconds apart (the first paint and keys go between)


class SnapshotTable(KeyedTable):
    """Snapshots as rows; the row key is the snapshot id."""

    COLUMNS = (
        ("time", "Time"),
        ("kind", "Kind"),
        ("source", "Source"),
        ("size", "Size"),
        ("added", "Added"),
        ("status", "Status"),
        ("verified", "Verified"),
    )
    RIGHT = ("size", "added")
    LEVELS = ((100, FULL), (74, COMPACT), (0, NARROW))
    HIDDEN = {NARROW: ("size", "added")}
    NOUN = "snapshots"

    def __init__(self, replicas: tuple[str, ...] = (), *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.replicas = replicas  # names of the configured replicas, one column each
        self.infos: dict[str, SnapshotInfo] = {}  # every snapshot listed, by id
        self._filling: Iterator | None = None  # the rows show() has still to add

    def label(self, key: str, label: str) -> str:
        return "V" if key == "verified" and self.level != FULL else label

    def more_columns(self) -> None:
        if not self.replicas:
            return
        if self.level == FULL:
            for name in self.replicas:
                self.add_column(Text(name, justify="center"), key=REPLICA_KEY + name)
        else:  # one tick per replica; the detail pane names them
            self.add_column(Text("Rep"), key=TICKS_KEY)

    @property
    def selected_id(self) -> str | None:
        """The snapshot id under the cursor, if any."""
        return self.cursor_key

    def show(self, snapshots: list[SnapshotInfo], select: str | None = None) -> None:
        """Replace the rows (newest first, those the filter lets through) and put the
        cursor on ``select``, or else the newest. The first ``FIRST_ROWS`` rows (and
        those down to ``select``) are added now, the rest ``BATCH_ROWS`` at a time on a
        timer: with 10,000 snapshots the table paints at once and keys are answered
        while it fills (DataTable measures every cell of the rows it adds)."""
        self.clear()
        self.infos = {info.id: info for info in snapshots}
        rows = self._rows(sorted(snapshots, key=lambda i: i.time, reverse=True))
        self._filling = rows
        self._fill(rows, FIRST_ROWS, until=select if select in self.infos else None)
        if select is not None and select in self.rows:
            self.move_cursor(row=self.get_row_index(select), scroll=True)
        elif self.row_count:
            self.move_cursor(row=0)
        self.show_count(len(snapshots))

    def _rows(self, infos: list[SnapshotInfo]) -> Iterator[tuple[str, tuple[Text, ...]]]:
        for info in infos:
            cells = self._cells(info)
            if self.filter and not self.filter.matches(
                    self._fields(info), " ".join([info.id, *(c.plain for c in cells)])):
                continue
            yield info.id, self.visible(cells)

    def _fill(self, rows: Iterator[tuple[str, tuple[Text, ...]]], count: int,
              until: str | None = None) -> None:
        """Add ``count`` rows (more if ``until`` is not added yet); the rest later."""
        if rows is not self._filling:  # a newer show replaced these rows
            return
        added = 0
        for key, cells in rows:
            self.add_row(*cells, key=key)
            added += 1
            if added >= count and (until is None or until in self.rows):
                self.set_timer(FILL_PAUSE, partial(self._fill, rows, BATCH_ROWS))
                return
        self._filling = None
        self.show_count(len(self.infos))  # a filter's count is complete now

    def refill(self) -> None:
        self.show(list(self.infos.values()), self.selected_id)

    @staticmethod
    def _fields(info: SnapshotInfo) -> dict[str, tuple[str, ...] | str]:
        return {"kind": info.kind, "source": info.source,
                "status": "complete" if info.complete else "incomplete"}

    def _style(self, variable: str) -> str:
        return self.app.theme_variables.get(variable, "")

    def _cells(self, info: SnapshotInfo) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and names are user data.
        full = self.level == FULL
        if info.complete:
            status = Text("complete")
        else:
            status = Text("incomplete", style=self._style("text-warning"))
        if full:
            verified = (Text(local_time_of(info.verified)) if info.verified
                        else Text("never", style="dim"))
        else:
            verified = (Text(VERIFIED, style=self._style("text-success")) if info.verified
                        else Text(NEVER, style="dim"))
        return (
            Text(local_time(info.time) if full else local_time(info.time, SHORT_TIME)),
            Text(info.kind),
            Text(info.source if full else cut(info.source, SOURCE_WIDTH)),
            Text(human_bytes(info.size), justify="right"),
            Text(human_bytes(info.added), justify="right"),
            status,
            verified,
            *self._presence(info),
        )

    def _presence(self, info: SnapshotInfo) -> tuple[Text, ...]:
        if not self.replicas:
            return ()
        present = self._style("text-success")
        if self.level == FULL:
            return tuple(Text(PRESENT, style=present, justify="center")
                         if info.replicas.get(name)
                         else Text(ABSENT, style="dim", justify="center")
                         for name in self.replicas)
        ticks = Text()  # one character each; appending plain strings keeps 10,000 rows quick
        for name in self.replicas:
            if info.replicas.get(name):
                ticks.append(PRESENT, present)
            else:
                ticks.append(ABSENT, "dim")
        return (ticks,)


def local_time_of(iso: str) -> str:
    """A verified time (ISO text) as the table shows times."""
    return local_time(datetime.fromisoformat(iso), SHORT_TIME)
