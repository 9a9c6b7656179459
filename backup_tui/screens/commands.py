"""Command palette entries of the inventory: "Back up now: <fileset>" for each fileset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from engine.config import FilesetConfig


@runtime_checkable
class BackupHost(Protocol):
    """A screen that can start a backup (the inventory)."""

    def backup_filesets(self) -> tuple[FilesetConfig, ...]: ...

    def start_backup(self, name: str) -> None: ...


class BackupCommands(Provider):
    """One command per configured fileset, offered while a ``BackupHost`` screen is active."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        host = self.screen
        if not isinstance(host, BackupHost):
            return
        for fs in host.backup_filesets():
            yield (
                f"Back up now: {fs.name}",
                partial(host.start_backup, fs.name),
                f"Back up {', '.join(fs.paths)} into the repository",
            )

    async def discover(self) -> Hits:
        for text, command, help_text in self._commands():
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, command, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
