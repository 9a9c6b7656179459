"""The Repository: opens a backend with the password and reads and writes objects.

Write path (``BlobWriter``): the caller hashes a chunk and asks ``has_blob``;
new blobs are compressed and sealed on a small thread pool, appended in order to
an open pack per blob type, and a full pack is written. ``commit`` writes the
last packs, then one index file naming them, and only then may a snapshot be
saved (rule: packs, index, snapshot). Read path: every object is checked
against its name (content hash) or authenticator before it is used.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from engine.errors import (
    EngineError,
    IntegrityError,
    NoRepository,
    NotFound,
    RepositoryError,
    WrongPassword,
)
from engine.repo import codec, keycache
from engine.repo.crypto import Keys, b64e, unwrap_master, wrap_master
from engine.repo.index import CompactIndex, IndexCache, IndexEntry, Segment, check_index
from engine.repo.pack import (
    BLOB_TYPES,
    DATA,
    MAX_SEALED_BLOB,
    TREE,
    BlobEntry,
    PackBuilder,
    pack_name,
)
from engine.storage.base import Backend

FORMAT_VERSION = 1
PACK_TARGET = 16 * 1024 * 1024
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 256 * 1024, 1024 * 1024, 4 * 1024 * 1024
MAX_RECORD = 256 * 1024 * 1024  # no record (index, snapshot) decompresses to more
MAX_STORED_RECORD = MAX_RECORD + 1 + 28  # raw marker, nonce and tag
TREE_CACHE_BLOBS = 512  # decoded tree blobs kept for walks that read a tree again
TREE_CACHE_BYTES = 24 * 1024 * 1024  # ... and at most this many bytes of them
MAX_INDEX_BLOBS = 500_000  # blob rows per index file a backup writes (~55 MB of JSON)
MAX_KEY_RECORD = 64 * 1024  # a keys/ object larger than this is skipped unread
TREE_PACK_CACHE_MAX = 24 * 1024 * 1024  # tree packs up to this size are read whole

log = logging.getLogger("backup_tui.engine")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REPO_ID = re.compile(r"[0-9a-f]{16,64}")  # names the index cache's folder


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(config: dict, where: str) -> None:
    """The config members a reader relies on, checked: IntegrityError naming the
    config and the key (``where`` is the config's location) for anything malformed."""
    name = f"{where}/config"

    def bad(key: str, why: str) -> IntegrityError:
        return IntegrityError(f"{name}: {key} {why}", "config")

    chunker = config.get("chunker")
    if not isinstance(chunker, dict):
        raise bad("chunker", "is missing or not an object")
    bounds = {"min": (64, 1024 * 1024), "avg": (256, 4 * 1024 * 1024),
              "max": (1024, 16 * 1024 * 1024)}
    for key, (lo, hi) in bounds.items():
        v = chunker.get(key)
        if not _whole(v):
            raise bad(f"chunker.{key}", f"is not a whole number ({v!r})"[:200])
        if not lo <= v <= hi:
            raise bad(f"chunker.{key}", f"is {v}, outside {lo}..{hi}")
    if not chunker["min"] <= chunker["avg"] <= chunker["max"]:
        raise bad("chunker", "sizes are not min <= avg <= max")
    seed = chunker.get("seed", 0)
    if seed != "derived" and not (_whole(seed) and 0 <= seed < 2**32):
        raise bad("chunker.seed", f"is neither \"derived\" nor 0..2^32-1 ({seed!r})"[:200])
    comp = config.get("compression", "zstd:3")
    try:
        level = codec.parse_level(comp) if isinstance(comp, str) else 0.5
        if level is not None and not (_whole(level) and -7 <= level <= 22):
            raise ValueError
    except ValueError:
        raise bad("compression", f"is not none, zstd or zstd:<level -7..22> ({comp!r})"[:200]
                  ) from None
    enc = config.get("encryption")
    if enc is not None and not isinstance(enc, dict):
        raise bad("encryption", "is not an object or null")


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def parse_index(doc: object, name: str) -> list[tuple[str, int, list[IndexEntry], list[str]]]:
    """An index record's packs as (pack id, size, entries, blob ids), every row checked
    (``index.check_index``): a pack id of 64 hex digits, a size up to MAX_PACK, rows
    inside the pack (before its header length) with a length up to MAX_SEALED_BLOB.
    IntegrityError naming the index file, the pack and the blob otherwise."""
    c = check_index(doc, name)
    out: list[tuple[str, int, list[IndexEntry], list[str]]] = [
        (pid, size, [], []) for pid, size in c.packs]
    for k, t, bid, o, n, r in zip(c.pack, c.type, c.ids, c.offset, c.length, c.raw,
                                  strict=True):
        pid, _size, entries, ids = out[k]
        entries.append(IndexEntry(pid, BLOB_TYPES[t], o, n, r))
        ids.append(bid)
    return out


class Repository:
    """An open repository. Not thread-safe for writers except through BlobWriter."""

    def __init__(self, backend: Backend, config: dict, keys: Keys,
                 cache_dir: str | os.PathLike[str] | None = None):
        self.backend = backend
        self.config = config
        self.keys = keys
        self.key_from_cache = False  # open took the master key from the key cache
        self.id: str = config["id"]
        # blob id -> IndexEntry, compact (engine/repo/index.py); parsed index files are
        # kept in cache_dir/<repository id>/ when a cache_dir is given (the state dir's)
        self.index: CompactIndex = CompactIndex()
        self.index_cache: IndexCache | None = None
        if cache_dir is not None and isinstance(self.id, str) and _REPO_ID.fullmatch(self.id):
            self.index_cache = IndexCache(os.path.join(os.fspath(cache_dir), self.id))
        self.pack_sizes: dict[str, int] = {}
        self.index_files: set[str] = set()
        self.index_errors: dict[str, str] = {}
        self._loaded_files: set[str] | None = None  # what the last load_index read
        self.snapshot_errors: dict[str, str] = {}
        # decoded tree blobs, most recent last: at most TREE_CACHE_BLOBS of them and
        # TREE_CACHE_BYTES in all (a directory of 1,000 files is a tree of ~250 KB); a
        # walk that reads every tree twice (verify's, measured first) may raise the count
        self.tree_cache_blobs = TREE_CACHE_BLOBS
        self._tree_cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._tree_cache_bytes = 0
        self._tree_packs: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._listed: dict[str, int] = {}  # record name -> size, from the last listing

    # ----------------------------------------------------------------- init/open
    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str | None,
        compression: str = "zstd:3",
        kdf: dict | None = None,
    ) -> Repository:
        if backend.exists("config"):
            raise RepositoryError(f"{backend.location}: a repository already exists here")
        master = os.urandom(64) if password else None
        keys = Keys(master)
        config: dict[str, Any] = {
            "format": "backup-tui",
            "version": FORMAT_VERSION,
            "id": secrets.token_hex(16),
            "created": datetime.now(UTC).isoformat(),
            "chunker": {
                "algorithm": "fastcdc2020",
                "min": CHUNK_MIN,
                "avg": CHUNK_AVG,
                "max": CHUNK_MAX,
                "seed": "derived" if master else 0,
            },
            "hash": "hmac-sha256" if master else "sha256",
            "compression": compression,
            "pack_size": PACK_TARGET,
            "encryption": None,
        }
        if master is not None and password is not None:
            config["encryption"] = {"cipher": "aes-256-gcm", **wrap_master(password, master, kdf)}
        body = _canonical(config)
        config["mac"] = keys.mac(body)
        backend.put("config", json.dumps(config, indent=2).encode())
        return cls(backend, config, keys)

    @classmethod
    def open(cls, backend: Backend, password: str | None,
             cache_dir: str | os.PathLike[str] | None = None,
             key_cache: str | os.PathLike[str] | None = None) -> Repository:
        """``cache_dir``: where parsed index files are cached (the state directory's
        ``index-cache``); None reads every index file. ``key_cache``: the state directory
        whose key cache (engine/repo/keycache.py) may hold the master key, bound to this
        config and password and checked against the config's authenticator, so the
        scrypt derivation is skipped; None (or a miss) derives it from the password."""
        try:
            raw = backend.get("config")
        except NotFound:
            raise NoRepository(
                f"{backend.location}: no repository here (run 'backup-tui init' first; or, "
                "if a [[replica]] holds it, 'backup-tui repository adopt --from REPLICA' "
                "brings it back)"
            ) from None
        try:
            config = codec.parse_json(raw, "config")
            if not isinstance(config, dict) or config.get("format") != "backup-tui":
                raise ValueError("not a backup-tui repository")
            if not isinstance(config.get("id"), str) or not isinstance(config.get("chunker"), dict):
                raise ValueError("id or chunker parameters missing")
        except (ValueError, IntegrityError) as e:
            raise IntegrityError(f"{backend.location}/config: unreadable: {e}", "config") from None
        if config.get("version") != FORMAT_VERSION:
            raise RepositoryError(
                f"{backend.location}: repository format {config.get('version')} "
                f"is not supported (this program reads {FORMAT_VERSION})"
            )
        check_config(config, backend.location)
        enc = config.get("encryption")
        if enc:
            if not password:
                raise WrongPassword(
                    f"{backend.location}: the repository is encrypted and no password was "
                    "given (repository.password_file or $BACKUP_TUI_PASSWORD)"
                )
            body = _canonical({k: v for k, v in config.items() if k != "mac"})
            cached = keycache.load(key_cache, config, password) if key_cache else None
            keys = Keys(cached) if cached is not None else None
            from_cache = keys is not None and keys.mac_matches(body, config.get("mac"))
            if not from_cache:
                keys = Keys(cls._unwrap_any(backend, password, enc))
                if not keys.mac_matches(body, config.get("mac")):
                    raise IntegrityError(f"{backend.location}/config: authenticator mismatch",
                                         "config")
        else:
            keys, from_cache = Keys(None), False
        assert keys is not None
        repo = cls(backend, config, keys, cache_dir)
        repo.key_from_cache = from_cache
        repo.load_index()
        return repo

    def check_key_records(self, password: str | None) -> None:
        """That ``password`` still opens this repository's own key records (the config's
        encryption or a ``keys/`` record) to the master key in use. An open from the key
        cache does not read them, so a damaged or missing record would go unseen until a
        process without the cache (another user, a replica's adopt) could not get in:
        verify calls this. WrongPassword or IntegrityError, named as open names them."""
        enc = self.config.get("encryption")
        if not enc:
            return
        if not password:
            raise WrongPassword(f"{self.backend.location}: the repository is encrypted and no "
                                "password was given")
        if self._unwrap_any(self.backend, password, enc) != self.keys.master_key():
            raise IntegrityError(f"{self.backend.location}: the key that the password opens "
                                 "is not the one of this repository's config", "keys")

    @staticmethod
    def _unwrap_any(backend: Backend, password: str, enc: dict) -> bytes:
        """The master key from config.encryption or, when the password does not open
        it, the first ``keys/`` record that it opens; an unusable key record is skipped
        and named (a warning when a later one opens, else in the error)."""
        try:
            return unwrap_master(password, enc, f"{backend.location}/config", "encryption")
        except WrongPassword:
            pass
        skipped: list[str] = []
        for info in backend.list("keys/"):
            try:
                if info.size > MAX_KEY_RECORD:
                    raise IntegrityError(f"{info.name}: {info.size} bytes, not a key record")
                record = codec.parse_json(backend.get(info.name), info.name)
                master = unwrap_master(password, record, info.name, "")
            except WrongPassword:
                continue
            except EngineError as e:  # malformed, unsupported, unreadable: the next one
                skipped.append(str(e))
                continue
            for why in skipped:
                log.warning("skipped unusable key record %s", why)
            return master
        extra = f" (skipped unusable key records: {'; '.join(skipped)})" if skipped else ""
        raise WrongPassword(
            f"{backend.location}: wrong password: no key of this repository opens with it"
            + extra
        )

    # --------------------------------------------------------------- properties
    @property
    def compression_level(self) -> int | None:
        return codec.parse_level(self.config.get("compression", "zstd:3"))

    def chunker_params(self) -> tuple[int, int, int, int]:
        c = self.config["chunker"]
        seed = self.keys.chunker_seed() if c.get("seed") == "derived" else int(c.get("seed", 0))
        return int(c["min"]), int(c["avg"]), int(c["max"]), seed

    # -------------------------------------------------------- sealed records
    def save_record(self, folder: str, obj: Any) -> str:
        """Store a JSON record (index, snapshot) content-addressed under folder/."""
        body = _canonical(obj)
        if len(body) > MAX_RECORD:  # a reader would refuse it: never write one
            raise RepositoryError(f"{folder} record of {len(body)} bytes is larger than the "
                                  f"{MAX_RECORD} bytes a reader accepts")
        stored = self.keys.seal(codec.encode(body, 3))
        rid = sha256_hex(stored)
        self.backend.put(f"{folder}/{rid}", stored)
        return rid

    def load_record(self, folder: str, rid: str) -> Any:
        name = f"{folder}/{rid}"
        stored = self.stored_record(folder, rid)
        raw = codec.decode(self.keys.open(stored, name), name, MAX_RECORD)
        return codec.parse_json(raw, name)

    def stored_record(self, folder: str, rid: str) -> bytes:
        """A record's stored bytes, checked to hash to its name (not opened): the first half
        of load_record. Enough to know a record read and authenticated before is unchanged
        (the catalog's cache of inventory rows, ops/resolve.py)."""
        name = f"{folder}/{rid}"
        listed = self._listed.get(name)
        if listed is not None and listed > MAX_STORED_RECORD:  # never read it into memory
            raise IntegrityError(f"{name}: {listed} bytes stored, larger than any record", name)
        stored = self.backend.get(name)
        if sha256_hex(stored) != rid:
            raise IntegrityError(f"{name}: content does not match its name (corrupt)", name)
        return stored

    def listed_size(self, folder: str, rid: str) -> int | None:
        """The stored size of ``folder/rid`` as the last ``list_ids(folder)`` saw it."""
        return self._listed.get(f"{folder}/{rid}")

    def list_ids(self, folder: str) -> list[str]:
        """The names under folder/, sorted; their sizes are kept so that load_record
        refuses an oversized object before reading it."""
        ids = []
        for info in self.backend.list(folder + "/"):
            self._listed[info.name] = info.size
            ids.append(info.name.rsplit("/", 1)[1])
        return sorted(ids)

    # -------------------------------------------------------------------- index
    def load_index(self, reuse: bool = False) -> None:
        """``reuse``: keep the index in memory when the index files are exactly those it
        was read from (they are immutable, named by their hash) and all of them read.
        Files are read in ascending name order and a later row for a blob id wins; each
        comes from the index cache when it has it (engine/repo/index.py)."""
        files = set(self.list_ids("index"))
        if reuse and files == self._loaded_files == self.index_files and not self.index_errors:
            return
        index, sizes, errors = CompactIndex.load(
            sorted(files), lambda iid: self.load_record("index", iid), self.index_cache)
        self.index_errors = errors
        with self._lock:
            self.index, self.pack_sizes, self.index_files = index, sizes, files
            self._loaded_files = set(files)

    def has_blob(self, blob_id: str) -> bool:
        return blob_id in self.index

    def write_indexes(self, packs: list[tuple[str, int, list[BlobEntry]]]) -> list[str]:
        """Index files naming packs, each at most MAX_INDEX_BLOBS rows (a pack's rows are
        never split), so no index record passes the record cap."""
        out: list[str] = []
        chunk: list[tuple[str, int, list[BlobEntry]]] = []
        count = 0
        for p in packs:
            if chunk and count + len(p[2]) > MAX_INDEX_BLOBS:
                out.append(self.write_index(chunk) or "")
                chunk, count = [], 0
            chunk.append(p)
            count += len(p[2])
        if chunk:
            out.append(self.write_index(chunk) or "")
        return [i for i in out if i]

    def write_index(self, packs: list[tuple[str, int, list[BlobEntry]]]) -> str | None:
        if not packs:
            return None
        doc = {
            "packs": [
                {"id": pid, "size": size, "blobs": [e.as_list() for e in entries]}
                for pid, size, entries in packs
            ]
        }
        iid = self.save_record("index", doc)
        del doc
        if self.index_cache is not None:  # the next load reads it from there
            self.index_cache.write(iid, Segment.from_packs(packs))
        with self._lock:
            self.index_files.add(iid)
        return iid

    # -------------------------------------------------------------------- blobs
    def load_blob(self, blob_id: str, expect_type: str | None = None,
                  check_id: bool = True) -> bytes:
        """A blob read from its pack, opened, decoded and checked against its id (not
        with ``check_id`` False: a delta's base, whose rebuilt block is checked instead)."""
        if not isinstance(blob_id, str):  # from a crafted tree or snapshot
            raise IntegrityError(f"malformed blob id {blob_id!r}"[:200], "")
        entry = self.index.get(blob_id)
        if entry is None:
            raise IntegrityError(f"blob {blob_id} is not in the index (missing data)", blob_id)
        if expect_type and entry.type != expect_type:
            raise IntegrityError(f"blob {blob_id} is a {entry.type}, expected {expect_type}")
        if entry.type == TREE:
            cached = self._tree_cache.get(blob_id)
            if cached is not None:
                return cached
        name = pack_name(entry.pack_id)
        if entry.length > MAX_SEALED_BLOB:  # load_index refuses these; never allocate them
            raise IntegrityError(f"{name}: blob {blob_id[:16]}: length {entry.length} is "
                                 "larger than any blob", name)
        if entry.type == TREE:
            sealed = self._tree_pack_slice(entry, name)
        else:
            sealed = self.backend.get_range(name, entry.offset, entry.length)
        if len(sealed) != entry.length:
            raise IntegrityError(f"{name}: blob {blob_id[:16]}: the pack ends before "
                                 f"offset {entry.offset}+{entry.length} (truncated?)", name)
        data = self.decode_blob(sealed, blob_id, name, entry.raw_length, check_id)
        if entry.type == TREE:
            with self._lock:
                if blob_id not in self._tree_cache:
                    self._tree_cache[blob_id] = data
                    self._tree_cache_bytes += len(data)
                while self._tree_cache and (len(self._tree_cache) > self.tree_cache_blobs
                                            or self._tree_cache_bytes > TREE_CACHE_BYTES):
                    self._tree_cache_bytes -= len(self._tree_cache.popitem(last=False)[1])
        return data

    def drop_caches(self) -> None:
        """Forget cached trees and tree packs: verify must read what is stored now."""
        with self._lock:
            self._tree_cache.clear()
            self._tree_cache_bytes = 0
            self._tree_packs.clear()

    def _tree_pack_slice(self, entry: IndexEntry, name: str) -> bytes:
        """Tree blobs are read a whole pack at a time and kept (two packs at most): a walk
        of a snapshot reads many small trees from few packs, one request instead of many."""
        size = self.pack_sizes.get(entry.pack_id, 0)
        if not size or size > TREE_PACK_CACHE_MAX:
            return self.backend.get_range(name, entry.offset, entry.length)
        with self._lock:
            pack = self._tree_packs.get(entry.pack_id)
            if pack is not None:
                self._tree_packs.move_to_end(entry.pack_id)
        if pack is None:
            pack = self.backend.get_range(name, 0, size)  # never more than the index says
            with self._lock:
                self._tree_packs[entry.pack_id] = pack
                while len(self._tree_packs) > 2:
                    self._tree_packs.popitem(last=False)
        return pack[entry.offset : entry.offset + entry.length]

    def decode_blob(self, sealed: bytes, blob_id: str, where: str,
                    raw_length: int | None = None, check_id: bool = True) -> bytes:
        """Open, decode (at most raw_length bytes when given, and exactly that many) and
        check a blob against its id."""
        what = f"{where} (blob {blob_id[:16]})"
        if len(sealed) == 0:
            raise IntegrityError(f"{what}: truncated", where)
        cap = codec.MAX_RAW if raw_length is None else min(codec.MAX_RAW, raw_length)
        try:
            data = codec.decode(self.keys.open(sealed, what), what, cap)
        except IntegrityError as e:  # named by the blob; object_name stays the pack
            raise IntegrityError(str(e), where) from None
        if raw_length is not None and len(data) != raw_length:
            raise IntegrityError(f"{what}: decodes to {len(data)} bytes, the index says "
                                 f"{raw_length}", where)
        if check_id and self.keys.blob_id(data) != blob_id:
            raise IntegrityError(f"{what}: content does not match blob id (corrupt)", where)
        return data

    def load_tree(self, tree_id: str) -> dict:
        raw = self.load_blob(tree_id, TREE)
        tree = codec.parse_json(raw, f"tree {tree_id}")
        if not isinstance(tree, dict) or not isinstance(tree.get("nodes"), list):
            raise IntegrityError(f"tree {tree_id}: malformed", tree_id)
        return tree

    # ---------------------------------------------------------------- snapshots
    def load_snapshot(self, sid: str) -> dict:
        snap = self.load_record("snapshots", sid)
        if not isinstance(snap, dict) or "time" not in snap or "kind" not in snap:
            raise IntegrityError(f"snapshots/{sid}: malformed snapshot", f"snapshots/{sid}")
        snap["id"] = sid
        return snap

    def save_snapshot(self, snap: dict) -> str:
        body = {k: v for k, v in snap.items() if k != "id"}
        sid = self.save_record("snapshots", body)
        snap["id"] = sid
        return sid

    def snapshots(self) -> Iterator[dict]:
        """Every readable snapshot; unreadable ones are named in snapshot_errors."""
        self.snapshot_errors: dict[str, str] = {}
        for sid in self.list_ids("snapshots"):
            try:
                yield self.load_snapshot(sid)
            except EngineError as e:
                self.snapshot_errors[sid] = str(e)

    def writer(self, workers: int = 2) -> BlobWriter:
        return BlobWriter(self, workers)


