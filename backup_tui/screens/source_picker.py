"""A small modal that asks which source to back up and answers it through ``dismiss``.

Every configured source, as the engine describes it (``SourceInfo``): its
label ("fileset", "database"), its name and its one-line description (the
paths, or where the connection goes), grouped by label in the order the engine
gives them, a separator between groups. ``sources`` is that display order. The
dialog is at most 64 columns and never wider or taller than the screen: at 60x20
a long description wraps and the list scrolls under the title.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

if TYPE_CHECKING:
    from engine.sources.base import SourceInfo

OPTIONS_HEIGHT = 16  # rows of the list at most


def grouped(sources: list[SourceInfo]) -> list[list[SourceInfo]]:
    """The sources by label, labels in order of first appearance."""
    groups: dict[str, list[SourceInfo]] = {}
    for source in sources:
        groups.setdefault(source.label, []).append(source)
    return list(groups.values())


class SourcePicker(ModalScreen["SourceInfo | None"]):
    """Choose one source; Enter answers it, Escape answers None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker-cancel")]

    def __init__(self, title: str, sources: list[SourceInfo]) -> None:
        super().__init__()
        self.title_text = title
        self.sources = [s for group in grouped(sources) for s in group]  # as listed

    def compose(self) -> ComposeResult:
        label_width = max(len(s.label) for s in self.sources)
        name_width = max(len(s.name) for s in self.sources)
        options: list[Option | None] = []
        for i, source in enumerate(self.sources):
            if i and source.label != self.sources[i - 1].label:
                options.append(None)  # a separator between labels
            options.append(Option(self._prompt(source, label_width, name_width), id=str(i)))
        with Vertical(id="picker"):
            yield Label(Content(self.title_text), id="picker-title")
            yield OptionList(*options, id="picker-options")

    @staticmethod
    def _prompt(source: SourceInfo, label_width: int, name_width: int) -> Content:
        # Content, not markup: names and descriptions are user data.
        return Content.assemble(
            (f"{source.label:<{label_width}}  ", "$foreground-muted"),
            f"{source.name:<{name_width}}",
            (f"  {source.description}" if source.description else "", "$foreground-muted"),
        )

    def on_resize(self) -> None:
        # The list scrolls in what the screen leaves it: border 2, padding 2, title 2.
        self.query_one("#picker-options").styles.max_height = max(
            3, min(OPTIONS_HEIGHT, self.size.height - 6))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.sources[int(event.option.id or 0)])

    def action_cancel(self) -> None:
        self.dismiss(None)
