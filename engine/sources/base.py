"""The source interface: what every kind of thing we back up provides.

A *source* is one configured thing to back up (a ``[[fileset]]``, a
``[[database]]``); its *kind* is the word its snapshots carry (``files``,
``db``). Each kind is one class here in ``engine/sources/``, registered in
``engine/sources/registry.py``; nothing else in the engine or the console
branches on a kind, so a new kind touches this folder and the registry only.
See docs/ARCHITECTURE.md for where this sits.

The backup side is an instance method: the generic skeleton in
``engine/ops/backup.py`` takes the locks, finds the parent snapshot, opens the
repository writer, calls ``Source.backup`` with a ``BackupContext``, commits,
and writes the snapshot record from the ``BackupOutput`` it gets back.

The restore side is on the class, because a snapshot can be restored when its
source is no longer configured (files) or needs the config only to find a
server (databases): ``plan_restore`` validates and returns a plan a wizard can
show; ``restore`` executes it. ``verify_snapshot`` adds checks of the kind's
own (a database archive's table of contents, say) to ``verify``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from engine.events import CancelToken, EventCallback

if TYPE_CHECKING:
    from engine.config import Config
    from engine.repo.repository import BlobWriter, Repository

Retention = tuple[tuple[str, int], ...]  # a source's own retention keys, sorted


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """The keys every source section has; each kind's config extends it."""

    section: ClassVar[str] = ""  # the config array, e.g. "fileset"

    name: str
    max_age_hours: int = 0  # health limit of this source; 0: [health] max_age_hours
    retention: Retention = ()  # keys over [retention] for this source's snapshots

    def validate(self, where: str, prefix: str) -> None:
        """Checks beyond types (ConfigError naming ``where`` and ``prefix``)."""


@dataclass(frozen=True)
class SourceInfo:
    """A configured source as screens, the CLI and status reports show it."""

    kind: str  # the snapshot kind: "files", "db"
    name: str
    label: str  # what one is called: "fileset", "database"
    description: str  # one line: the paths, or where the connection goes
    schedule: str  # the [schedule] key whose runs back it up
    details: tuple[tuple[str, str], ...] = ()  # further (label, value) lines for a detail pane

    @property
    def target(self) -> str:
        """The job target of its backups: ``kind:name``."""
        return f"{self.kind}:{self.name}"

    @property
    def title(self) -> str:
        """``fileset uploads``, ``database app``."""
        return f"{self.label} {self.name}"

    def as_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "label": self.label,
                "description": self.description, "schedule": self.schedule,
                "details": dict(self.details)}


@dataclass
class BackupContext:
    """What the backup skeleton hands a source."""

    repo: Repository
    writer: BlobWriter
    parent: dict | None  # the newest snapshot of this source, if any (already checked usable)
    job_id: str
    on_event: EventCallback
    cancel: CancelToken
    scratch: Path  # a private folder for what must touch disk (directory-format dumps)


@dataclass
class BackupOutput:
    """What a source's backup returns; the skeleton turns it into the snapshot record."""

    fields: dict[str, Any]  # the kind's own snapshot fields: tree or stream, paths, facts
    size: int  # bytes of the source
    stats: dict[str, int] = field(default_factory=dict)  # files, dirs, bytes_read, ...
    errors: list[dict] = field(default_factory=list)  # entries not read: snapshot incomplete
    warnings: list[str] = field(default_factory=list)
    items: int = 0  # files (or other items) backed up, for progress and the result


@dataclass
class KindCheck:
    """What a kind's own check of one snapshot found (see ``Source.verify_snapshot``)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: bool = False  # the check ran to the end (counted in the verify report)


class RestorePlan(Protocol):
    """A plan any kind's ``plan_restore`` returns: shown before anything is written."""

    snapshot: dict

    def summary(self) -> dict: ...

    @property
    def target_label(self) -> str: ...


@dataclass(frozen=True)
class RestoreForm:
    """What restoring a kind's snapshot asks for: a wizard's target step, kind-blind.

    ``into`` is what the target is ("directory", "database"), or "" when this kind's
    snapshots are restored another way (``instead`` says how). ``option`` is the
    ``plan_restore`` option the target goes to; ``default`` a suggested target;
    ``replaces`` the target that replaces what was backed up (the source database),
    with ``replace_option`` the plan option that allows it; ``paths_option`` the plan
    option taking a selection of paths inside the snapshot (a browsable tree)."""

    into: str
    option: str = ""
    default: str = ""
    replaces: str = ""
    replace_option: str = ""
    paths_option: str = ""
    instead: str = ""
    noun: str = ""  # what a menu calls restoring it: "Restore <noun>…"
    on_stop: str = ""  # what a restore that stopped part way leaves behind


