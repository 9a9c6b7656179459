"""The help screen (``?``): every key of the screen showing, with what it does.

Like ``?`` in lazygit and k9s: a dialog over the current screen listing its
bindings and the app's (``keys_of``: read from the screen's ``active_bindings``,
the same list the footer draws from, so a remapped key shows as remapped and a
key that does nothing here is left out). A key that exists here but cannot act
now (a read-only console's ``b``, ``c`` on a finished job) is listed dimmed,
with "(not now)". Each line ends with the binding's id: the name ``[console]
keys`` in the config remaps it by (``backup = "B"``).

Also here, as they are about the same keys:

- ``console_keymap``: ``[console] keys`` checked against the ids of every binding of
  the console (``binding_ids``: the app's, each screen's, dialog's and widget's of
  ``backup_tui``). An unknown id refuses to start (``ConfigError`` with the valid ids):
  an operator who remapped a key expects it to work, and a typo found at 3 a.m. by
  pressing a key that does nothing is worse than a console that says so at start. A
  remapped key that two bindings of one screen (with the app's keys) would then share
  is a warning (``clashes``), shown at start: Textual lets one of them win. Bindings
  that share a key on purpose (``p``: to the replicas and back) move together when one
  of them is remapped.
- ``ConsoleFooter``: the footer every screen shows, the app's keys first (the screens,
  ``?``, ``q``) and then the screen's own, compact under ``COMPACT_BELOW`` columns and
  without the palette key under ``PALETTE_BELOW``, so Help and Quit stay visible at 80
  and 60 columns; the rest stays in ``?`` and the palette.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingsMap
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static
from textual.widgets._footer import FooterKey

from engine.errors import ConfigError

KEY_WIDTH = 12  # the key column; a longer list of keys pushes its description right
COMPACT_BELOW = 100  # columns: a narrower footer is compact
PALETTE_BELOW = 70  # columns: a narrower footer leaves the palette key (^p) out
_GENERIC_ACTIONS = {b.action for b in Screen.BINDINGS if isinstance(b, Binding)}  # focus, copy


@dataclass(frozen=True)
class KeyHelp:
    """One line of the help: the keys (``q, ctrl+q``), what they do, and whether they can
    act now."""

    keys: str
    description: str
    enabled: bool = True
    ids: str = field(default="", compare=False)  # the binding ids, for [console] keys


def keys_of(screen: Screen) -> list[KeyHelp]:
    """The bindings of ``screen``, then the app's, then the ones every screen has (focus,
    copy); see the module docstring. Keys of one action share a line."""
    app = screen.app
    generic = _GENERIC_ACTIONS
    lines: dict[tuple[int, str], list] = {}  # (group, action) -> [keys, descr., enabled, ids]
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if active.node not in (screen, app) or not binding.description or binding.system:
            continue
        group = 2 if binding.action in generic else (0 if active.node is screen else 1)
        shown = app.get_key_display(Binding(key, binding.action, key_display=binding.key_display))
        if (group, binding.action) not in lines:
            lines[group, binding.action] = [[], binding.description, active.enabled, []]
        line = lines[group, binding.action]
        line[0].append(shown)
        if binding.id and binding.id not in line[3]:
            line[3].append(binding.id)
    # In the order the bindings are declared (a remapped key keeps its place), by group.
    declared = [b.action for node in (screen, app) for cls in type(node).__mro__
                for b in _own_bindings(cls)]
    place = {action: declared.index(action) for action in set(declared)}
    ordered = sorted(lines.items(), key=lambda item: (item[0][0],
                                                      place.get(item[0][1], len(place))))
    return [KeyHelp(", ".join(sorted(keys, key=len)), _words(description), enabled,
                    ", ".join(ids))
            for _, (keys, description, enabled, ids) in ordered]


def _words(description: str) -> str:
    if description == "palette":  # Textual's own binding, in lower case
        return "Command palette: every action by name"
    return description[:1].upper() + description[1:]


class HelpScreen(ModalScreen[None]):
    """The keys of one screen; Esc or ``?`` closes it."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="help-close"),
        Binding("question_mark", "close", "Close", show=False, id="help"),  # as it opened
    ]

    def __init__(self, title: str, keys: list[KeyHelp]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def show_keys(self, keys: list[KeyHelp]) -> None:
        """Show ``keys`` from now on: the app keeps one help per screen and opens it again
        (laid out and rendered already), its lines rewritten only when they changed."""
        if [(k, k.ids) for k in keys] == [(k, k.ids) for k in self.keys]:
            return
        self.keys = keys
        if self.is_mounted:
            self.query_one("#help-lines", Static).update(self._lines())

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(Content(f"Keys: {self.title_text}"), id="help-title")
            with VerticalScroll(id="help-keys"):  # one widget: quicker to open than one a line
                yield Static(self._lines(), id="help-lines")
            yield Static(Content("Esc or ? closes this. In italics: the [console] keys id."),
                         id="help-hint")

    def on_resize(self) -> None:
        # The list scrolls in what the screen leaves it, so the title and the hint stay
        # (at 60x20 too): border 2, title and its margin 2, the hint and its margin 2+.
        hint = self.query_one("#help-hint", Static)
        overhead = 6 + max(0, hint.size.height - 1)
        self.query_one("#help-keys").styles.max_height = max(3, self.size.height - overhead)

    def _lines(self) -> Content:
        return Content("\n").join(self._line(line) for line in self.keys)

    @staticmethod
    def _line(line: KeyHelp) -> Content:
        # Content, not markup: descriptions are plain words.
        keys = line.keys.ljust(KEY_WIDTH - 1) + " "
        ids = ("  " + line.ids, "$text-muted italic") if line.ids else ""
        if line.enabled:
            return Content.assemble((keys, "bold $accent"), line.description, ids)
        return Content.assemble((keys, "$text-muted"), (f"{line.description} (not now)",
                                                        "$text-muted"), ids)

    @property
    def text(self) -> str:
        """The keys as plain text, one line each (tests read it)."""
        return "\n".join(self._line(line).plain for line in self.keys)

    def action_close(self) -> None:
        self.dismiss(None)


# ------------------------------------------------------------------ [console] keys
def _binding_classes() -> Iterator[type[DOMNode]]:
    """Every class of ``backup_tui`` (the app, screens, dialogs, widgets) with bindings of
    its own; the modules of ``backup_tui.screens`` and ``backup_tui.widgets`` are imported
    to find them all. The app's class is found among them once ``backup_tui.app`` is
    imported, as it is wherever a console exists (importing it here would be a cycle)."""
    import backup_tui.screens
    import backup_tui.widgets

    for package in (backup_tui.screens, backup_tui.widgets):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    seen: set[type] = set()
    todo: list[type] = [DOMNode]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                if sub.__module__.startswith("backup_tui") and sub.__dict__.get("BINDINGS"):
                    yield sub


def _own_bindings(cls: type) -> list[Binding]:
    return [b for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding)]


