"""The registry of source kinds: the one place that lists them.

Config sections, CLI words, schedules, restore planning and verification all
find a kind here, by its snapshot kind (``files``, ``db``) or its config
section (``fileset``, ``database``). Adding a kind is a module in this folder
and one line in ``kinds()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import UsageError
from engine.sources.base import Source

if TYPE_CHECKING:
    from engine.config import Config


def kinds() -> tuple[type[Source], ...]:
    """Every source kind, in the order 'backup all' runs them."""
    from engine.sources.cluster import ClusterSource
    from engine.sources.database import DatabaseSource
    from engine.sources.fileset import FilesSource

    return (DatabaseSource, ClusterSource, FilesSource)


def kind(name: str) -> type[Source]:
    """The class of a snapshot kind; UsageError for an unknown one."""
    for cls in kinds():
        if cls.kind == name:
            return cls
    known = ", ".join(cls.kind for cls in kinds())
    raise UsageError(f"unknown source kind {name!r} (known: {known})")


def sources(config: Config) -> list[Source]:
    """Every configured source, in the order 'backup all' runs them."""
    out: list[Source] = []
    for cls in kinds():
        out += [cls(c, config) for c in config.section(cls.section())]
    return out


def source(config: Config, kind_name: str, name: str) -> Source:
    """The configured source ``name`` of a kind; UsageError naming the known ones."""
    cls = kind(kind_name)
    mine = config.section(cls.section())
    for c in mine:
        if c.name == name:
            return cls(c, config)
    known = ", ".join(c.name for c in mine) or "none configured"
    raise UsageError(f"no [[{cls.section()}]] named {name!r} (known: {known})")


def find(config: Config, kind_name: str, name: str) -> Source | None:
    """The configured source, or None when it is not (or no longer) in the config."""
    try:
        return source(config, kind_name, name)
    except UsageError:
        return None


def for_schedule(config: Config, schedule: str) -> list[Source]:
    """The sources one [schedule] key backs up."""
    return [s for s in sources(config) if s.schedule == schedule]