@dataclass
class RestoreCheck:
    """What a restore's validation found (``Source.check_restore``): ``lines`` one finding
    each, ``problems`` what does not match, ``rows`` (name, count now, count recorded
    with the snapshot or None) for a table of counts."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rows: list[tuple[str, int, int | None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Source:
    """One configured source of one kind. Subclasses set the class variables."""

    kind: ClassVar[str]  # the snapshot kind
    config_type: ClassVar[type[SourceConfig]]  # its config section's dataclass
    label: ClassVar[str]  # what a screen calls one
    schedule: ClassVar[str]  # the [schedule] key that backs up every source of this kind
    default_cron: ClassVar[str]  # that schedule's default
    schedule_text: ClassVar[str]  # what that schedule does, for the schedule screen
    example_name: ClassVar[str] = "NAME"  # a source name for help examples (as in the README)
    archives_wal: ClassVar[bool] = False  # its WAL is archived (wal-push), shipped to the
    # replicas and shown per copy by status and health (engine/ops/walship.py)

    def __init__(self, config: Any, engine_config: Config | None = None):
        self.config = config
        self.engine_config = engine_config

    @classmethod
    def section(cls) -> str:
        return cls.config_type.section

    @property
    def name(self) -> str:
        return self.config.name

    # ------------------------------------------------------------ describe
    def description(self) -> str:
        raise NotImplementedError

    def details(self) -> Mapping[str, str]:
        """Further facts for status and detail panes (no secrets); must not block long."""
        return {}

    def status_fields(self) -> dict[str, Any]:
        """Fields of the kind's own in ``status --json`` (no secrets)."""
        return {}

    def info(self) -> SourceInfo:
        return SourceInfo(self.kind, self.name, self.label, self.description(), self.schedule,
                          tuple(self.details().items()))

    @property
    def max_age_hours(self) -> int:
        """This source's own health limit; 0: the [health] default."""
        return int(self.config.max_age_hours)

    @property
    def retention(self) -> dict[str, int]:
        """This source's retention keys over [retention]."""
        return dict(self.config.retention)

    # ------------------------------------------------------------- backup
    def check(self) -> None:
        """Fail early (EngineError) when the source cannot be backed up at all."""

    def usable_parent(self, parent: dict) -> bool:
        """Whether the newest snapshot can serve as this backup's parent."""
        return True

    def backup(self, ctx: BackupContext) -> BackupOutput:
        raise NotImplementedError

    # ------------------------------------------------------------ restore
    @classmethod
    def plan_restore(cls, config: Config, repo: Repository, snap: dict,
                     **options: Any) -> RestorePlan:
        raise NotImplementedError

    @classmethod
    def reject_options(cls, unknown: Mapping[str, Any]) -> None:
        """UsageError for restore options another kind takes (``target_db`` on files)."""
        if unknown:
            from engine.errors import UsageError

            raise UsageError(f"{', '.join(sorted(unknown))}: not an option of restoring a "
                             f"{cls.label} snapshot")

    @classmethod
    def restore(cls, config: Config, repo: Repository, plan: Any, job_id: str,
                on_event: EventCallback, cancel: CancelToken | None) -> Any:
        raise NotImplementedError

    @classmethod
    def restore_form(cls, snap: dict) -> RestoreForm:
        """What a wizard asks before ``plan_restore`` (see ``RestoreForm``)."""
        return RestoreForm("", instead=f"a {cls.label} snapshot cannot be restored here")

    @classmethod
    def check_target(cls, value: str) -> None:
        """UsageError when ``value`` cannot be a target of this kind's restores."""

    @classmethod
    def check_restore(cls, config: Config, repo: Repository, plan: Any, result: Any,
                      drills: list[dict]) -> RestoreCheck:
        """Validate a finished restore (``drills``: those recorded of its snapshot)."""
        return RestoreCheck()

    # ------------------------------------------------------------- verify
    @classmethod
    def verify_snapshot(cls, repo: Repository, snap: dict) -> KindCheck | None:
        """A check of the kind's own on a snapshot whose blobs all read back (verify
        --read-data); None when the kind has none."""
        return None
