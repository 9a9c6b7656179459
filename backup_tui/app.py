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

    def __init__(self, engine: Engine, notice: str | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.notice = notice  # shown once at start, e.g. why the demo has no database
        self.sub_title = str(engine.config.repo_path)

    def get_default_screen(self) -> Screen:
        return InventoryScreen(self.engine)

    def on_mount(self) -> None:
        if self.notice:
            self.notify(self.notice, severity="warning", timeout=10, markup=False)


def run_console(engine: Engine, notice: str | None = None) -> int:
    """Run the console until the user quits; returns the exit code."""
    app = BackupConsole(engine, notice)
    app.run()
    return app.return_code or 0
