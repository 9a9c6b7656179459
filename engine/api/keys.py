"""API keys: who may call the daemon's HTTP API, and with which role.

The keys live in ``<state dir>/api-keys.json`` (mode 0600, replaced atomically: a temporary
file, then a rename). The file never holds a key: per key it keeps the name, the role, the
key id, a random salt, SHA-256 over salt + secret, the creation time and the revocation
time (null while the key is active).

A key's text is ``btk_<keyid>_<secret>``: the key id (8 hex characters) finds the record,
the secret (32 random bytes, URL-safe base64) proves it. The hash is compared with
``hmac.compare_digest``. No slow key derivation (scrypt, PBKDF2) is used on purpose: the
secret is 256 random bits, not a password a person chose, so there is nothing to guess
faster with a fast hash, and every API request stays cheap.

A ``KeyStore`` rereads the file when its inode, size or mtime changed, so a key created or
revoked by ``backup-tui api-key`` takes effect in a running daemon at its next request.
Changes (create, revoke) are serialised across processes with flock on ``api-keys.lock``.
The last time a key was used is not recorded: writing the file on every request would race
the CLI; the API's audit lines name the key of every change instead.

Standard library only (and ``engine.errors``): the ``api-key`` CLI imports this without
the web stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import EngineError, NotFound, UsageError

log = logging.getLogger("backup_tui.engine")

ROLES = ("viewer", "operator", "admin")  # each includes the ones before it
FILE_NAME = "api-keys.json"
LOCK_NAME = "api-keys.lock"
PREFIX = "btk"
MAX_FILE_BYTES = 16 * 1024 * 1024

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY = re.compile(r"btk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")  # token_urlsafe(32): 43 chars
_HEX = re.compile(r"[0-9a-f]+")
_DUMMY_SALT = bytes(16)  # an unknown key id still costs one hash (same work either way)
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True)
class ApiKey:
    """An authenticated key: its name and role."""

    name: str
    role: str

    def allows(self, role: str) -> bool:
        """Whether this key's role includes ``role`` (admin > operator > viewer)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hash(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode("ascii")).hexdigest()


