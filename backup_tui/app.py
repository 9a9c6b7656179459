"""The console: a Textual app over one Engine, opening on the inventory.

The app owns the engine and the screens; screens call the engine only from
thread workers (see backup_tui/screens/inventory.py). ``run_console`` is what
``backup-tui`` with no command runs.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from backup_tui.screens.inventory import InventoryScreen
from engine.facade import Engine


class BackupConsole(App[int]):
    """Backups of PostgreSQL and files, from the keyboard."""

    CSS_PATH = "app.tcss"
    TITLE = "backup-tui"
    BINDINGS = [Binding("q", "quit", "Quit", id="quit")]

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.sub_title = str(engine.config.repo_path)

    def get_default_screen(self) -> Screen:
        return InventoryScreen(self.engine)


def run_console(engine: Engine) -> int:
    """Run the console until the user quits; returns the exit code."""
    app = BackupConsole(engine)
    app.run()
    return app.return_code or 0
