"""Command palette entries: the inventory's jobs, and the console's screens and schedules.

``JobCommands`` (the inventory): "Verify… snapshot <id>" for the snapshot under
the cursor and "Verify… every snapshot", each also "reading all data" (verify
changes nothing: a read-only console has them too), "Back up <label> now:
<name>" for each source the engine lists ("Back up fileset now: uploads"), with
its description as the help, "Replicate now" when replicas are configured, and
"Restore <noun>…" ("Restore database…", "Restore files…") for what the sources
restore.
``ConsoleCommands`` (every screen): "Inventory", "Jobs", "Schedule", and for
each schedule "Run now: <kind>" and "Pause: <kind>" or "Resume: <kind>" (the
schedules are read off the UI thread when the palette opens; no "Run now" for a
schedule with nothing to run); these post a ``ScheduleActionRequested`` that the
app acts on. Commands that change things
are left out of a read-only console.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message

from backup_tui.messages import ScheduleActionRequested

if TYPE_CHECKING:
    from engine.sources.base import SourceInfo

REPLICATE = "Replicate now"


class _ListedCommands(Provider):
    """A provider over a list of (text, callback, help): discovery shows them all, search
    matches their text. Subclasses give ``_commands``."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        raise NotImplementedError

    async def discover(self) -> Hits:
        for text, command, help_text in self._commands():
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, command, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)


@runtime_checkable
class JobHost(Protocol):
    """A screen that can start a backup or a replication (the inventory)."""

    def backup_choices(self) -> list[SourceInfo]: ...

    def start_backup(self, source: SourceInfo) -> None: ...

    def replica_names(self) -> list[str]: ...

    def start_replication(self) -> None: ...

    read_only: bool


@runtime_checkable
class VerifyHost(Protocol):
    """A screen that verifies snapshots (the inventory)."""

    def selected_snapshot(self) -> str | None: ...

    def start_verify(self, snapshot_id: str | None, read_data: bool = False) -> None: ...


VERIFY = "Verify…"
READ_DATA = ", reading all data"


def verify_commands(host: VerifyHost) -> Iterator[tuple[str, Callable[[], None], str]]:
    """"Verify… snapshot <id>" (the one under the cursor) and "Verify… every snapshot", each
    quick and reading all data."""
    selected = host.selected_snapshot()
    targets = ([(f"snapshot {selected[:8]}", selected)] if selected else []) + [
        ("every snapshot", None)]
    for what, ref in targets:
        yield (f"{VERIFY} {what}", partial(host.start_verify, ref, False),
               "Check the structure: trees, index, every pack present at its size (v)")
        yield (f"{VERIFY} {what}{READ_DATA}", partial(host.start_verify, ref, True),
               "Also read every pack and authenticate every blob: slower (V)")


class JobCommands(_ListedCommands):
    """Verify, one command per configured source, and "Replicate now", while a ``JobHost``
    is active; only verify in a read-only console."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        host = self.screen
        if isinstance(host, VerifyHost):
            yield from verify_commands(host)
        if not isinstance(host, JobHost) or host.read_only:
            return
        for source in host.backup_choices():
            yield (f"Back up {source.label} now: {source.name}",
                   partial(host.start_backup, source),
                   f"Back up {source.title} into the repository"
                   + (f": {source.description}" if source.description else ""))
        names = host.replica_names()
        if names:
            yield (REPLICATE, host.start_replication,
                   f"Copy what each S3 replica lacks: {', '.join(names)}")
        if isinstance(host, RestoreHost):
            for noun in host.restore_nouns():
                yield (f"Restore {noun}…", partial(host.restore_noun, noun),
                       f"The restore wizard for the newest snapshot of a {noun} source "
                       "(Enter on a snapshot opens it for that one)")


@runtime_checkable
class RestoreHost(Protocol):
    """A screen that opens the restore wizard (the inventory)."""

    def restore_nouns(self) -> list[str]: ...

    def restore_noun(self, noun: str) -> None: ...


@runtime_checkable
class RecoveryHost(Protocol):
    """A screen that can open the point-in-time wizard (the inventory)."""

    read_only: bool

    def open_pitr(self) -> None: ...


PITR = "Point-in-time recovery…"


class RecoveryCommands(_ListedCommands):
    """"Point-in-time recovery…" while a ``RecoveryHost`` is active (admins only)."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        host = self.screen
        if isinstance(host, RecoveryHost) and not host.read_only:
            yield (PITR, host.open_pitr, "Recover a cluster to a time (base backup + WAL), "
                   "or a database from its newest dump before a time (t)")


@runtime_checkable
class ConsoleHost(Protocol):
    """The app: its modes (screens) and the schedules."""

    read_only: bool
    current_mode: str

    def switch_mode(self, mode: str) -> object: ...

    def post_message(self, message: Message) -> bool: ...

    def schedules_for_palette(self) -> list[dict]: ...


def _request(host: ConsoleHost, kind: str, action: str) -> Callable[[], object]:
    """A command that asks the app for ``action`` of schedule ``kind``."""
    return lambda: host.post_message(ScheduleActionRequested(kind, action))


SCREENS = (  # mode, text, help
    ("inventory", "Inventory", "Snapshots and replicas (i)"),
    ("jobs", "Jobs", "Running and recent jobs of every process, live (j)"),
    ("schedule", "Schedule", "Each schedule, its next and last run; run now, pause (s)"),
)


class ConsoleCommands(_ListedCommands):
    """The screens, and run now / pause / resume for each schedule (admins only)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._schedules: list[dict] = []

    async def startup(self) -> None:
        host = self.app
        self._schedules = []
        if isinstance(host, ConsoleHost) and not host.read_only:
            try:  # a catalog read: off the UI thread
                self._schedules = await asyncio.to_thread(host.schedules_for_palette)
            except Exception:  # noqa: BLE001 - the palette works without the schedule part
                self._schedules = []

    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        host = self.app
        if not isinstance(host, ConsoleHost):
            return
        for mode, text, help_text in SCREENS:
            if mode != host.current_mode:
                yield text, partial(host.switch_mode, mode), help_text
        for s in self._schedules:
            kind = s["kind"]
            if s.get("runnable", True):  # else there is nothing to run (schedule screen)
                yield (f"Run now: {kind}", _request(host, kind, "run"),
                       f"Ask the scheduler to {s['what']} now")
            if s["paused"]:
                yield (f"Resume: {kind}", _request(host, kind, "resume"),
                       f"Run {kind} on its schedule again ({s['cron']})")
            else:
                yield (f"Pause: {kind}", _request(host, kind, "pause"),
                       f"Skip the scheduled runs of {kind} until resumed")
