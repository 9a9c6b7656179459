"""Who may change things: root or a member of ``[security] admin_group``.

Read-only actions (list, show, status, verify, dump, audit) are open to anyone
who can read the repository; mutating ones (init, backup, restore, cleanup,
pin, replicate, catalog rebuild, repository adopt, schedule changes) need an
admin.

Who did it, for the audit log: the OS user, unless the code runs ``acting_as`` someone
(the HTTP API sets ``api:<key name>@<client address>`` for a request and its job).
"""

from __future__ import annotations

import contextlib
import contextvars
import grp
import os
import pwd
from collections.abc import Iterator

from engine.errors import EngineError


class NotAdmin(EngineError):
    """A mutating action was asked for by a user who is not an admin."""


_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("backup_tui_actor",
                                                                     default=None)


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Audit lines written inside this block (in this thread or asyncio context only: a
    new thread starts without it) name ``actor`` as their user instead of the OS user."""
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("acting_as needs a non-empty actor")
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def actor() -> str | None:
    """Whom the audit log names in this context (``acting_as``), or None: the OS user."""
    return _ACTOR.get()


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def is_admin(admin_group: str, uid: int | None = None, gids: list[int] | None = None) -> bool:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return True
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False
    gids = list(os.getgroups()) + [os.getegid()] if gids is None else gids
    if group.gr_gid in gids:
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return name in group.gr_mem


def require_admin(admin_group: str, action: str) -> None:
    if not is_admin(admin_group):
        raise NotAdmin(
            f"{action}: permission denied: {current_user()} is not root and not in the admin "
            f"group {admin_group!r}; read-only commands (list, show, status, verify, audit) "
            "still work"
        )
