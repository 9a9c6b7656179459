"""Configuration: the TOML contract of DESIGN.md section 11, loaded and validated.

`load_config(path)` returns a frozen `Config` or raises `ConfigError` with one
line naming the file and the key at fault. The schema below is the single
source of truth for keys, types and defaults; `config.example.toml` documents it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

REQUIRED = object()

# section -> key -> (type or tuple of types, default or REQUIRED)
_TABLES: dict[str, dict[str, tuple[Any, Any]]] = {
    "repository": {
        "path": (str, REQUIRED),
        "password_file": (str, ""),
        "compression": (str, "zstd:3"),
    },
    "state": {"dir": (str, "/var/lib/backup-tui/state")},
    "schedule": {
        "timezone": (str, "UTC"),
        "database": (str, "0 2 * * *"),
        "files": (str, "0 3 * * *"),
        "cleanup": (str, "0 4 * * sun"),
        "verify": (str, "0 */6 * * *"),
        "replicate": (str, "*/5 * * * *"),
        "drill": (str, "0 5 * * sat"),
        "grace_seconds": (int, 120),
    },
    "retention": {
        "keep_last": (int, 7),
        "keep_hourly": (int, 0),
        "keep_daily": (int, 14),
        "keep_weekly": (int, 8),
        "keep_monthly": (int, 12),
        "keep_yearly": (int, 0),
        "keep_within_days": (int, 0),
    },
    "security": {"admin_group": (str, "backup-admins")},
    "notify": {
        "webhook_url": (str, ""),
        "command": (str, ""),
        "on_success": (bool, False),
        "timeout_seconds": (int, 10),
    },
    "health": {
        "max_age_hours": (int, 26),
        "replica_max_age_hours": (int, 2),
    },
    "metrics": {"textfile": (str, ""), "listen": (str, "")},
}

_ARRAYS: dict[str, dict[str, tuple[Any, Any]]] = {
    "replica": {
        "name": (str, REQUIRED),
        "bucket": (str, REQUIRED),
        "region": (str, REQUIRED),
        "prefix": (str, ""),
        "endpoint_url": (str, ""),
        "profile": (str, ""),
        "storage_class": (str, "STANDARD"),
        "object_lock_days": (int, 0),
        "object_lock_mode": (str, "GOVERNANCE"),
        "replicate_after_backup": (bool, True),
    },
    "database": {
        "name": (str, REQUIRED),
        "dsn": (str, ""),
        "format": (str, "custom"),
        "jobs": (int, 1),
        "max_age_hours": (int, 0),
        "retention": (dict, {}),
    },
    "cluster": {
        "name": (str, REQUIRED),
        "dsn": (str, ""),
        "pgdata": (str, REQUIRED),
    },
    "fileset": {
        "name": (str, REQUIRED),
        "paths": (list, REQUIRED),
        "exclude": (list, []),
        "one_file_system": (bool, False),
        "max_age_hours": (int, 0),
        "retention": (dict, {}),
    },
}


@dataclass(frozen=True)
class FilesetConfig:
    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    one_file_system: bool = False
    max_age_hours: int = 0
    retention: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole validated configuration. Sections are plain dicts with defaults filled."""

    path: Path | None
    repository: dict[str, Any]
    state: dict[str, Any]
    schedule: dict[str, Any]
    retention: dict[str, Any]
    security: dict[str, Any]
    notify: dict[str, Any]
    health: dict[str, Any]
    metrics: dict[str, Any]
    replicas: tuple[dict[str, Any], ...] = ()
    databases: tuple[dict[str, Any], ...] = ()
    clusters: tuple[dict[str, Any], ...] = ()
    filesets: tuple[FilesetConfig, ...] = field(default_factory=tuple)

    @property
    def repo_path(self) -> Path:
        return Path(self.repository["path"])

    @property
    def state_dir(self) -> Path:
        return Path(self.state["dir"])

    def fileset(self, name: str) -> FilesetConfig:
        for fs in self.filesets:
            if fs.name == name:
                return fs
        known = ", ".join(f.name for f in self.filesets) or "none configured"
        raise ConfigError(f"no [[fileset]] named {name!r} (known: {known})")

    def password(self) -> str | None:
        """The repository password: password_file, else $BACKUP_TUI_PASSWORD, else None."""
        pf = self.repository.get("password_file")
        if pf:
            _warn_if_readable_by_others(pf)
            try:
                text = Path(pf).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(
                    f"{self.path}: [repository] password_file: cannot read {pf}: {e.strerror}"
                ) from None
            password = text.rstrip("\r\n")
            if not password:  # never fall back to an unencrypted repository silently
                raise ConfigError(f"{self.path}: [repository] password_file: {pf} is empty")
            return password
        env = os.environ.get("BACKUP_TUI_PASSWORD")
        return env if env else None


def _warn_if_readable_by_others(path: str) -> None:
    """DESIGN.md section 9: a secret readable by others is said loudly (not refused)."""
    import logging
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logging.getLogger("backup_tui.config").warning(
            "%s holds the repository password and is readable by other users "
            "(mode %o); chmod 600 it", path, stat.S_IMODE(mode))


def _type_name(t: Any) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list"}.get(
        t, str(t)
    )


_CREDENTIAL_KEYS = {
    "access_key", "access_key_id", "aws_access_key_id", "secret_key", "secret_access_key",
    "aws_secret_access_key", "session_token", "aws_session_token", "password", "secret",
}


