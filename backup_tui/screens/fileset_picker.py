"""A small modal that asks which fileset to back up and answers its name through ``dismiss``."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from engine.config import FilesetConfig


class FilesetPicker(ModalScreen[str | None]):
    """Choose one fileset; Enter answers its name, Escape answers None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, filesets: tuple[FilesetConfig, ...] | list[FilesetConfig]) -> None:
        super().__init__()
        self.filesets = list(filesets)

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label("Back up which fileset?", id="picker-title")
            yield OptionList(
                *(Option(Content(f"{fs.name}  ({', '.join(fs.paths)})"), id=fs.name)
                  for fs in self.filesets),
                id="picker-options",
            )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