def binding_ids() -> dict[str, list[str]]:
    """Binding id -> where it is (the classes that have it), for the help and errors."""
    out: dict[str, list[str]] = {}
    for cls in _binding_classes():
        for binding in _own_bindings(cls):
            if binding.id:
                out.setdefault(binding.id, []).append(cls.__name__)
    return dict(sorted(out.items()))


def bindings_without_id() -> list[str]:
    """``Class: key -> action`` of each binding of the console with no id (there should be
    none: tests/test_tui_keys.py)."""
    return [f"{cls.__name__}: {b.key} -> {b.action}" for cls in _binding_classes()
            for b in _own_bindings(cls) if not b.id]


def console_keymap(keys: Mapping[str, str], where: str = "config") -> tuple[dict[str, str],
                                                                            list[str]]:
    """``[console] keys`` as the keymap to give Textual, and the clashes to warn of; see
    the module docstring. ``ConfigError`` for an id no binding of the console has."""
    known = binding_ids()
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(
            f"{where}: console.keys: no binding of the console has the id "
            f"{', '.join(repr(k) for k in unknown)} (the ids: {', '.join(known)}; ? in the "
            "console shows each key's id)")
    keymap = App._normalize_keymap(dict(keys))
    # Bindings that share a key on purpose move with a remapped one (module docstring).
    for cls in _binding_classes():
        own = BindingsMap(_own_bindings(cls)).key_to_bindings
        for shared in own.values():
            moved = [b.id for b in shared if b.id in keymap]
            for b in shared:
                if moved and b.id and b.id not in keymap:
                    keymap[b.id] = keymap[moved[0]]
    return keymap, clashes(keymap)


