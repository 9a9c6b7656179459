"""The inventory table: one row per snapshot, newest first, keyed by snapshot id.

After the fixed columns comes one column per configured replica, headed by its
name: ``✓`` when the snapshot is complete in that replica (as of the last
replication), ``·`` when it is not.
"""

from __future__ import annotations

from rich.text import Text

from backup_tui.format import human_bytes, local_time
from backup_tui.widgets.keyed_table import KeyedTable
from engine.facade import SnapshotInfo

PRESENT, ABSENT = "✓", "·"
REPLICA_KEY = "replica:"  # column key prefix of a replica's presence column

class SnapshotTable(KeyedTable):
    """Snapshots as rows; the row key is the snapshot id."""

    COLUMNS = (
        ("time", "Time"),
        ("kind", "Kind"),
        ("source", "Source"),
        ("size", "Size"),
        ("added", "Added"),
        ("status", "Status"),
    )
    RIGHT = ("size", "added")

    def __init__(self, replicas: tuple[str, ...] = (), *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.replicas = replicas  # names of the configured replicas, one column each
        self.infos: dict[str, SnapshotInfo] = {}  # the rows shown, by snapshot id

    def more_columns(self) -> None:
        for name in self.replicas:
            self.add_column(Text(name, justify="center"), key=REPLICA_KEY + name)

    @property
    def selected_id(self) -> str | None:
        """The snapshot id under the cursor, if any."""
        return self.cursor_key

    def show(self, snapshots: list[SnapshotInfo], select: str | None = None) -> None:
        """Replace the rows (newest first) and put the cursor on ``select`` or the newest."""
        self.clear()
        self.infos = {info.id: info for info in snapshots}
        for info in sorted(snapshots, key=lambda i: i.time, reverse=True):
            self.add_row(*self._cells(info), key=info.id)
        if select is not None and select in self.rows:
            self.move_cursor(row=self.get_row_index(select), scroll=True)
        elif self.row_count:
            self.move_cursor(row=0)

    def _style(self, variable: str) -> str:
        return self.app.theme_variables.get(variable, "")

    def _cells(self, info: SnapshotInfo) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and names are user data.
        if info.complete:
            status = Text("complete")
        else:
            status = Text("incomplete", style=self._style("text-warning"))
        presence = tuple(
            Text(PRESENT, style=self._style("text-success"), justify="center")
            if info.replicas.get(name)
            else Text(ABSENT, style="dim", justify="center")
            for name in self.replicas
        )
        return (
            Text(local_time(info.time)),
            Text(info.kind),
            Text(info.source),
            Text(human_bytes(info.size), justify="right"),
            Text(human_bytes(info.added), justify="right"),
            status,
            *presence,
        )
