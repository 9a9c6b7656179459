"""repository adopt: make the local repository again from a replica, after losing the host.

A replica is a complete copy of the repository (``ops/replicate.py``), so the
way home is to copy it back: the same repository id and keys, every object as
it is. Afterwards ``backup`` and ``replicate`` carry on as before: the local
``config`` is the replica's own bytes, so replicate's identity check passes
and every object it lists is already there.

Every object is checked before it is written, and damage is never adopted:

- ``config``: opened with the password and its MAC checked (with the replica's
  ``keys/``), before anything is written;
- packs (``data/``), ``index/``, ``snapshots/``: the SHA-256 of the bytes is
  the name; index and snapshot records also open and decode with the keys;
- ``keys/`` and ``pins/``: valid JSON records (not authenticated by the
  format); an invalid one is skipped and reported, not copied;
- ``wal/`` (planned, never written by this version): copied as it is.

Objects are written through ``LocalBackend`` (temporary file, fsync, rename)
in the repository's write order, one class at a time, several downloads at
once: ``keys/``, packs, ``index/``, ``snapshots/``, ``pins/``, ``wal/``, and
``config`` last, so a half-adopted folder is never taken for a repository.
While it is unfinished the folder holds a hidden ``.adopting`` marker naming
the repository id; a second run resumes: an object already there with the
right size (and, for the content-addressed classes, the right hash) is not
downloaded again. A damaged object in the replica stops the adoption before
the next class (no index ever names a pack that is not there); the objects
are named, and adopting again (from this replica once repaired, or from
another replica of the same repository) fills in the rest.

A folder holding another repository (or an unfinished adoption of one), or
files that are not a repository's, is refused. A folder holding this
repository is filled in: what is missing, or damaged there, is copied; local
``keys/`` and ``pins/`` are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import IntegrityError, NotFound, RepositoryError, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.ops.replicate import CLASSES
from engine.repo import codec
from engine.repo.locks import RepoLock
from engine.repo.repository import MAX_RECORD, Repository
from engine.storage.base import Backend
from engine.storage.local import LocalBackend
from engine.storage.memory import MemoryBackend

if TYPE_CHECKING:
    from engine.facade import Engine
    from engine.repo.crypto import Keys

MARKER = ".adopting"  # hidden: never listed as an object, never part of the repository
WORKERS = 8
# Downloaded and not yet written, at most (an object larger than this is fetched alone):
# each object comes whole in one GET, WORKERS at once, so memory is bounded by this and
# not by WORKERS times the largest pack a reader accepts.
INFLIGHT_BYTES = 128 * 1024 * 1024
HEX64 = r"[0-9a-f]{64}"
NAME_RULES = {  # the names of the content-addressed classes; other names there are skipped
    "data/": re.compile(r"data/([0-9a-f]{2})/(\1[0-9a-f]{62})"),
    "index/": re.compile(rf"index/({HEX64})"),
    "snapshots/": re.compile(rf"snapshots/({HEX64})"),
}
FOLDERS = {c.rstrip("/") for c in CLASSES} | {"locks"}


@dataclass
class AdoptResult:
    replica: str
    id: str = ""  # the repository id
    location: str = ""  # the local repository
    downloaded: int = 0
    downloaded_bytes: int = 0
    present: int = 0  # already here, checked, not downloaded again
    replaced: int = 0  # here but damaged (or cut short): replaced by the replica's
    resumed: bool = False  # the local folder already held part of it
    snapshots: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why", not copied
    missing_packs: list[str] = field(default_factory=list)  # named by the index, not in it
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing_packs

    def as_json(self) -> dict:
        return {
            "replica": self.replica,
            "ok": self.ok,
            "id": self.id,
            "location": self.location,
            "downloaded": self.downloaded,
            "downloaded_bytes": self.downloaded_bytes,
            "present": self.present,
            "replaced": self.replaced,
            "resumed": self.resumed,
            "snapshots": len(self.snapshots),
            "skipped": self.skipped,
            "missing_packs": self.missing_packs,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------ checks
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_object(keys: Keys, name: str, data: bytes) -> str | None:
    """Why the bytes of ``name`` must not be adopted, or None when they check."""
    cls = name.split("/", 1)[0] + "/"
    rule = NAME_RULES.get(cls)
    if rule is not None:
        m = rule.fullmatch(name)
        oid = m.group(m.lastindex) if m else ""
        if _sha256(data) != oid:
            return "content does not match its name (corrupt)"
        if cls == "data/":
            return None
        try:
            raw = codec.decode(keys.open(data, name), name, MAX_RECORD)
            if not isinstance(codec.parse_json(raw, name), dict):
                return "not a record"
        except IntegrityError as e:
            return str(e).removeprefix(f"{name}: ")
        except ValueError as e:
            return f"not valid JSON: {e}"
        return None
    if cls in ("keys/", "pins/"):
        try:
            doc = codec.parse_json(data, name)
        except (ValueError, IntegrityError) as e:
            return f"not valid JSON: {e}"
        if not isinstance(doc, dict) or (cls == "keys/" and not {"kdf", "wrapped_key"} <= set(doc)):
            return "not a key record" if cls == "keys/" else "not a pin record"
    return None  # wal/: not a format of this version yet; copied as it is


def _skippable(name: str) -> str | None:
    """Why a listed name is no object to adopt (not a name of the format), or None."""
    cls = name.split("/", 1)[0] + "/"
    rule = NAME_RULES.get(cls)
    if rule is not None and not rule.fullmatch(name):
        return "not a name of the repository format"
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return "not a name of the repository format"
    if cls == "pins/" and not re.fullmatch(rf"pins/{HEX64}", name):
        return "not a pin name"
    return None


# ------------------------------------------------------------------ the local side
def _read_marker(root: Path) -> dict | None:
    try:
        doc = json.loads((root / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RepositoryError(f"{root / MARKER}: unreadable ({e}); remove it to adopt again "
                              "into this folder") from None
    return doc if isinstance(doc, dict) else {}


def _write_marker(root: Path, doc: dict) -> None:
    tmp = root / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, root / MARKER)


def inspect_local(local: LocalBackend) -> tuple[str | None, str | None]:
    """(id of the repository here, id of an unfinished adoption here); raises when the
    folder holds something that must not be adopted into."""
    root = local.root
    if root.exists() and not root.is_dir():
        raise RepositoryError(f"{root}: exists and is not a directory")
    if not root.exists():
        return None, None
    try:
        raw = local.get("config")
    except NotFound:
        raw = None
    if raw is not None:
        try:
            rid = codec.parse_json(raw, "config").get("id")
        except (ValueError, AttributeError, IntegrityError):
            rid = None
        if not isinstance(rid, str):
            raise RepositoryError(f"{root}: holds an unreadable config; not adopting into it")
        return rid, None
    marker = _read_marker(root)
    if marker is not None:
        return None, str(marker.get("id", ""))
    foreign = sorted(e.name for e in root.iterdir()
                     if not e.name.startswith(".") and e.name not in FOLDERS)
    if foreign:
        raise RepositoryError(f"{root}: holds files that are not a repository's "
                              f"({', '.join(foreign[:5])}); adopt into an empty or new folder")
    if any(not o.name.startswith("locks/") for o in local.list("")):
        raise RepositoryError(f"{root}: holds repository objects but no config and no "
                              "unfinished adoption; not adopting into it (move it aside)")
    return None, None


# ------------------------------------------------------------------ the replica side
def open_replica(remote: Backend, password: str | None) -> tuple[bytes, Repository, MemoryBackend]:
    """The replica's config bytes and the repository they open (config MAC checked), with
    its keys/ records held in memory. Nothing is written anywhere."""
    if hasattr(remote, "check_bucket"):
        remote.check_bucket()
    try:
        raw = remote.get("config")
    except NotFound:
        raise RepositoryError(f"{remote.location}: holds no repository (no config); nothing "
                              "to adopt") from None
    mem = MemoryBackend()
    mem.location = remote.location
    mem.put("config", raw)
    for info in remote.list("keys/"):
        if _skippable(info.name) is None:
            mem.put(info.name, remote.get(info.name))
    return raw, Repository.open(mem, password), mem


# ------------------------------------------------------------------ adopt
def adopt(engine: Engine, name: str, on_event: EventCallback,
          cancel: CancelToken | None = None, workers: int = WORKERS) -> AdoptResult:
    """Make the local repository ([repository] path) from replica ``name``, as job "adopt"."""
    engine.config.replica(name)  # an unknown name fails here, with the known ones
    local = engine.backend
    if engine.replica_name or not isinstance(local, LocalBackend):
        raise UsageError("adopt makes the local repository ([repository] path) from a "
                         "replica; it cannot adopt into a replica")
    with engine.job("adopt", name, on_event) as job:
        res = run_adopt(local, engine.replica_backend(name), name, engine.config.password(),
                        job.id, job.emit, cancel, workers)
        engine.catalog.replica_done(name, res.snapshots)
        job.objects = res.snapshots
        job.audit_target = f"{name} -> {local.location}"
        job.detail = (f"{res.downloaded} object(s) downloaded, {res.present} already here, "
                      f"{len(res.snapshots)} snapshot(s)")
        if not res.ok:
            job.state = job.outcome = "incomplete"
            job.error = (f"{len(res.missing_packs)} pack(s) named by the index are in neither "
                         "the replica nor here")
            job.detail += "; " + job.error
    return res


def run_adopt(local: LocalBackend, remote: Backend, name: str, password: str | None,
              job_id: str, on_event: EventCallback, cancel: CancelToken | None = None,
              workers: int = WORKERS) -> AdoptResult:
    cancel = cancel or CancelToken()
    start = time.monotonic()
    res = AdoptResult(name, location=local.location)
    here_id, unfinished_id = inspect_local(local)  # reads only
    config_raw, repo, mem = open_replica(remote, password)  # the password is checked here
    res.id = repo.id
    theirs = here_id or unfinished_id
    if theirs and theirs != repo.id:
        what = "a repository" if here_id else "an unfinished adoption of a repository"
        raise RepositoryError(
            f"{local.location}: holds {what} with another id ({theirs}, the replica's is "
            f"{repo.id}); refusing to mix them: adopt into an empty or new folder")
    res.resumed = bool(theirs)
    cancel.check()

    # What to fetch, class by class, in write order; the keys/ records are already here.
    plan: list[tuple[str, list[tuple[str, int]]]] = []
    for cls in CLASSES:
        objs = mem.list(cls) if cls == "keys/" else remote.list(cls)
        batch = []
        for o in sorted(objs, key=lambda o: o.name):
            why = _skippable(o.name)
            if why:
                res.skipped.append(f"{o.name}: {why}")
            else:
                batch.append((o.name, o.size))
        plan.append((cls, batch))
    total_items = sum(len(b) for _, b in plan) + 1
    total_bytes = sum(s for _, b in plan for _, s in b) + len(config_raw)
    done = {"items": 0, "bytes": 0}
    lock = threading.Lock()

    def emit(final: bool = False) -> None:
        on_event(Event(job_id, "adopt", bytes_done=done["bytes"], bytes_total=total_bytes,
                       items_done=done["items"], items_total=total_items,
                       message=f"from {name}", final=final))

    local.root.mkdir(parents=True, exist_ok=True)
    if here_id is None:
        _write_marker(local.root, {"id": repo.id, "replica": name,
                                   "started": datetime.now(UTC).isoformat(timespec="seconds")})
    damaged: list[str] = []
    local_root = local.root
    room = threading.Condition()
    inflight = [0]

    def hold(size: int) -> None:
        with room:
            while inflight[0] and inflight[0] + size > INFLIGHT_BYTES:
                room.wait(0.5)
                cancel.check()
            inflight[0] += size

    def release(size: int) -> None:
        with room:
            inflight[0] -= size
            room.notify_all()

    def fetch(obj: str, size: int) -> None:
        cancel.check()
        path = local_root.joinpath(*obj.split("/"))
        addressed = obj.split("/", 1)[0] + "/" in NAME_RULES
        try:
            here = path.stat().st_size if path.is_file() else None
        except OSError:
            here = None
        if here is not None and (not addressed or (
                here == size and _file_sha256(path) == path.name)):
            with lock:
                res.present += 1
                done["items"] += 1
                done["bytes"] += size
            emit()
            return  # content-addressed and checked, or a local key/pin record: kept
        hold(size)
        try:
            fetch_checked(obj, size, here)
        finally:
            release(size)

    def fetch_checked(obj: str, size: int, here: int | None) -> None:
        data = mem.get(obj) if obj.startswith("keys/") else remote.get(obj)
        why = check_object(repo.keys, obj, data)
        if why is None and len(data) != size:
            why = f"{len(data)} bytes, listed as {size}"
        if why is not None:
            with lock:
                if obj.startswith(("keys/", "pins/")):
                    res.skipped.append(f"{obj}: {why}")
                else:
                    damaged.append(f"{obj}: {why}")
                done["items"] += 1
            emit()
            return
        local.put(obj, data)
        with lock:
            res.downloaded += 1
            res.downloaded_bytes += len(data)
            res.replaced += here is not None
            done["items"] += 1
            done["bytes"] += size
        emit()

    with RepoLock(local, exclusive=False, purpose=f"adopt from {name}").acquire():
        for _cls, batch in plan:
            if not batch:
                continue
            with ThreadPoolExecutor(max_workers=workers,
                                    thread_name_prefix=f"adopt-{name}") as pool:
                futures = [pool.submit(fetch, n, s) for n, s in batch]
                finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in finished:
                    f.result()
            if damaged:  # never a class that names what is not there
                break
        if damaged:
            shown = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more"
                                              if len(damaged) > 5 else "")
            state = ("is left unfinished (no config)" if here_id is None else
                     "lacks them (its snapshots that need them cannot be restored)")
            raise IntegrityError(
                f"{remote.location}: {len(damaged)} damaged object(s), not adopted: {shown}. "
                f"{local.location} {state}: adopt again from another replica, or once this "
                "one is repaired; what was adopted is kept", damaged[0].split(":", 1)[0])

        # Complete? Every pack the index names must be here now.
        check = Repository(local, repo.config, repo.keys)
        check.load_index()
        have = {o.name.rsplit("/", 1)[1] for o in local.list("data/")}
        res.missing_packs = sorted(set(check.pack_sizes) - have)
        if not local.exists("config"):
            local.put("config", config_raw)  # the commit point
            res.downloaded += 1
            res.downloaded_bytes += len(config_raw)
            done["bytes"] += len(config_raw)
        else:
            res.present += 1
        done["items"] += 1
        try:
            (local.root / MARKER).unlink()
        except FileNotFoundError:
            pass
    remote_snaps = {n.rsplit("/", 1)[1] for n, _ in dict(plan)["snapshots/"]}
    res.snapshots = sorted(remote_snaps & set(check.list_ids("snapshots")))
    res.seconds = time.monotonic() - start
    emit(final=True)
    return res


__all__ = ["AdoptResult", "adopt", "run_adopt", "check_object", "inspect_local"]
