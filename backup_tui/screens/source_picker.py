"""A small modal that asks which source to back up and answers its name through ``dismiss``.

A source is a fileset or a database; the inventory offers the filesets for ``b``
and the databases for ``d``, each with a line that says what it is (paths, or
where the database lives).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


@dataclass(frozen=True)
class SourceChoice:
    """One configured source: ``kind`` "files" or "db", its name and a line about it."""

    kind: str
    name: str
    detail: str = ""


class SourcePicker(ModalScreen[str | None]):
    """Choose one source; Enter answers its name, Escape answers None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: list[SourceChoice]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label(Content(self.title_text), id="picker-title")
            yield OptionList(
                *(Option(Content(f"{c.name}  ({c.detail})" if c.detail else c.name), id=c.name)
                  for c in self.choices),
                id="picker-options",
            )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
