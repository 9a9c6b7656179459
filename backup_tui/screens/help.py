"""The help screen (``?``): every key of the screen showing, with what it does.

Like ``?`` in lazygit and k9s: a dialog over the current screen listing its
bindings and the app's (``keys_of``: read from the screen's ``active_bindings``,
the same list the footer draws from, so a remapped key shows as remapped and a
key that does nothing here is left out). A key that exists here but cannot act
now (a read-only console's ``b``, ``c`` on a finished job) is listed dimmed,
with "(not now)". Esc or ``?`` closes it; the console goes on underneath.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

KEY_WIDTH = 12  # the key column; a longer list of keys pushes its description right
_GENERIC_ACTIONS = {b.action for b in Screen.BINDINGS if isinstance(b, Binding)}  # focus, copy


@dataclass(frozen=True)
class KeyHelp:
    """One line of the help: the keys (``q, ctrl+q``), what they do, and whether they can
    act now."""

    keys: str
    description: str
    enabled: bool = True


def keys_of(screen: Screen) -> list[KeyHelp]:
    """The bindings of ``screen``, then the app's, then the ones every screen has (focus,
    copy); see the module docstring. Keys of one action share a line."""
    app = screen.app
    generic = _GENERIC_ACTIONS
    lines: dict[tuple[int, str], list] = {}  # (group, action) -> [keys, description, enabled]
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if active.node not in (screen, app) or not binding.description or binding.system:
            continue
        group = 2 if binding.action in generic else (0 if active.node is screen else 1)
        shown = app.get_key_display(Binding(key, binding.action, key_display=binding.key_display))
        if (group, binding.action) in lines:
            lines[group, binding.action][0].append(shown)
        else:
            lines[group, binding.action] = [[shown], binding.description, active.enabled]
    ordered = sorted(lines.items(), key=lambda item: item[0][0])  # stable within a group
    return [KeyHelp(", ".join(sorted(keys, key=len)), _words(description), enabled)
            for _, (keys, description, enabled) in ordered]


def _words(description: str) -> str:
    if description == "palette":  # Textual's own binding, in lower case
        return "Command palette: every action by name"
    return description[:1].upper() + description[1:]


class HelpScreen(ModalScreen[None]):
    """The keys of one screen; Esc or ``?`` closes it."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="help-close"),
        Binding("question_mark", "close", "Close", show=False),
    ]

    def __init__(self, title: str, keys: list[KeyHelp]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(Content(f"Keys: {self.title_text}"), id="help-title")
            with VerticalScroll(id="help-keys"):
                for line in self.keys:
                    yield Static(self._line(line), classes="help-key")
            yield Static(Content("Esc or ? closes this."), id="help-hint")

    @staticmethod
    def _line(line: KeyHelp) -> Content:
        # Content, not markup: descriptions are plain words.
        keys = line.keys.ljust(KEY_WIDTH - 1) + " "
        if line.enabled:
            return Content.assemble((keys, "bold $accent"), line.description)
        return Content.assemble((keys, "$text-muted"), (f"{line.description} (not now)",
                                                        "$text-muted"))

    @property
    def text(self) -> str:
        """The keys as plain text, one line each (tests read it)."""
        return "\n".join(self._line(line).plain for line in self.keys)

    def action_close(self) -> None:
        self.dismiss(None)