class BlobWriter:
    """Saves new blobs into packs; compress+seal runs on a bounded thread pool.

    Memory stays flat however many blobs a backup adds: once the written packs hold
    ``CHECKPOINT_BLOBS`` rows they are indexed at once (an index file, on the index
    thread) and their ids move from ``pending`` into the repository's compact index.
    A backup that fails afterwards leaves indexed blobs no snapshot names; prune reclaims
    them, as it reclaims unindexed packs. ``guard``, when set, is called before such an
    index is written and raises when the backup may no longer add to the repository."""

    CHECKPOINT_BLOBS = 65_536

    def __init__(self, repo: Repository, workers: int = 2, max_inflight: int = 8):
        self.repo = repo
        self.level = repo.compression_level
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal")
        self.inflight: collections.deque[tuple[Future, str, str, int]] = collections.deque()
        self.max_inflight = max_inflight
        self.open_packs: dict[str, PackBuilder] = {DATA: PackBuilder(), TREE: PackBuilder()}
        self.pending: set[str] = set()
        self.written: list[tuple[str, int, list[BlobEntry]]] = []
        self.added_bytes = 0  # stored (sealed) bytes of new blobs
        self.added_raw = 0
        self.new_blobs = 0
        self._lock = threading.RLock()  # save() may be called from several reader threads
        self.writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-write")
        self.pack_writes: collections.deque[Future] = collections.deque()
        self._written_rows = 0  # rows in self.written
        self.index_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write")
        self.index_writes: collections.deque[Future] = collections.deque()
        self.guard: Callable[[], None] | None = None

    def _encode(self, data: bytes) -> bytes:
        return self.repo.keys.seal(codec.encode(data, self.level))

    def save(self, blob_type: str, data: bytes | memoryview, blob_id: str | None = None) -> str:
        """Store data as a blob unless it already exists; returns its id. Copies data."""
        if len(data) > codec.MAX_RAW:  # a reader would refuse it: never write one
            raise RepositoryError(f"a {blob_type} blob of {len(data)} bytes is larger than the "
                                  f"{codec.MAX_RAW} bytes a reader accepts")
        if blob_id is None:
            blob_id = self.repo.keys.blob_id(data)  # outside the lock: hashing runs in parallel
        with self._lock:
            if blob_id in self.pending or self.repo.has_blob(blob_id):
                return blob_id
            self.pending.add(blob_id)
            raw = bytes(data)
            fut = self.pool.submit(self._encode, raw)
            self.inflight.append((fut, blob_type, blob_id, len(raw)))
            while len(self.inflight) > self.max_inflight:
                self._drain_one()
        return blob_id

    def _drain_one(self) -> None:
        fut, blob_type, blob_id, raw_len = self.inflight.popleft()
        sealed = fut.result()
        pack = self.open_packs[blob_type]
        pack.add(blob_type, blob_id, sealed, raw_len)
        self.added_bytes += len(sealed)
        self.added_raw += raw_len
        self.new_blobs += 1
        if pack.size >= PACK_TARGET:
            self._write_pack(blob_type)

    def _write_pack(self, blob_type: str) -> None:
        """Hand a full pack to the writer thread (hash, write, fsync happen there)."""
        pack = self.open_packs[blob_type]
        if not pack.entries:
            return
        self.open_packs[blob_type] = PackBuilder()
        self.pack_writes.append(self.writer_pool.submit(self._finish_and_put, pack))
        while len(self.pack_writes) > 1:  # at most one full pack waiting in memory
            self.add_written(self.pack_writes.popleft().result())

    def add_written(self, pack: tuple[str, int, list[BlobEntry]]) -> None:
        """A pack now on the backend; indexes the written packs once they are many."""
        with self._lock:
            self.written.append(pack)
            self._written_rows += len(pack[2])
            if self._written_rows < self.CHECKPOINT_BLOBS:
                return
            batch, self.written, self._written_rows = self.written, [], 0
            while self.index_writes and self.index_writes[0].done():
                self.index_writes.popleft().result()  # raises a failed checkpoint's error
            self.index_writes.append(self.index_pool.submit(self._checkpoint, batch))

    def _checkpoint(self, batch: list[tuple[str, int, list[BlobEntry]]]) -> None:
        if self.guard is not None:
            self.guard()
        self.repo.write_indexes(batch)
        with self._lock:
            self._publish(batch)
            for _pid, _size, entries in batch:
                for e in entries:
                    self.pending.discard(e.id)

    def _publish(self, packs: list[tuple[str, int, list[BlobEntry]]]) -> None:
        """Indexed packs into the repository's in-memory index and pack sizes."""
        with self.repo._lock:
            for pid, size, _entries in packs:
                self.repo.pack_sizes[pid] = size
            self.repo.index.add_packs(packs)

    def _wait_checkpoints(self) -> None:
        while self.index_writes:
            self.index_writes.popleft().result()

    def _finish_and_put(self, pack: PackBuilder) -> tuple[str, int, list[BlobEntry]]:
        entries = pack.entries
        pid, data = pack.finish(self.repo.keys)
        self.repo.backend.put(pack_name(pid), data)
        return pid, len(data), entries

    def flush(self) -> None:
        """Every saved blob is in a pack on the backend when this returns."""
        with self._lock:
            while self.inflight:
                self._drain_one()
            for t in (DATA, TREE):
                self._write_pack(t)
            while self.pack_writes:
                self.add_written(self.pack_writes.popleft().result())
        self._wait_checkpoints()

    def commit(self) -> str | None:
        """Write remaining packs, then the index naming them; make blobs visible."""
        self.flush()
        ids = self.repo.write_indexes(self.written)
        self._publish(self.written)
        self.written, self._written_rows = [], 0
        self.pending.clear()
        return ids[-1] if ids else None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer_pool.shutdown(wait=True, cancel_futures=True)
        self.index_pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


__all__ = ["Repository", "BlobWriter", "IndexEntry", "b64e", "now_iso", "DATA", "TREE"]
