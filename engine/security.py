"""Who may change things: root or a member of ``[security] admin_group``.

Read-only actions (list, show, status, verify, dump, audit) are open to anyone
who can read the repository; mutating ones (init, backup, restore, cleanup,
pin, replicate, catalog rebuild, repository adopt, schedule changes) need an
admin.
"""

from __future__ import annotations

import grp
import os
import pwd

from engine.errors import EngineError


class NotAdmin(EngineError):
    """A mutating action was asked for by a user who is not an admin."""


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
