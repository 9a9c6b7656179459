"""The key cache: the repository's unwrapped master key in the state directory, so that a
command run very often (``wal-push`` as PostgreSQL's archive_command) does not pay the
scrypt key derivation (about 0.1 s) on every run.

The file ``<state dir>/key-cache`` is JSON::

    {"version": 1, "repository": "<config id>", "config_mac": "<config's mac>",
     "password_mac": "<hex>", "master": "<base64 of the 64-byte master key>"}

It is used only while all three bindings hold: the repository's ``config`` has this id
and this ``mac`` (a new password record, a re-keyed or a different repository changes
it), the key opens that config's authenticator (the caller checks it), and
``password_mac`` = HMAC-SHA256(the master key's MAC half, "backup-tui key cache:" +
password) matches the password given now (changing the password file retires the
cache). Anything else is a miss: the caller derives the key from the password as
usual and writes the cache again.

It is exactly as sensitive as the password file (docs/SECURITY.md): it is written with
the password file's group and at most its mode (0640 when the password file is
group-readable, else 0600; 0600 when the password comes from the environment).
Writing it is best effort and never fails a command.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

NAME = "key-cache"
MAX_SIZE = 4096


def cache_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / NAME


def _password_mac(master: bytes, password: str) -> str:
    return hmac.new(master[32:], b"backup-tui key cache:" + password.encode("utf-8"),
                    hashlib.sha256).hexdigest()


def _entry(config: dict, master: bytes, password: str) -> dict:
    return {"version": 1, "repository": config.get("id"), "config_mac": config.get("mac"),
            "password_mac": _password_mac(master, password),
            "master": base64.b64encode(master).decode("ascii")}


def load(state_dir: str | os.PathLike[str] | None, config: dict,
         password: str) -> bytes | None:
    """The cached master key for this repository config and password, or None."""
    if not state_dir or not isinstance(config.get("mac"), str):
        return None
    try:
        with open(cache_path(state_dir), "rb") as f:
            raw = f.read(MAX_SIZE + 1)
        if len(raw) > MAX_SIZE:
            return None
        doc = json.loads(raw)
        if not (isinstance(doc, dict) and doc.get("version") == 1
                and doc.get("repository") == config.get("id")
                and isinstance(doc.get("config_mac"), str)
                and hmac.compare_digest(doc["config_mac"], config["mac"])):
            return None
        master = base64.b64decode(doc.get("master", ""), validate=True)
        if len(master) != 64 or not isinstance(doc.get("password_mac"), str):
            return None
        if not hmac.compare_digest(doc["password_mac"], _password_mac(master, password)):
            return None
        return master
    except (OSError, ValueError, TypeError):
        return None


def store(state_dir: str | os.PathLike[str] | None, config: dict, master: bytes,
          password: str, password_file: str = "") -> bool:
    """Write (or leave as is, when it already holds this) the cache; True when the file
    now holds it. Never raises."""
    if not state_dir or not isinstance(config.get("mac"), str) or len(master) != 64:
        return False
    if load(state_dir, config, password) == master:
        return True
    folder = Path(state_dir)
    if not folder.is_dir():
        return False
    mode, gid = 0o600, -1
    if password_file:
        with contextlib.suppress(OSError):
            st = os.stat(password_file)
            if st.st_mode & stat.S_IRGRP:
                mode, gid = 0o640, st.st_gid
    path = cache_path(folder)
    tmp = folder / f".{NAME}.{os.getpid()}.tmp"
    data = json.dumps(_entry(config, master, password)).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if gid != -1 and gid != os.fstat(fd).st_gid:
                with contextlib.suppress(OSError):  # root, or a member of that group
                    os.fchown(fd, -1, gid)
            if os.fstat(fd).st_gid == gid or gid == -1:
                os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
