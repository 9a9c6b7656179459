"""The WAL archive: ``wal-push`` (PostgreSQL's archive_command) and ``wal-fetch`` (its
restore_command), and the reading side others use (pitr-plan, retention, status).

Objects (docs/FORMAT.md, section 10): ``wal/<cluster>/<timeline, 8 hex>/<file name>``,
the file name as PostgreSQL gives it (``000000010000000000000003``,
``00000002.history``, ``000000010000000000000002.00000028.backup``,
``000000010000000000000005.partial``), and ``wal/<cluster>/identity``, the cluster's
system identifier. Each WAL object is::

    b"BTUIWAL1" | u32le L | seal(encode(header JSON)) (L bytes) | seal(encode(file bytes))

so its header (name, size, SHA-256 of the file, archive time, system identifier) is read
and authenticated without the body.

wal-push runs once per 16 MiB segment, as the cluster's OS user, and must return fast:
this module imports only the standard library, ``engine.repo`` (crypto, codec, locks),
``engine.storage.local``, ``zstandard`` and ``cryptography`` - never boto3 (only
wal-fetch from a replica imports it, lazily), textual, rich, apscheduler or psycopg2.
The configuration is read with `WalSettings.load` (the few keys needed, not the full
validation of engine.config), and the repository's key comes from the key cache
(engine/repo/keycache.py) when it is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine import walfile
from engine.errors import (
    ConfigError,
    EngineError,
    IntegrityError,
    NotFound,
    RepositoryError,
    UsageError,
    WrongPassword,
)
from engine.repo import codec, keycache
from engine.repo.crypto import Keys

SEG_SIZE = 16 * 1024 * 1024  # PostgreSQL's default wal_segment_size
MAX_WAL_FILE = walfile.MAX_WAL_FILE
MAGIC = b"BTUIWAL1"
MAX_HEADER = 64 * 1024
LOCK_WAIT = 2.0  # seconds wal-push waits for an exclusive lock (cleanup) before failing
FORMAT = 1

# one pattern for every WAL file name (one compile: wal-push starts often)
_NAME = re.compile(r"[0-9A-F]{8}(?:\.(history)"
                   r"|[0-9A-F]{16}(?:\.(partial)|\.[0-9A-F]{8}\.(backup))?)")
_SEGMENT = re.compile(r"[0-9A-F]{24}")
_CLUSTER = r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}"

XLP_LONG_HEADER = 0x0002
LONG_HEADER = struct.Struct("<HHIQIIQII")  # magic info tli pageaddr rem_len pad sysid seg blk


class WalError(EngineError):
    """wal-push or wal-fetch failed (exit 1; PostgreSQL retries or ends recovery)."""


class WalNotFound(WalError, NotFound):
    """The requested WAL file is in no copy of the archive (exit 1: recovery ends)."""


class WalUnavailable(WalError):
    """wal-fetch could not look: no copy of the archive answered (config, password,
    permissions, every copy unreachable or damaged). Exit 126, which PostgreSQL takes as
    fatal: recovery stops, instead of ending early at a point that is not the end."""

    exit_code = 126


class SplitBrain(WalError):
    """A different file of the same name is already archived."""


class WrongSystem(WalError):
    """A segment from another database system (system identifier) than the cluster's."""


# ------------------------------------------------------------------ names and LSNs