def parse_key(text: object) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key text, else None."""
    if not isinstance(text, str) or len(text) > 128:
        return None
    m = _KEY.fullmatch(text.strip())
    return (m.group(1), m.group(2)) if m else None


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"API key name {name!r}: use 1 to 64 characters of A-Z, a-z, 0-9, "
                         "'_', '.' and '-'")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: the roles are {', '.join(ROLES)}")


def _valid_record(r: Any) -> bool:
    if not isinstance(r, dict):
        return False
    strings = ("name", "role", "key_id", "salt", "hash", "created")
    if not all(isinstance(r.get(k), str) for k in strings):
        return False
    return (bool(_NAME.fullmatch(r["name"])) and r["role"] in ROLES
            and len(r["key_id"]) == 8 and bool(_HEX.fullmatch(r["key_id"]))
            and bool(_HEX.fullmatch(r["salt"])) and len(r["salt"]) % 2 == 0
            and len(r["hash"]) == 64 and bool(_HEX.fullmatch(r["hash"]))
            and (r.get("revoked") is None or isinstance(r.get("revoked"), str)))


class KeyStore:
    """The API keys of one state directory (``api-keys.json``). Thread-safe."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self._lock = threading.Lock()
        self._sig: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) read last
        self._records: list[dict] = []
        self._active: dict[str, dict] = {}  # key id -> record of a key not revoked
        self._failed_sig: object = None  # the file state last warned about

    # ------------------------------------------------------------------ public
    def create(self, name: str, role: str) -> str:
        """A new key; returns its text, the only time it is ever seen. A name that is in
        use by a key not revoked, a bad name or an unknown role -> UsageError."""
        check_name(name)
        check_role(role)
        out: list[str] = []

        def add(records: list[dict]) -> None:
            if any(r["name"] == name and r.get("revoked") is None for r in records):
                raise UsageError(f"an API key named {name!r} exists; revoke it first "
                                 f"(backup-tui api-key revoke {name}) or choose another name")
            ids = {r["key_id"] for r in records}
            key_id = secrets.token_hex(4)
            while key_id in ids:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            records.append({"name": name, "role": role, "key_id": key_id, "salt": salt.hex(),
                            "hash": _hash(salt, secret), "created": _now(), "revoked": None})
            out.append(f"{PREFIX}_{key_id}_{secret}")

        self._change(add)
        return out[0]

    def list(self) -> list[dict]:
        """Every key, revoked ones too, oldest first: name, role, created, revoked."""
        with self._lock:
            self._refresh(strict=True)
            return [{"name": r["name"], "role": r["role"], "created": r["created"],
                     "revoked": r.get("revoked")} for r in self._records]

    def revoke(self, name: str) -> None:
        """Revoke the active key of this name (NotFound when there is none)."""

        def mark(records: list[dict]) -> None:
            for r in records:
                if r["name"] == name and r.get("revoked") is None:
                    r["revoked"] = _now()
                    return
            raise NotFound(f"no active API key named {name!r} (backup-tui api-key list "
                           "shows them)")

        self._change(mark)

    def authenticate(self, text: object) -> ApiKey | None:
        """The key this text is, when it is a key of this store and not revoked; else
        None. Never raises: an unreadable or damaged file admits no key (and is logged)."""
        parsed = parse_key(text)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._lock:
            self._refresh(strict=False)
            rec = self._active.get(key_id)
        salt, want = ((bytes.fromhex(rec["salt"]), rec["hash"]) if rec
                      else (_DUMMY_SALT, _DUMMY_HASH))
        if hmac.compare_digest(_hash(salt, secret), want) and rec is not None:
            return ApiKey(rec["name"], rec["role"])
        return None

    # ----------------------------------------------------------------- reading
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise EngineError(f"{self.path}: cannot read it: {e.strerror}") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self, strict: bool) -> None:
        """Reread the file when it changed (caller holds self._lock)."""
        try:
            sig = self._stat()
            if sig == self._sig and sig is not None:
                return
            sig, records = self._read()
        except EngineError as e:
            if strict:
                raise
            self._use(None, [])  # no key is admitted while the file cannot be read
            if self._failed_sig != str(e):
                self._failed_sig = str(e)
                log.error("API keys: %s; every API key is refused until it is fixed", e)
            return
        self._failed_sig = None
        self._use(sig, records)

    def _use(self, sig: tuple[int, int, int] | None, records: list[dict]) -> None:
        self._sig, self._records = sig, records
        self._active = {r["key_id"]: r for r in records if r.get("revoked") is None}

    def _read(self) -> tuple[tuple[int, int, int] | None, list[dict]]:
        """(signature, records) of the file as it is now; a missing file has no keys."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, []
        except PermissionError:
            from engine.security import current_user

            raise EngineError(f"{self.path}: {current_user()} may not read it (the API key "
                              "file is mode 0600, root's or an admin's)") from None
        except OSError as e:
            raise EngineError(f"{self.path}: cannot read it: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_size > MAX_FILE_BYTES:
                raise EngineError(f"{self.path}: {st.st_size} bytes, more than an API key file "
                                  f"may hold ({MAX_FILE_BYTES})")
            if st.st_mode & 0o077:
                log.warning("%s is readable or writable by others (mode %o); it should be "
                            "0600", self.path, st.st_mode & 0o777)
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise EngineError(f"{self.path}: cannot read it: {e.strerror}") from None
        finally:
            os.close(fd)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise EngineError(f"{self.path}: not a valid API key file ({e}); fix or move it "
                              "aside (every key in it stops working)") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list) or not all(_valid_record(r) for r in keys):
            raise EngineError(f"{self.path}: not a valid API key file (a 'keys' list of "
                              "records with name, role, key_id, salt, hash, created, revoked)")
        return (st.st_ino, st.st_size, st.st_mtime_ns), keys

    # ----------------------------------------------------------------- writing
    def _change(self, fn: Callable[[list[dict]], None]) -> None:
        """Read, change and replace the file, under the cross-process lock."""
        with self._lock, self._file_lock():
            _sig, records = self._read()
            fn(records)
            self._write(records)
            self._use(self._stat(), records)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        try:
            fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise EngineError(f"{self.dir / LOCK_NAME}: cannot open it: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write(self, records: list[dict]) -> None:
        data = json.dumps({"version": 1, "keys": records}, indent=2).encode() + b"\n"
        tmp = self.dir / f".{FILE_NAME}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise EngineError(f"{self.path}: cannot write it: {e.strerror}") from None
        with contextlib.suppress(OSError):
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


__all__ = ["ROLES", "ApiKey", "KeyStore", "parse_key", "check_name", "check_role"]
