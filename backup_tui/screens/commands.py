"""Command palette entries of the inventory: one per source it can back up, and replication.

"Back up files now: <fileset>" for each fileset, "Back up database now: <name>"
for each database, and "Replicate now" when replicas are configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from backup_tui.screens.source_picker import SourceChoice

_TEXT = {"files": "Back up files now: {}", "db": "Back up database now: {}"}
_HELP = {"files": "Back up {} into the repository", "db": "pg_dump {} into the repository"}
REPLICATE = "Replicate now"


@runtime_checkable
class JobHost(Protocol):
    """A screen that can start a backup or a replication (the inventory)."""

    def backup_choices(self) -> list[SourceChoice]: ...

    def start_backup(self, kind: str, name: str) -> None: ...

    def replica_names(self) -> list[str]: ...

    def start_replication(self) -> None: ...


class JobCommands(Provider):
    """One command per configured source, and "Replicate now", while a ``JobHost`` is active."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        host = self.screen
        if not isinstance(host, JobHost):
            return
        for choice in host.backup_choices():
            yield (
                _TEXT[choice.kind].format(choice.name),
                partial(host.start_backup, choice.kind, choice.name),
                _HELP[choice.kind].format(choice.detail or choice.name),
            )
        names = host.replica_names()
        if names:
            yield (REPLICATE, host.start_replication,
                   f"Copy what each S3 replica lacks: {', '.join(names)}")

    async def discover(self) -> Hits:
        for text, command, help_text in self._commands():
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, command, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
