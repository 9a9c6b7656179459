"""A detail line under a table: one row in full, after an optional status line."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static


class StatusDetail(Static):
    """Shows a body (the highlighted row in full) after a status line (what is going on)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.status = ""
        self._body: Content = Content("")

    @property
    def text(self) -> str:
        """What the detail shows, as plain text."""
        visual = self.visual
        return visual.plain if isinstance(visual, Content) else str(visual)

    def show(self, body: Content | None = None, status: str | None = None) -> None:
        """Replace the body, the status line, or both."""
        if body is not None:
            self._body = body
        if status is not None:
            self.status = status
        head = [Content.styled(self.status, "italic $foreground-muted")] if self.status else []
        self.update(Content("\n").join([*head, self._body]))
