"""A row-cursor DataTable whose rows are keyed (a job id, a replica, a schedule kind)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable


class KeyedTable(DataTable):
    """Columns from ``COLUMNS`` (key, label), right-aligned where the key is in ``RIGHT``."""

    COLUMNS: tuple[tuple[str, str], ...] = ()
    RIGHT: tuple[str, ...] = ()

    def on_mount(self) -> None:
        # Subclasses add columns in more_columns(), not in an on_mount of their own:
        # Textual calls the on_mount of every class in the chain.
        for key, label in self.COLUMNS:
            self.add_column(Text(label, justify="right" if key in self.RIGHT else "left"), key=key)
        self.more_columns()

    def more_columns(self) -> None:
        """Columns after COLUMNS (the snapshot table's replica columns)."""

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value