def clashes(keymap: Mapping[str, str]) -> list[str]:
    """Keys that two bindings of one screen would share after ``keymap`` (with the app's
    keys on a screen that is not a dialog), each as a sentence: a remapped binding on a
    key another binding of a different action keeps (or is remapped to as well)."""
    apps = [cls for cls in _binding_classes() if issubclass(cls, App)]
    if len(apps) != 1:
        raise RuntimeError(f"clashes: import backup_tui.app first (apps found: {apps})")
    BackupConsole = apps[0]  # noqa: N806 - the console's class, found (see _binding_classes)

    generic = [*App.BINDINGS, *Screen.BINDINGS,
               Binding(App.COMMAND_PALETTE_BINDING, "command_palette", "palette")]
    app_bindings = _own_bindings(BackupConsole)
    out = set()
    for cls in _binding_classes():
        if cls is BackupConsole:
            continue
        chain = _own_bindings(cls)
        if issubclass(cls, Screen) and not issubclass(cls, ModalScreen):
            chain = chain + app_bindings
        before: dict[int, set[str]] = {}  # binding -> its keys before the keymap
        on_key: dict[str, list[Binding]] = {}  # key -> the bindings on it after
        for key, bindings in BindingsMap([*chain, *generic]).key_to_bindings.items():
            for b in bindings:
                before.setdefault(id(b), set()).add(key)
                for new in keymap[b.id].split(",") if b.id in keymap else [key]:
                    on_key.setdefault(new, []).append(b)
        for key, there in on_key.items():
            pairs = [(a, b) for i, a in enumerate(there) for b in there[i + 1:]
                     if a.action.removeprefix("app.") != b.action.removeprefix("app.")
                     and not before[id(a)] & before[id(b)]]  # not sharing a key on purpose
            if pairs:
                names = " and ".join(sorted({b.id or b.action for pair in pairs
                                             for b in pair}))
                out.add(f"{cls.__name__}: {key} would be {names}")
    return sorted(out)


class ConsoleFooter(Footer):
    """The footer: the app's keys first (screens, help, quit), then the screen's; compact
    under ``COMPACT_BELOW`` columns. See the module docstring. (Textual's Footer lists the
    focused widget's keys first and the app's last, so at 80 columns Quit fell off.)"""

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        active = self.screen.active_bindings
        ordered = [a for a in active.values() if a.node is self.app]
        ordered += [a for a in active.values() if a.node is not self.app]
        seen: set[str] = set()
        compact = "-compact" if self.compact else ""
        for _node, binding, enabled, tooltip in ordered:
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            yield self._key(FooterKey(binding.key, self.app.get_key_display(binding),
                                      binding.description, binding.action,
                                      disabled=not enabled, tooltip=tooltip,
                                      classes=compact))
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            palette = active.get(self.app.COMMAND_PALETTE_BINDING)
            if palette is not None:
                binding = palette.binding
                yield self._key(FooterKey(binding.key, self.app.get_key_display(binding),
                                          binding.description, binding.action,
                                          classes="-command-palette -compact",
                                          disabled=not palette.enabled,
                                          tooltip=binding.tooltip or binding.description),
                                compact=True)  # at the right edge, always compact

    def _key(self, key: FooterKey, compact: bool | None = None) -> FooterKey:
        """A key born compact or not: Textual's footer data-binds ``compact`` to each key,
        and the binding restyles every key one by one on each recompose (most of a key
        press's time while a backup ran); a change of ``compact`` recomposes instead."""
        key.set_reactive(FooterKey.compact, self.compact if compact is None else compact)
        return key

    def bindings_changed(self, screen: Screen) -> None:
        """Recompose only when the keys shown would differ: Textual signals the bindings on
        every focus change and screen switch, and rebuilding the footer each time was most
        of a key's time while a backup ran (bench/key_latency.py). (A dialog opening or
        closing changes no binding of the screen below: ``BackupConsole.action_switch_mode``.)"""
        if self.is_attached and screen is self.screen and self._bindings_ready:
            shown = tuple((b.key, b.description, b.action, bool(enabled), b.show)
                          for _node, b, enabled, _tip in screen.active_bindings.values())
            if shown == getattr(self, "_shown", None):
                return
            self._shown = shown
        super().bindings_changed(screen)

    def on_resize(self) -> None:
        width = self.app.size.width
        if self.compact != (width < COMPACT_BELOW):
            self.compact = width < COMPACT_BELOW
            if self._bindings_ready:  # the keys are born compact or not (_key)
                self.call_after_refresh(self.recompose)
        # Under PALETTE_BELOW columns the palette key would cover the screen's keys: it
        # stays on ctrl+p, listed in ? like every key.
        if self.show_command_palette != (width >= PALETTE_BELOW):
            self.show_command_palette = width >= PALETTE_BELOW
            if self._bindings_ready:
                self.call_after_refresh(self.recompose)