def parse_lsn(lsn: str | int) -> int:
    """``"0/3000028"`` -> 50331688 (an int is returned as is)."""
    if isinstance(lsn, int) and not isinstance(lsn, bool):
        if lsn < 0:
            raise UsageError(f"invalid LSN {lsn}")
        return lsn
    m = re.fullmatch(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*", str(lsn))
    if not m:
        raise UsageError(f"invalid LSN {lsn!r} (expected hex/hex, like 0/3000028)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _check_seg_size(seg_size: int) -> None:
    if not (1024 * 1024 <= seg_size <= MAX_WAL_FILE and seg_size & (seg_size - 1) == 0):
        raise UsageError(f"invalid WAL segment size {seg_size} (a power of two, 1 MiB to 1 GiB)")


def segment_name(timeline: int, lsn: str | int, seg_size: int = SEG_SIZE) -> str:
    """The name of the segment file holding ``lsn`` on ``timeline``."""
    _check_seg_size(seg_size)
    segno = parse_lsn(lsn) // seg_size
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_number(name: str, seg_size: int = SEG_SIZE) -> int:
    """The segment number (LSN // seg_size) of a segment file name (its first 24 chars)."""
    _check_seg_size(seg_size)
    return int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)


def wal_kind(name: str) -> str:
    """"segment", "partial", "history" or "backup"; UsageError for anything else."""
    m = _NAME.fullmatch(name)
    if m:
        return m.group(1) or m.group(2) or m.group(3) or "segment"
    raise UsageError(f"{name!r} is not a WAL file name (a segment like "
                     "000000010000000000000003, 00000002.history, a .backup or .partial file)")


def object_name(cluster: str, name: str) -> str:
    """``wal/<cluster>/<timeline>/<name>``: for every kind the timeline is the file
    name's first 8 hex digits (a .history file's own timeline)."""
    wal_kind(name)
    return f"wal/{cluster}/{name[:8]}/{name}"


def identity_name(cluster: str) -> str:
    return f"wal/{cluster}/identity"


class _Record:
    """A small immutable record (plain class: wal-push does not pay for dataclasses)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = getattr(type(self), "_defaults", {})
        values = dict(zip(self.__slots__, args, strict=False))
        values.update(kwargs)
        for key in self.__slots__:
            if key not in values and key not in defaults:
                raise TypeError(f"{type(self).__name__}: missing {key}")
            object.__setattr__(self, key, values.get(key, defaults.get(key)))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._tuple() == other._tuple()  # type: ignore

    def __hash__(self) -> int:
        return hash(self._tuple())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({inner})"


class WalObject(_Record):
    """One archived file as listed (no object read): ``name`` (PostgreSQL's file name),
    ``timeline``, ``size`` (stored bytes, compressed and sealed), ``segno`` (segment
    number of a segment or .partial file, else None), ``kind`` ("segment", "history",
    "backup" or "partial")."""

    __slots__ = ("name", "timeline", "size", "segno", "kind")
    name: str
    timeline: int
    size: int
    segno: int | None
    kind: str

    @property
    def object(self) -> str:
        return f"{self.name[:8]}/{self.name}"


def list_wal(backend: Any, cluster: str, seg_size: int = SEG_SIZE) -> list[WalObject]:
    """Every archived file of the cluster, from one LIST of ``wal/<cluster>/``, sorted
    by (timeline, name): on a timeline segment names sort in LSN order. Names that are
    no WAL file (the identity record, strangers) are skipped."""
    prefix = f"wal/{cluster}/"
    out = []
    for info in backend.list(prefix):
        rest = info.name[len(prefix):]
        tl_dir, _, name = rest.partition("/")
        if "/" in name or not name:
            continue
        try:
            kind = wal_kind(name)
        except UsageError:
            continue
        if tl_dir != name[:8]:
            continue
        segno = segment_number(name, seg_size) if kind in ("segment", "partial") else None
        out.append(WalObject(name, int(name[:8], 16), info.size, segno, kind))
    out.sort(key=lambda w: (w.timeline, w.name))
    return out


# ------------------------------------------------------------------ object format


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _keys_of(repo_or_keys: Any) -> Keys:
    return repo_or_keys if isinstance(repo_or_keys, Keys) else repo_or_keys.keys


def build_object(keys: Keys, header: dict, raw: bytes, level: int | None,
                 encoded: bytes | None = None) -> bytes:
    """The stored object; ``encoded`` is the body already encoded at ``level``."""
    sealed_header = keys.seal(codec.encode(_canonical(header), 3))
    body = keys.seal(encoded if encoded is not None else walfile.encode(raw, level))
    return MAGIC + struct.pack("<I", len(sealed_header)) + sealed_header + body


def _parse_prefix(data: bytes, what: str) -> int:
    if len(data) < 12 or data[:8] != MAGIC:
        raise IntegrityError(f"{what}: not a WAL archive object (bad magic)", what)
    (hlen,) = struct.unpack_from("<I", data, 8)
    if not 0 < hlen <= MAX_HEADER:
        raise IntegrityError(f"{what}: header length {hlen} out of range", what)
    return hlen


def _open_header(keys: Keys, sealed: bytes, what: str, name: str | None) -> dict:
    header = codec.parse_json(codec.decode(keys.open(sealed, what), what, MAX_HEADER), what)
    if not isinstance(header, dict):
        raise IntegrityError(f"{what}: header is not an object", what)
    size, digest = header.get("size"), header.get("sha256")
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_WAL_FILE
            and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise IntegrityError(f"{what}: header without a valid size and sha256", what)
    if name is not None and header.get("name") != name:
        raise IntegrityError(f"{what}: holds {header.get('name')!r}, not {name!r} "
                             "(moved or tampered)", what)
    return header


def wal_header(repo_or_keys: Any, backend: Any, cluster: str, name: str) -> dict:
    """The authenticated header of one archived file (its body is not read):
    {"format", "source" (the cluster), "name", "kind", "timeline", "size", "sha256", "archived",
    "system_identifier", "host"}. NotFound when it is not archived."""
    keys = _keys_of(repo_or_keys)
    obj = object_name(cluster, name)
    head = backend.get_range(obj, 0, 4096)
    hlen = _parse_prefix(head, obj)
    if 12 + hlen > len(head):
        head = backend.get_range(obj, 0, 12 + hlen)
        if len(head) < 12 + hlen:
            raise IntegrityError(f"{obj}: truncated", obj)
    return _open_header(keys, head[12:12 + hlen], obj, name)


def read_object(keys: Keys, data: bytes, obj: str, name: str) -> tuple[dict, bytes]:
    """(header, file bytes) of a stored WAL object, every part checked: the header's name,
    the body's size and SHA-256."""
    hlen = _parse_prefix(data, obj)
    if 12 + hlen > len(data):
        raise IntegrityError(f"{obj}: truncated", obj)
    header = _open_header(keys, data[12:12 + hlen], obj, name)
    body = codec.decode(keys.open(memoryview(data)[12 + hlen:], obj), obj,
                        max(header["size"], 1))
    if len(body) != header["size"] or hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise IntegrityError(f"{obj}: content does not match its header (corrupt)", obj)
    return header, body


# ------------------------------------------------------------------- settings


class Replica(_Record):
    """One [[replica]]: what wal-fetch needs to read it."""

    __slots__ = ("name", "bucket", "region", "prefix", "endpoint_url", "profile")
    _defaults = {"prefix": "", "endpoint_url": "", "profile": ""}
    name: str
    bucket: str
    region: str
    prefix: str
    endpoint_url: str
    profile: str


class WalSettings(_Record):
    """What wal-push and wal-fetch need from the configuration: ``repo_path``,
    ``password_file``, ``state_dir``, ``cluster_names``, ``replicas``, ``path`` (the
    config file, for messages)."""

    __slots__ = ("repo_path", "password_file", "state_dir", "cluster_names", "replicas",
                 "path")
    _defaults = {"password_file": "", "state_dir": "/var/lib/backup-tui/state",
                 "cluster_names": (), "replicas": (), "path": ""}
    repo_path: str
    password_file: str
    state_dir: str
    cluster_names: tuple[str, ...]
    replicas: tuple[Replica, ...]
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WalSettings:
        """Read only the keys wal-push/wal-fetch need from the TOML file (fast: no
        source registry, no schedule parsing); the rest is checked by other commands."""
        import tomllib

        p = str(path)
        try:
            with open(p, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None

        def table(key: str) -> dict:
            v = data.get(key, {})
            if not isinstance(v, dict):
                raise ConfigError(f"{p}: [{key}] must be a table")
            return v

        def array(key: str) -> list[dict]:
            v = data.get(key, [])
            if not isinstance(v, list) or not all(isinstance(i, dict) for i in v):
                raise ConfigError(f"{p}: [[{key}]] must be an array of tables")
            return v

        def text(where: str, tab: dict, key: str, default: str | None = None) -> str:
            v = tab.get(key, default)
            if not isinstance(v, str):
                raise ConfigError(f"{p}: {'missing required key ' if v is None else ''}"
                                  f"{where}.{key}" + ("" if v is None else " must be a string"))
            return v

        repo, state = table("repository"), table("state")
        clusters = tuple(text(f"cluster[{i}]", c, "name")
                         for i, c in enumerate(array("cluster")))
        replicas = tuple(
            Replica(name=text(f"replica[{i}]", r, "name"),
                    bucket=text(f"replica[{i}]", r, "bucket"),
                    region=text(f"replica[{i}]", r, "region"),
                    prefix=text(f"replica[{i}]", r, "prefix", ""),
                    endpoint_url=text(f"replica[{i}]", r, "endpoint_url", ""),
                    profile=text(f"replica[{i}]", r, "profile", ""))
            for i, r in enumerate(array("replica")))
        return cls(repo_path=text("repository", repo, "path"),
                   password_file=text("repository", repo, "password_file", ""),
                   state_dir=text("state", state, "dir", cls._defaults["state_dir"]),
                   cluster_names=clusters, replicas=replicas, path=p)

    @classmethod
    def of(cls, config: Any) -> WalSettings:
        """From a WalSettings or a full engine.config.Config."""
        if isinstance(config, WalSettings):
            return config
        return cls(
            repo_path=str(config.repository.path),
            password_file=config.repository.password_file,
            state_dir=str(config.state.dir),
            cluster_names=tuple(s.name for s in config.section("cluster")),
            replicas=tuple(Replica(r.name, r.bucket, r.region, r.prefix, r.endpoint_url,
                                   r.profile) for r in config.replicas),
            path=str(config.path or "config"),
        )

    def password(self) -> str | None:
        """password_file, else $BACKUP_TUI_PASSWORD, else None (as Config.password)."""
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"{self.path}: [repository] password_file: cannot read "
                                  f"{self.password_file}: {e.strerror}") from None
            if not password:
                raise ConfigError(f"{self.path}: [repository] password_file: "
                                  f"{self.password_file} is empty")
            return password
        return os.environ.get("BACKUP_TUI_PASSWORD") or None

    def cluster(self, name: str | None) -> str:
        """The [[cluster]] named (or the only one): the gate of wal-push and wal-fetch,
        which any user may run for a configured cluster."""
        if name is None:
            if len(self.cluster_names) == 1:
                return self.cluster_names[0]
            if not self.cluster_names:
                raise UsageError(f"{self.path}: no [[cluster]] is configured")
            raise UsageError(f"more than one [[cluster]] is configured "
                             f"({', '.join(self.cluster_names)}): give --cluster NAME")
        if name not in self.cluster_names:
            raise UsageError(f"no [[cluster]] named {name!r} (known: "
                             f"{', '.join(self.cluster_names) or 'none configured'})")
        if not re.fullmatch(_CLUSTER, name):
            raise UsageError(f"cluster name {name!r} cannot name a folder of the repository")
        return name


# ------------------------------------------------------------------- repository keys


def open_keys(backend: Any, password: str | None, state_dir: str | None,
              password_file: str = "", cache: bool = True) -> tuple[Keys, dict]:
    """The working keys and the parsed config of the repository at ``backend``: from the
    key cache when it holds this config's key, else from the password (scrypt), then
    cached. The config's authenticator is checked either way."""
    try:
        raw = backend.get("config")
    except NotFound:
        raise RepositoryError(f"{backend.location}: no repository here") from None
    config = codec.parse_json(raw, "config")
    if not isinstance(config, dict) or config.get("format") != "backup-tui":
        raise IntegrityError(f"{backend.location}/config: not a backup-tui repository",
                             "config")
    if config.get("version") != 1:
        raise RepositoryError(f"{backend.location}: repository format "
                              f"{config.get('version')} is not supported")
    enc = config.get("encryption")
    if not enc:
        return Keys(None), config
    if not password:
        raise WrongPassword(f"{backend.location}: the repository is encrypted and no "
                            "password was given (repository.password_file or "
                            "$BACKUP_TUI_PASSWORD)")
    body = _canonical({k: v for k, v in config.items() if k != "mac"})
    master = keycache.load(state_dir, config, password) if cache else None
    if master is not None:
        keys = Keys(master)
        if keys.mac_matches(body, config.get("mac")):
            return keys, config
    from engine.repo.repository import Repository  # the slow path: scrypt

    master = Repository._unwrap_any(backend, password, enc)
    keys = Keys(master)
    if not keys.mac_matches(body, config.get("mac")):
        raise IntegrityError(f"{backend.location}/config: authenticator mismatch", "config")
    if cache:
        keycache.store(state_dir, config, master, password, password_file)
    return keys, config


def _level(config: dict) -> int | None:
    """WAL is compressed at zstd level 1 (PostgreSQL waits for wal-push) unless the
    repository's compression is "none"."""
    return None if config.get("compression") == "none" else walfile.WAL_LEVEL


# ------------------------------------------------------------------- identity


def page_sysid(data: bytes, name: str) -> int:
    """The system identifier in a segment's first (long) page header; WalError when the
    file does not start with one (not a WAL segment)."""
    if len(data) < LONG_HEADER.size:
        raise WalError(f"wal-push: {name}: {len(data)} bytes, too short to be a WAL segment")
    magic, info, _tli, _addr, _rem, _pad, sysid, seg_size, _blk = LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER or magic < 0xD000 or magic > 0xD1FF:
        raise WalError(f"wal-push: {name}: does not start with a WAL long page header "
                       f"(magic {magic:#06x}, info {info:#06x}): not a WAL segment")
    if seg_size != len(data):
        raise WalError(f"wal-push: {name}: the page header says the segment has {seg_size} "
                       f"bytes, the file has {len(data)}")
    return sysid


def read_identity(keys: Keys, backend: Any, cluster: str) -> dict | None:
    name = identity_name(cluster)
    try:
        stored = backend.get(name)
    except NotFound:
        return None
    doc = codec.parse_json(codec.decode(keys.open(stored, name), name, MAX_HEADER), name)
    if not (isinstance(doc, dict) and isinstance(doc.get("system_identifier"), str)
            and doc["system_identifier"].isdigit()):
        raise IntegrityError(f"{name}: malformed identity record", name)
    return doc


def write_identity(keys: Keys, backend: Any, cluster: str, sysid: int | str,
                   source: str) -> dict:
    doc = {"source": cluster, "system_identifier": str(int(sysid)), "recorded": time.time(),
           "from": source}
    backend.put(identity_name(cluster), keys.seal(codec.encode(_canonical(doc), 3)))
    return doc


def snapshot_identity(keys: Keys, backend: Any, cluster: str) -> tuple[str, str] | None:
    """(system identifier, snapshot id) of the newest cluster snapshot of ``cluster``
    that records one, read from the snapshot records (only on a first push)."""
    best: tuple[str, str, str] | None = None
    for info in backend.list("snapshots/"):
        sid = info.name.rsplit("/", 1)[1]
        if info.size > 1024 * 1024:
            continue
        try:
            stored = backend.get(info.name)
            if hashlib.sha256(stored).hexdigest() != sid:
                continue
            snap = codec.parse_json(codec.decode(keys.open(stored, info.name), info.name,
                                                 codec.MAX_RAW), info.name)
        except EngineError:
            continue
        # the snapshots of this source that record a system identifier (base backups)
        if not (isinstance(snap, dict) and snap.get("source") == cluster
                and isinstance(snap.get("postgres"), dict)):
            continue
        ident = snap["postgres"].get("system_identifier")
        when = str(snap.get("time", ""))
        if isinstance(ident, str | int) and str(ident).isdigit() and (
                best is None or when > best[0]):
            best = (when, str(ident), sid)
    return (best[1], best[2]) if best else None


def check_identity(keys: Keys, backend: Any, cluster: str, sysid: int | None,
                   name: str) -> str | None:
    """The cluster's recorded system identifier, recording it on first use (from the
    newest cluster snapshot, else from this segment); WrongSystem when ``sysid`` (of the
    segment being pushed) differs."""
    doc = read_identity(keys, backend, cluster)
    if doc is None:
        found = snapshot_identity(keys, backend, cluster)
        if found is not None:
            doc = {"system_identifier": found[0], "from": f"snapshot {found[1][:12]}"}
            if sysid is None or str(sysid) == found[0]:
                write_identity(keys, backend, cluster, found[0], f"snapshot {found[1]}")
        elif sysid is not None:
            doc = write_identity(keys, backend, cluster, sysid, f"first wal-push ({name})")
        else:
            return None
    recorded = doc["system_identifier"]
    if sysid is not None and str(sysid) != recorded:
        raise WrongSystem(
            f"wal-push: refused {name}: it comes from database system {sysid}, but cluster "
            f"{cluster!r} is system {recorded} (recorded from {doc.get('from', '?')} in "
            f"{identity_name(cluster)}); is archive_command pointing at the wrong cluster? "
            "(a new initdb needs a new [[cluster]] name)")
    return recorded


# ------------------------------------------------------------------- push


def _local_backend(settings: WalSettings) -> Any:
    from engine.storage.local import LocalBackend

    return LocalBackend(settings.repo_path)


def push(config: Any, path: str, cluster: str | None = None,
         prepared: walfile.Prepared | None = None) -> str:
    """Archive one WAL file (segment, .history, .backup or .partial) from ``path`` into the
    local repository: "stored", or "present" when the same content is already there.
    SplitBrain when a different file of that name is archived, WrongSystem for a segment
    of another system identifier, LockedError when cleanup holds the repository for
    longer than LOCK_WAIT seconds. The source file is only read. ``prepared``: the file
    already being read and compressed (walfile.Prepared, started by the CLI)."""
    from engine.repo.locks import RepoLock

    settings = WalSettings.of(config)
    cluster = settings.cluster(cluster)
    name = os.path.basename(path)
    kind = wal_kind(name)
    if prepared is None or prepared.path != path:
        prepared = walfile.Prepared(path)
    prepared.wait()
    if prepared.error is not None:
        raise WalError(f"wal-push: cannot read {path}: {prepared.error.strerror}")
    if prepared.too_large:
        raise WalError(f"wal-push: {path} is larger than any WAL file (1 GiB)")
    raw, digest = prepared.raw, prepared.sha256
    sysid = page_sysid(raw, name) if kind in ("segment", "partial") else None
    backend = _local_backend(settings)
    if not Path(settings.repo_path, "config").exists():
        raise RepositoryError(f"{settings.repo_path}: no repository here (wal-push writes "
                              "to the local repository; run 'backup-tui init')")
    keys, repo_config = open_keys(backend, settings.password(), settings.state_dir,
                                  settings.password_file)
    obj = object_name(cluster, name)
    lock = RepoLock(backend, exclusive=False, purpose=f"wal-push {cluster} {name}")
    lock.acquire(wait=LOCK_WAIT)
    try:
        recorded = check_identity(keys, backend, cluster, sysid, name)
        existing = _existing(keys, backend, cluster, name, obj)
        if existing is not None:
            if existing["sha256"] == digest and existing["size"] == len(raw):
                return "present"
            raise SplitBrain(
                f"wal-push: SPLIT BRAIN? {name} is already archived for cluster {cluster!r} "
                f"with different content (archived sha256 {existing['sha256']}, "
                f"{existing['size']} bytes; this file sha256 {digest}, {len(raw)} bytes): "
                "two servers archive into one cluster, or the archive is from an older "
                "cluster; nothing was overwritten")
        header = {"format": FORMAT, "source": cluster, "name": name, "kind": kind,
                  "timeline": int(name[:8], 16), "size": len(raw), "sha256": digest,
                  "archived": time.time(), "system_identifier": recorded,
                  "host": socket.gethostname()}
        level = _level(repo_config)
        encoded = prepared.encoded if prepared.level == level else None
        backend.put(obj, build_object(keys, header, raw, level, encoded))
        # Two servers pushing one name at once: the last rename wins. Read the header
        # back, so the one that lost says so instead of reporting success.
        after = _existing(keys, backend, cluster, name, obj)
        if after is None or after["sha256"] != digest:
            raise SplitBrain(
                f"wal-push: SPLIT BRAIN? {name} of cluster {cluster!r} was archived with "
                f"different content by another pusher at the same moment (archived sha256 "
                f"{after['sha256'] if after else 'none'}; this file sha256 {digest})")
        return "stored"
    finally:
        lock.release()


def _existing(keys: Keys, backend: Any, cluster: str, name: str, obj: str) -> dict | None:
    try:
        return wal_header(keys, backend, cluster, name)
    except NotFound:
        return None
    except IntegrityError as e:  # a damaged copy: never silently replaced
        raise WalError(f"wal-push: {name} is archived but its copy is unreadable ({e}); "
                       f"check it, move {obj} aside and archive again") from None


# ------------------------------------------------------------------- fetch


class _S3Reader:
    """Reads objects of one [[replica]] with a client that fails fast (one attempt, a
    short connect timeout): wal-fetch tries the next copy instead of waiting."""

    def __init__(self, replica: Replica):
        import boto3
        import botocore.config
        import botocore.exceptions

        self.replica = replica
        self.prefix = replica.prefix.strip("/") + "/" if replica.prefix.strip("/") else ""
        self.location = f"s3://{replica.bucket}/{self.prefix} ({replica.name})"
        session = boto3.session.Session(profile_name=replica.profile or None,
                                        region_name=replica.region)
        cfg = botocore.config.Config(
            region_name=replica.region, retries={"total_max_attempts": 2, "mode": "standard"},
            connect_timeout=3, read_timeout=60,
            s3={"addressing_style": "path"} if replica.endpoint_url else {})
        self.client = session.client("s3", endpoint_url=replica.endpoint_url or None,
                                     config=cfg)
        self._client_error = botocore.exceptions.ClientError
        self._errors = (botocore.exceptions.BotoCoreError, ConnectionError, TimeoutError)

    def get(self, name: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.replica.bucket, Key=self.prefix + name)
            return resp["Body"].read()
        except self._client_error as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.location}: object {name} not found") from None
            raise WalError(f"{self.location}: get {name}: {code} "
                           f"{e.response.get('Error', {}).get('Message', '')}") from None
        except self._errors as e:
            raise WalError(f"{self.location}: unreachable: {e}") from None

    def list(self, prefix: str = "") -> Iterable[Any]:
        from engine.storage.base import ObjectInfo

        try:
            resp = self.client.list_objects_v2(Bucket=self.replica.bucket,
                                               Prefix=self.prefix + prefix)
        except (self._client_error, *self._errors) as e:
            raise WalError(f"{self.location}: list {prefix}: {e}") from None
        return [ObjectInfo(o["Key"][len(self.prefix):], int(o["Size"]))
                for o in resp.get("Contents", [])]


def write_atomic(dest: str, data: bytes, sync: bool = True) -> None:
    """``dest`` written whole or not at all: a temporary file beside it, rename (with
    ``sync``: fsync of the file before and of the folder after). wal-fetch writes without
    sync: PostgreSQL fsyncs what it keeps of a restored file itself, and after a crash it
    asks for the file again (pgBackRest's archive-get writes without sync too)."""
    folder = os.path.dirname(os.path.abspath(dest))
    tmp = os.path.join(folder, f".{os.path.basename(dest)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WalError(f"wal-fetch: cannot write {dest}: {e.strerror}") from None
    if not sync:
        return
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Copies:
    """The copies of the archive wal-fetch reads, in its order: the local repository, then
    each [[replica]] in config order (``replica``: that one alone). Each copy's keys are
    opened once (the prefetcher of engine/walspool.py reads many files through one
    Copies). `get` returns a file's header and bytes, every part checked."""

    def __init__(self, config: Any, cluster: str | None = None, replica: str | None = None):
        self.settings = settings = WalSettings.of(config)
        self.cluster = settings.cluster(cluster)
        self.replica = replica
        replicas = settings.replicas
        if replica is not None:
            replicas = tuple(r for r in settings.replicas if r.name == replica)
            if not replicas:
                raise UsageError(f"no [[replica]] named {replica!r} (known: "
                                 f"{', '.join(r.name for r in settings.replicas) or 'none'})")
        self.replicas = replicas
        self.password = settings.password()
        self._local: Any = None
        self._readers: dict[str, Any] = {}
        self._keys: dict[str, Keys] = {}

    def _copies(self, att: _Attempts) -> Iterable[tuple[str, Any]]:
        if self.replica is not None:
            pass  # that replica alone
        elif Path(self.settings.repo_path, "config").exists():
            if self._local is None:
                self._local = _local_backend(self.settings)
            yield "local", self._local
        else:
            att.tried.append("local (no repository)")
        for rep in self.replicas:
            reader = self._readers.get(rep.name)
            if reader is None:
                try:
                    reader = self._readers[rep.name] = _S3Reader(rep)
                except Exception as e:  # noqa: BLE001 - a broken replica setting: try the next
                    att.errors.append(f"{rep.name}: {e}")
                    continue
            yield rep.name, reader

    def get(self, name: str) -> tuple[dict, bytes, str]:
        """(header, file bytes, the copy's label: "local" or the replica's name) of the
        archived file ``name``. WalNotFound when at least one copy answered that it does
        not have it and none has it; WalUnavailable when no copy could answer at all."""
        obj = object_name(self.cluster, name)
        att = _Attempts()
        for label, backend in self._copies(att):
            att.tried.append(label)
            try:
                data = backend.get(obj)
            except NotFound:
                att.answered.append(label)
                continue
            except EngineError as e:
                att.errors.append(f"{label}: {e}")
                continue
            try:
                keys = self._keys.get(label)
                if keys is None:
                    keys, _config = open_keys(backend, self.password, self.settings.state_dir,
                                              self.settings.password_file)
                    self._keys[label] = keys
                header, body = read_object(keys, data, obj, name)
                return header, body, label
            except EngineError as e:
                att.errors.append(f"{label}: {e}")
        where = ", ".join(att.tried) or "no copy: no local repository, no [[replica]]"
        errors = ("; " + "; ".join(att.errors)) if att.errors else ""
        if not att.answered:
            raise WalUnavailable(f"wal-fetch: {name} of cluster {self.cluster!r}: no copy of "
                                 f"the archive could be read (tried {where}{errors}); "
                                 "recovery stops here rather than end early")
        raise WalNotFound(f"wal-fetch: {name} of cluster {self.cluster!r} is not archived "
                          f"(looked in {where}{errors})")


class _Attempts:
    def __init__(self) -> None:
        self.tried: list[str] = []
        self.errors: list[str] = []
        self.answered: list[str] = []  # copies that said they do not have it


def fetch(config: Any, name: str, dest: str, cluster: str | None = None,
          replica: str | None = None) -> str:
    """Write the archived file ``name`` of the cluster to ``dest`` (atomically): from the
    local repository, else from each [[replica]] in config order. Returns "local" or the
    replica's name. WalNotFound (exit 1, PostgreSQL ends recovery) when at least one copy
    answered that it does not have it and none has it; WalUnavailable (exit 126,
    recovery stops) when no copy could answer at all. ``replica``: read that [[replica]]
    alone (restore pitr --replica)."""
    _header, body, label = Copies(config, cluster, replica).get(name)
    write_atomic(dest, body, sync=False)
    return label
