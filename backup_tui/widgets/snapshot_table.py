"""The inventory table: one row per snapshot, newest first, keyed by snapshot id."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable

from engine.facade import SnapshotInfo, human_bytes

TIME_FORMAT = "%Y-%m-%d %H:%M"


def local_time(moment: datetime, fmt: str = TIME_FORMAT) -> str:
    """An aware time in the local time zone."""
    return moment.astimezone().strftime(fmt)


class SnapshotTable(DataTable):
    """Snapshots as rows; the row key is the snapshot id."""

    COLUMNS = (
        ("time", "Time"),
        ("kind", "Kind"),
        ("source", "Source"),
        ("size", "Size"),
        ("added", "Added"),
        ("status", "Status"),
    )

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            justify = "right" if key in ("size", "added") else "left"
            self.add_column(Text(label, justify=justify), key=key)

    @property
    def selected_id(self) -> str | None:
        """The snapshot id under the cursor, if any."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def show(self, snapshots: list[SnapshotInfo], select: str | None = None) -> None:
        """Replace the rows (newest first) and put the cursor on ``select`` or the newest."""
        self.clear()
        for info in sorted(snapshots, key=lambda i: i.time, reverse=True):
            self.add_row(*self._cells(info), key=info.id)
        if select is not None and select in self.rows:
            self.move_cursor(row=self.get_row_index(select), scroll=True)
        elif self.row_count:
            self.move_cursor(row=0)

    def _cells(self, info: SnapshotInfo) -> tuple[Text, ...]:
        # Text, not str: DataTable would read a str as markup, and names are user data.
        if info.complete:
            status = Text("complete")
        else:
            status = Text("incomplete", style=self.app.theme_variables.get("text-warning", ""))
        return (
            Text(local_time(info.time)),
            Text(info.kind),
            Text(info.source),
            Text(human_bytes(info.size), justify="right"),
            Text(human_bytes(info.added), justify="right"),
            status,
        )
