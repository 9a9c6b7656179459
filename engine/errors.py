"""Errors the engine raises, each with the CLI exit code it maps to.

Every message is meant to be shown to an operator as is: it names the object,
file or setting at fault and, where there is one, what to do about it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: an operation failed (exit 1)."""

    exit_code = 1


class UsageError(EngineError):
    """The request itself is wrong: bad arguments, ambiguous references (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid (exit 2)."""


class RepositoryError(EngineError):
    """The repository is missing, not initialised, locked or otherwise unusable."""


class NoRepository(RepositoryError):
    """No repository at this location (its ``config`` object does not exist)."""


class WrongPassword(RepositoryError):
    """No key of the repository opens with the given password."""


class IntegrityError(EngineError):
    """An object read from the repository failed its check. Names the object."""

    def __init__(self, message: str, object_name: str = ""):
        super().__init__(message)
        self.object_name = object_name


class NotFound(EngineError):
    """A requested object, snapshot or source does not exist."""


class UnsafeEntry(IntegrityError):
    """A snapshot entry would be written outside the restore target."""


class LockedError(RepositoryError):
    """The repository is held by a conflicting lock."""


class Cancelled(EngineError):
    """The operation was cancelled by its caller."""
