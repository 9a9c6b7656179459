"""Configuration: the TOML contract (docs/ARCHITECTURE.md, config.example.toml), loaded and
validated into typed, frozen objects.

`load_config(path)` returns a `Config` or raises `ConfigError` with one line naming
the file and the key at fault. Each section is a frozen dataclass whose fields are
the section's keys, with their types and defaults: the single source of truth for
the schema. Source sections (``[[fileset]]``, ``[[database]]``) are declared by the
source kinds themselves (``engine/sources/``) and found through the registry, so a
new kind adds its section without touching this module.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.sources.base import Retention, SourceConfig

# The schedule keys of operations; source kinds add their own (engine.sources.registry).
OPERATION_SCHEDULES = {
    "cleanup": ("0 4 * * sun", "apply retention and prune"),
    "verify": ("0 */6 * * *", "verify the repository"),
    "replicate": ("*/5 * * * *", "copy to every replica"),
    "drill": ("0 5 * * sat", "restore drills"),
}


@dataclass(frozen=True)
class RepositoryConfig:
    path: str
    password_file: str = ""
    compression: str = "zstd:3"


@dataclass(frozen=True)
class StateConfig:
    dir: str = "/var/lib/backup-tui/state"


@dataclass(frozen=True)
class RetentionConfig:
    keep_last: int = 7
    keep_hourly: int = 0
    keep_daily: int = 14
    keep_weekly: int = 8
    keep_monthly: int = 12
    keep_yearly: int = 0
    keep_within_days: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SecurityConfig:
    admin_group: str = "backup-admins"


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str = ""
    command: str = ""
    on_success: bool = False
    timeout_seconds: int = 10


@dataclass(frozen=True)
class HealthConfig:
    max_age_hours: int = 26
    replica_max_age_hours: int = 2


@dataclass(frozen=True)
class MetricsConfig:
    textfile: str = ""
    listen: str = ""


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the daemon's HTTP API (engine/api/), off unless ``listen`` is set. A
    non-loopback address needs ``tls_cert`` and ``tls_key``, or ``allow_plaintext``."""

    listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    allow_plaintext: bool = False
    max_body_bytes: int = 65536


@dataclass(frozen=True)
class ReplicaConfig:
    """One ``[[replica]]``: an S3 bucket/prefix holding a complete copy of the repository."""

    name: str
    bucket: str
    region: str
    prefix: str = ""
    endpoint_url: str = ""
    profile: str = ""
    storage_class: str = "STANDARD"
    object_lock_days: int = 0
    object_lock_mode: str = "GOVERNANCE"
    replicate_after_backup: bool = True


@dataclass(frozen=True)
class ScheduleConfig:
    """``[schedule]``: a time zone, a grace period and one cron expression per schedule
    kind (the operations here, plus one per source kind from the registry)."""

    timezone: str = "UTC"
    grace_seconds: int = 120
    crons: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def cron(self, kind: str) -> str:
        return self.crons[kind]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.crons)


@dataclass(frozen=True)
class ConsoleConfig:
    """``[console]``: ``keys`` remaps the console's keys by binding id (``backup = "B"``,
    ``quit = "ctrl+q"``; several keys comma-separated). The ids are the console's to check
    (backup_tui/screens/help.py): the engine only knows they are strings."""

    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # the jobs the console runs (its keys, its own scheduler's) run this many nice steps
    # below it, so that its keys are answered while they use every core (0: same priority;
    # bench/key_latency.py); the daemon and the command line run theirs as they are
    job_nice: int = 10


_TABLES: dict[str, type] = {
    "repository": RepositoryConfig,
    "state": StateConfig,
    "schedule": ScheduleConfig,
    "retention": RetentionConfig,
    "security": SecurityConfig,
    "notify": NotifyConfig,
    "health": HealthConfig,
    "metrics": MetricsConfig,
    "api": ApiConfig,
    "console": ConsoleConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path | None
    repository: RepositoryConfig
    state: StateConfig
    schedule: ScheduleConfig
    retention: RetentionConfig
    security: SecurityConfig
    notify: NotifyConfig
    health: HealthConfig
    metrics: MetricsConfig
    replicas: tuple[ReplicaConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()  # every [[fileset]], [[database]], ... in order
    console: ConsoleConfig = dataclasses.field(default_factory=ConsoleConfig)
    api: ApiConfig = dataclasses.field(default_factory=ApiConfig)

    @property
    def repo_path(self) -> Path:
        return Path(self.repository.path)

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir)

    def section(self, section: str) -> tuple[Any, ...]:
        """The entries of one source array, e.g. ``section("fileset")``."""
        return tuple(s for s in self.sources if s.section == section)

    @property
    def filesets(self) -> tuple[Any, ...]:
        return self.section("fileset")

    @property
    def databases(self) -> tuple[Any, ...]:
        return self.section("database")

    def replica(self, name: str) -> ReplicaConfig:
        for r in self.replicas:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.replicas) or "none configured"
        from engine.errors import UsageError

        raise UsageError(f"no [[replica]] named {name!r} (known: {known})")

    def password(self) -> str | None:
        """The repository password: password_file, else $BACKUP_TUI_PASSWORD, else None."""
        pf = self.repository.password_file
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