def _check_table(where: str, key_prefix: str, raw: Any, schema: dict) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{key_prefix}] must be a table")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.lower() in _CREDENTIAL_KEYS:
            raise ConfigError(
                f"{where}: {key_prefix}.{key}: credentials do not belong in the config file; "
                "use the AWS credential chain (environment, ~/.aws/credentials, instance "
                "role) or a named profile (replica.profile), and password_file for the "
                "repository"
            )
        if key not in schema:
            known = ", ".join(schema)
            raise ConfigError(f"{where}: unknown key {key_prefix}.{key} (known: {known})")
        typ, _default = schema[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(
                f"{where}: {key_prefix}.{key} must be {_type_name(typ)}, "
                f"got {type(value).__name__}"
            )
        out[key] = value
    for key, (_typ, default) in schema.items():
        if key not in out:
            if default is REQUIRED:
                raise ConfigError(f"{where}: missing required key {key_prefix}.{key}")
            out[key] = list(default) if isinstance(default, list) else default
    return out


def parse_config(data: dict[str, Any], where: str = "config") -> Config:
    """Validate a parsed TOML document."""
    sections: dict[str, Any] = {}
    arrays: dict[str, list[dict[str, Any]]] = {k: [] for k in _ARRAYS}
    for key, value in data.items():
        if key in _TABLES:
            sections[key] = _check_table(where, key, value, _TABLES[key])
        elif key in _ARRAYS:
            if not isinstance(value, list):
                raise ConfigError(f"{where}: [[{key}]] must be an array of tables")
            for i, item in enumerate(value):
                arrays[key].append(_check_table(where, f"{key}[{i}]", item, _ARRAYS[key]))
        else:
            known = ", ".join([*_TABLES, *_ARRAYS])
            raise ConfigError(f"{where}: unknown key {key} (known sections: {known})")
    if "repository" not in sections:
        raise ConfigError(f"{where}: missing required key repository.path")
    for key, schema in _TABLES.items():
        if key not in sections:
            sections[key] = _check_table(where, key, {}, schema)
    for kind, items in arrays.items():
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item["name"] in seen:
                raise ConfigError(f"{where}: {kind}[{i}].name {item['name']!r} is used twice")
            seen.add(item["name"])
    filesets = []
    for i, fs in enumerate(arrays["fileset"]):
        for key in ("paths", "exclude"):
            if not all(isinstance(p, str) for p in fs[key]):
                raise ConfigError(f"{where}: fileset[{i}].{key} must be a list of strings")
        if not fs["paths"]:
            raise ConfigError(f"{where}: fileset[{i}].paths must not be empty")
        for p in fs["paths"]:
            if not os.path.isabs(p):
                raise ConfigError(f"{where}: fileset[{i}].paths: {p!r} is not an absolute path")
        filesets.append(
            FilesetConfig(
                fs["name"], tuple(fs["paths"]), tuple(fs["exclude"]), fs["one_file_system"],
                fs["max_age_hours"], tuple(sorted(fs["retention"].items())),
            )
        )
    comp = sections["repository"]["compression"]
    if not _valid_compression(comp):
        raise ConfigError(
            f"{where}: repository.compression must be 'none' or 'zstd:N' (1-19), got {comp!r}"
        )
    for kind in ("fileset", "database"):
        for i, item in enumerate(arrays[kind]):
            for key, value in item["retention"].items():
                if key not in _TABLES["retention"]:
                    raise ConfigError(f"{where}: unknown key {kind}[{i}].retention.{key} "
                                      f"(known: {', '.join(_TABLES['retention'])})")
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{where}: {kind}[{i}].retention.{key} must be a "
                                      "non-negative integer")
    for key in _TABLES["retention"]:
        if sections["retention"][key] < 0:
            raise ConfigError(f"{where}: retention.{key} must not be negative")
    _check_schedule(where, sections["schedule"])
    for i, rep in enumerate(arrays["replica"]):
        if rep["object_lock_mode"] not in ("GOVERNANCE", "COMPLIANCE"):
            raise ConfigError(
                f"{where}: replica[{i}].object_lock_mode must be 'GOVERNANCE' or 'COMPLIANCE'"
            )
        if rep["object_lock_days"] < 0:
            raise ConfigError(f"{where}: replica[{i}].object_lock_days must not be negative")
    for i, db in enumerate(arrays["database"]):
        if db["format"] not in ("custom", "directory"):
            raise ConfigError(f"{where}: database[{i}].format must be 'custom' or 'directory'")
    return Config(
        path=None if where == "config" else Path(where),
        replicas=tuple(arrays["replica"]),
        databases=tuple(arrays["database"]),
        clusters=tuple(arrays["cluster"]),
        filesets=tuple(filesets),
        **sections,
    )


def _check_schedule(where: str, schedule: dict) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(schedule["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: schedule.timezone: unknown time zone "
                          f"{schedule['timezone']!r}") from None
    from engine.schedule import KINDS, make_trigger

    for kind in KINDS:
        try:
            make_trigger(schedule[kind], tz)
        except ValueError as e:
            raise ConfigError(f"{where}: schedule.{kind}: cannot parse cron expression "
                              f"{schedule[kind]!r}: {e}") from None


def _valid_compression(value: str) -> bool:
    if value == "none":
        return True
    name, _, level = value.partition(":")
    return name == "zstd" and (level == "" or (level.isdigit() and 1 <= int(level) <= 19))


def find_config(explicit: str | None) -> Path:
    """--config, else $BACKUP_TUI_CONFIG, else ./config.toml, else /etc/backup-tui/config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("BACKUP_TUI_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    if local.exists():
        return local
    return Path("/etc/backup-tui/config.toml")


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))
