"""A row-cursor DataTable whose rows are keyed (a job id, a replica, a schedule kind).

Two things every such table of the console shares:

- *Levels*: the columns shown depend on the table's own width. ``LEVELS`` lists
  ``(minimum width, level)`` pairs, widest first; ``HIDDEN`` names the columns a level
  leaves out. When a resize crosses a level, the columns are built again and the rows
  shown again (``refill``), the cursor staying on its row. A subclass may also shape
  its cells by ``self.level`` (a short time, ticks instead of words).
- *The filter* (``/``, see ``backup_tui.widgets.filter_bar``): ``set_filter`` parses
  a query; a subclass's ``show`` keeps the rows ``self.shows(fields, text)`` lets
  through, and ``show_count`` puts "2 of 6 · filter: kind:db" in the border title.
  A reload keeps the filter: it lives here, not in the data.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from backup_tui.widgets.filter_bar import RowFilter, count_title

FULL, COMPACT, NARROW = "full", "compact", "narrow"


class KeyedTable(DataTable):
    """Columns from ``COLUMNS`` (key, label), right-aligned where the key is in ``RIGHT``."""

    COLUMNS: tuple[tuple[str, str], ...] = ()
    RIGHT: tuple[str, ...] = ()
    LEVELS: tuple[tuple[int, str], ...] = ((0, FULL),)  # (minimum width, level), widest first
    HIDDEN: dict[str, tuple[str, ...]] = {}  # level -> keys of COLUMNS it leaves out
    NOUN = "rows"  # what the border title counts

    level = FULL  # until the first resize says otherwise
    filter = RowFilter()

    def on_mount(self) -> None:
        # Subclasses add columns in more_columns(), not in an on_mount of their own:
        # Textual calls the on_mount of every class in the chain.
        self._add_columns()

    def _add_columns(self) -> None:
        for key, label in self.visible_columns():
            self.add_column(Text(self.label(key, label),
                                 justify="right" if key in self.RIGHT else "left"), key=key)
        self.more_columns()

    def visible_columns(self) -> list[tuple[str, str]]:
        """``COLUMNS`` less those the current level leaves out."""
        hidden = self.HIDDEN.get(self.level, ())
        return [(k, label) for k, label in self.COLUMNS if k not in hidden]

    def visible(self, cells: tuple[Text, ...]) -> tuple[Text, ...]:
        """The cells of the visible columns, from cells given in ``COLUMNS`` order (and any
        after them: ``more_columns``)."""
        hidden = self.HIDDEN.get(self.level, ())
        keys = [k for k, _ in self.COLUMNS]
        return tuple(c for i, c in enumerate(cells) if i >= len(keys) or keys[i] not in hidden)

    def label(self, key: str, label: str) -> str:
        """A column's heading at the current level (a subclass may shorten it)."""
        return label

    def more_columns(self) -> None:
        """Columns after COLUMNS (the snapshot table's replica columns)."""

    # ---------------------------------------------------------------- levels
    def level_for(self, width: int) -> str:
        return next((level for least, level in self.LEVELS if width >= least),
                    self.LEVELS[-1][1])

    def on_resize(self, event: events.Resize) -> None:
        level = self.level_for(event.size.width)
        if level != self.level:
            self.level = level
            self.rebuild()

    def rebuild(self) -> None:
        """Columns for the current level, then the rows again, the cursor on its row."""
        key = self.cursor_key
        self.clear(columns=True)
        self._add_columns()
        self.refill()
        if key is not None and key in self.rows:
            self.move_cursor(row=self.get_row_index(key))

    def refill(self) -> None:
        """Show the rows again from the data last shown (after columns or filter changed)."""

    # ---------------------------------------------------------------- filter
    def set_filter(self, query: str) -> None:
        """Filter the rows by ``query`` (see ``filter_bar.RowFilter``); "" shows them all."""
        parsed = RowFilter.parse(query)
        if parsed != self.filter:
            self.filter = parsed
            self.refill()

    def shows(self, fields: dict[str, tuple[str, ...] | str], text: str) -> bool:
        """Whether the filter in effect lets a row through."""
        return not self.filter or self.filter.matches(fields, text)

    def show_count(self, total: int) -> None:
        """The border title: how many rows, and the filter in effect."""
        query = self.filter.query if self.filter else ""
        self.border_title = count_title(self.NOUN, self.row_count, total, query)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value