_warned_unused: set[str] = set()


def warn_password_unused(location: str) -> None:
    """A password was given (password_file or $BACKUP_TUI_PASSWORD) for a repository that is
    not encrypted: it protects nothing, said once per process and location."""
    import logging

    if location in _warned_unused:
        return
    _warned_unused.add(location)
    logging.getLogger("backup_tui.config").warning(
        "%s: the repository is NOT encrypted: the password given (repository.password_file "
        "or $BACKUP_TUI_PASSWORD) is not used and protects nothing", location)


def _warn_if_readable_by_others(path: str) -> None:
    """A secret readable by every user is said loudly (not refused). Readable by its
    group is the shared layout of WAL archiving (docs/WAL.md: the postgres user reads it
    through the backup group), so that stays quiet."""
    import logging
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        logging.getLogger("backup_tui.config").warning(
            "%s holds the repository password and is readable by every user "
            "(mode %o); chmod 600 it (or 640 with a backup group)", path, stat.S_IMODE(mode))


# ------------------------------------------------------------------ schema
_REQUIRED = object()


def _toml_type(hint: Any) -> type:
    """The TOML value type a dataclass field takes: tuples are lists, retention a table."""
    if hint == Retention:
        return dict
    origin = typing.get_origin(hint)
    if origin is tuple:
        return list
    if hint in (str, int, bool):
        return hint
    raise TypeError(f"no TOML type for {hint!r}")


def schema_of(cls: type) -> dict[str, tuple[type, Any]]:
    """key -> (TOML type, default or _REQUIRED), in field order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, Any]] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "crons":
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        out[f.name] = (_toml_type(hints[f.name]), default)
    return out


def _type_name(t: Any) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list",
            dict: "a table"}.get(t, str(t))


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
            if default is _REQUIRED:
                raise ConfigError(f"{where}: missing required key {key_prefix}.{key}")
            out[key] = default
    return out


def _build(cls: type, where: str, key_prefix: str, values: dict[str, Any]) -> Any:
    """The dataclass from checked values: lists become tuples of strings, tables sorted
    (key, value) pairs."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints[key]
        if hint == Retention:
            kwargs[key] = _retention(where, key_prefix, value)
        elif typing.get_origin(hint) is tuple:
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key_prefix}.{key} must be a list of strings")
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _retention(where: str, key_prefix: str, table: dict | Retention) -> Retention:
    known = schema_of(RetentionConfig)
    table = dict(table)  # the default is already pairs
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key_prefix}.retention.{key} "
                              f"(known: {', '.join(known)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: {key_prefix}.retention.{key} must be a "
                              "non-negative integer")
    return tuple(sorted(table.items()))


def _schedule(where: str, raw: Any, defaults: dict[str, tuple[str, str]]) -> ScheduleConfig:
    schema = dict(schema_of(ScheduleConfig))
    schema.update({kind: (str, cron) for kind, (cron, _what) in defaults.items()})
    values = _check_table(where, "schedule", raw, schema)
    crons = {kind: values.pop(kind) for kind in defaults}
    schedule = ScheduleConfig(crons=crons, **values)
    _check_schedule(where, schedule, {kind: cron for kind, (cron, _what) in defaults.items()})
    return schedule


def _console(where: str, raw: Any) -> ConsoleConfig:
    """``[console]``: ``keys`` a table of binding id -> key string (see ConsoleConfig)."""
    values = _check_table(where, "console", raw, {"keys": (dict, {}),
                                                  "job_nice": (int, ConsoleConfig.job_nice)})
    if not 0 <= values["job_nice"] <= 19:
        raise ConfigError(f"{where}: console.job_nice must be 0 to 19 (nice steps below the "
                          f"console), got {values['job_nice']}")
    keys: dict[str, str] = {}
    for binding_id, value in values["keys"].items():
        parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else []
        if not parts or not all(parts) or any(" " in p for p in parts):
            raise ConfigError(f"{where}: console.keys.{binding_id} must be a key, or keys "
                              f"separated by commas (\"B\", \"ctrl+r\", \"f5,ctrl+l\"), "
                              f"got {value!r}")
        keys[binding_id] = ",".join(parts)
    return ConsoleConfig(keys=keys, job_nice=values["job_nice"])


def schedule_kinds() -> dict[str, tuple[str, str]]:
    """Every schedule kind: default cron and what it does (sources first, then operations)."""
    from engine.sources import registry

    kinds = {cls.schedule: (cls.default_cron, cls.schedule_text) for cls in registry.kinds()}
    kinds.update(OPERATION_SCHEDULES)
    return kinds


