"""The ``/`` filter: a one-line input over a table that narrows its rows as one types.

Words (``RowFilter``): a query is tokens separated by spaces, and a row shows when
every token matches it. ``key:value`` tokens match a field of the row by prefix,
case aside: ``kind:files``, ``source:app`` (``target:`` says the same), ``status:
incomplete`` (``state:failed`` says the same). Any other token (``shop``, ``06-01``,
an id's first characters, or a ``key:value`` whose key is not a field) is *free
text*: it matches when the row's text (every cell, the id) contains it. A field a
table does not have matches nothing, so ``status:failed`` on a table without a
status shows no row rather than every row.

``FilterBar`` is the input (like k9s and lazygit): hidden until ``open``; typing
filters its table (``KeyedTable.set_filter``) live, once the keys pause for
``SETTLE`` seconds (filling a table of 10,000 snapshots takes a good part of a
second on the UI thread: once per pause, not once per key); Enter hides it and
keeps the filter (applied at once), Escape clears the filter and hides it; both
give the focus back to the table. The table's border title says what is in
effect ("2 of 6 · filter: kind:db"). After applying, the bar posts
``FilterBar.Applied`` so that a screen can show the row now under the cursor (or
say that none matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

from textual.binding import Binding
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input

ALIASES = {"state": "status", "target": "source"}  # key typed -> field it filters
FIELDS = ("kind", "source", "status")
SETTLE = 0.2  # seconds without a key before the typed filter is applied


@dataclass(frozen=True)
class RowFilter:
    """A parsed query: field prefixes and free words, all of which must match."""

    query: str = ""
    fields: tuple[tuple[str, str], ...] = ()  # (field, value prefix), lower case
    words: tuple[str, ...] = ()  # free text, lower case

    @classmethod
    def parse(cls, query: str) -> RowFilter:
        fields: list[tuple[str, str]] = []
        words: list[str] = []
        for token in query.lower().split():
            key, sep, value = token.partition(":")
            key = ALIASES.get(key, key)
            if sep and value and key in FIELDS:
                fields.append((key, value))
            else:
                words.append(token)
        return cls(" ".join(query.split()), tuple(fields), tuple(words))

    def __bool__(self) -> bool:
        return bool(self.fields or self.words)

    def matches(self, fields: dict[str, tuple[str, ...] | str], text: str) -> bool:
        """Whether a row with these ``fields`` (a value or several) and ``text`` shows."""
        text = text.lower()
        for key, prefix in self.fields:
            values = fields.get(key, ())
            values = (values,) if isinstance(values, str) else values
            if not any(v.lower().startswith(prefix) for v in values):
                return False
        return all(word in text for word in self.words)


class Filterable(Protocol):
    """What the bar needs of its table (``KeyedTable`` has it; this module cannot import
    that one, which imports this)."""

    filter: RowFilter

    def set_filter(self, query: str) -> None: ...

    def focus(self, scroll_visible: bool = True) -> Any: ...


def count_title(noun: str, shown: int, total: int, query: str) -> str:
    """``6 snapshots``, or ``2 of 6 · filter: kind:db`` while a filter is in effect."""
    if not query:
        return f"{total} {noun}"
    return f"{shown} of {total} · filter: {query}"


class FilterBar(Input):
    """The filter input of one table (``target``, a selector on the screen); see the
    module docstring."""

    BINDINGS = [
        Binding("enter", "submit", "Keep the filter", id="filter-keep"),
        Binding("escape", "clear_filter", "Clear the filter", id="filter-clear"),
    ]

    class Applied(Message):
        """The filter changed; ``bar.table`` shows the rows that match."""

        def __init__(self, bar: FilterBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, target: str, *, id: str | None = None) -> None:
        super().__init__(placeholder="filter: text, kind:files, source:NAME, status:failed",
                         id=id, classes="filter-bar")
        self.target = target
        self.display = False
        self._timer: Timer | None = None  # a typed filter waiting for the keys to pause

    @property
    def pending(self) -> bool:
        """Typed, not applied yet (see ``SETTLE``)."""
        return self._timer is not None

    @property
    def table(self) -> Filterable:
        return cast(Filterable, self.screen.query_one(self.target))

    def open(self) -> None:
        """Show the input with the filter in effect, and take the focus."""
        self.value = self.table.filter.query
        self.display = True
        self.cursor_position = len(self.value)
        self.focus()

    def close(self) -> None:
        self.display = False
        self.table.focus()

    def _on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if RowFilter.parse(event.value) != self.table.filter:  # else nothing to do
            self._timer = self.set_timer(SETTLE, self.apply)

    def apply(self) -> None:
        """Filter the table by what the input holds, now."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.table.set_filter(self.value)
        self.post_message(self.Applied(self))

    def _on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply()
        self.close()

    def action_clear_filter(self) -> None:
        self.value = ""
        self.apply()
        self.close()