def parse_config(data: dict[str, Any], where: str = "config") -> Config:
    """Validate a parsed TOML document."""
    from engine.sources import registry

    source_types = {cls.section(): cls.config_type for cls in registry.kinds()}
    arrays: dict[str, type] = {"replica": ReplicaConfig, **source_types}
    raw_tables: dict[str, Any] = {}
    items: dict[str, list[tuple[str, dict[str, Any]]]] = {k: [] for k in arrays}
    for key, value in data.items():
        if key in _TABLES:
            raw_tables[key] = value
        elif key in arrays:
            if not isinstance(value, list):
                raise ConfigError(f"{where}: [[{key}]] must be an array of tables")
            for i, item in enumerate(value):
                prefix = f"{key}[{i}]"
                items[key].append((prefix, _check_table(where, prefix, item,
                                                        schema_of(arrays[key]))))
        else:
            known = ", ".join([*_TABLES, *arrays])
            raise ConfigError(f"{where}: unknown key {key} (known sections: {known})")
    if "repository" not in raw_tables:
        raise ConfigError(f"{where}: missing required key repository.path")
    tables: dict[str, Any] = {}
    for key, cls in _TABLES.items():
        if cls is ScheduleConfig:
            tables[key] = _schedule(where, raw_tables.get(key, {}), schedule_kinds())
        elif cls is ConsoleConfig:
            tables[key] = _console(where, raw_tables.get(key, {}))
        else:
            values = _check_table(where, key, raw_tables.get(key, {}), schema_of(cls))
            tables[key] = _build(cls, where, key, values)
    built: dict[str, list[Any]] = {}
    for key, entries in items.items():
        seen: set[str] = set()
        built[key] = []
        for prefix, values in entries:
            if values["name"] in seen:
                raise ConfigError(f"{where}: {prefix}.name {values['name']!r} is used twice")
            seen.add(values["name"])
            obj = _build(arrays[key], where, prefix, values)
            check = getattr(obj, "validate", None)
            if check is not None:
                check(where, prefix)
            built[key].append(obj)
    _check_repository(where, tables["repository"])
    _check_api(where, tables["api"])
    for key, value in tables["retention"].as_dict().items():
        if value < 0:
            raise ConfigError(f"{where}: retention.{key} must not be negative")
    for i, rep in enumerate(built["replica"]):
        _check_replica(where, f"replica[{i}]", rep)
    return Config(
        path=None if where == "config" else Path(where),
        replicas=tuple(built["replica"]),
        sources=tuple(obj for key in source_types for obj in built[key]),
        **tables,
    )


def _check_repository(where: str, repo: RepositoryConfig) -> None:
    comp = repo.compression
    name, _, level = comp.partition(":")
    ok = comp == "none" or (name == "zstd" and (
        level == "" or (level.isdigit() and 1 <= int(level) <= 19)))
    if not ok:
        raise ConfigError(
            f"{where}: repository.compression must be 'none' or 'zstd:N' (1-19), got {comp!r}"
        )


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(listen)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_api(where: str, api: ApiConfig) -> None:
    if not api.listen:
        return
    try:
        host, _port = split_listen(api.listen)
    except ValueError:
        raise ConfigError(f"{where}: api.listen must be HOST:PORT (\"127.0.0.1:8700\", "
                          f"\"[::1]:8700\"), got {api.listen!r}") from None
    if bool(api.tls_cert) != bool(api.tls_key):
        raise ConfigError(f"{where}: api.tls_cert and api.tls_key go together: set both "
                          "or neither")
    for key in ("tls_cert", "tls_key"):
        path = getattr(api, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{where}: api.{key}: no such file {path!r}")
    if not is_loopback(host) and not api.tls_cert and not api.allow_plaintext:
        raise ConfigError(
            f"{where}: [api] listen = {api.listen!r} is not a loopback address: API keys "
            "would cross the network in clear text; set api.tls_cert and api.tls_key, or "
            "api.allow_plaintext = true behind a trusted TLS proxy")
    if api.max_body_bytes < 1024:
        raise ConfigError(f"{where}: api.max_body_bytes must be at least 1024")


def _check_replica(where: str, prefix: str, rep: ReplicaConfig) -> None:
    if rep.object_lock_mode not in ("GOVERNANCE", "COMPLIANCE"):
        raise ConfigError(
            f"{where}: {prefix}.object_lock_mode must be 'GOVERNANCE' or 'COMPLIANCE'"
        )
    if rep.object_lock_days < 0:
        raise ConfigError(f"{where}: {prefix}.object_lock_days must not be negative")


def _check_schedule(where: str, schedule: ScheduleConfig,
                    defaults: dict[str, str] | None = None) -> None:
    """The time zone, and each cron expression other than its kind's default (those are
    the engine's own, parsed by tests/test_config.py): parsing one imports APScheduler,
    which a command that does not schedule (a backup, wal-push) need not pay for."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: schedule.timezone: unknown time zone "
                          f"{schedule.timezone!r}") from None
    from engine.schedule import make_trigger

    for kind, expr in schedule.crons.items():
        if defaults is not None and expr == defaults.get(kind):
            continue
        try:
            make_trigger(expr, tz)
        except ValueError as e:
            raise ConfigError(f"{where}: schedule.{kind}: cannot parse cron expression "
                              f"{expr!r}: {e}") from None


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
