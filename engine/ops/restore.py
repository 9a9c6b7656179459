"""restore: write a files snapshot (or selected paths of it) into a target directory.

Two steps, so a wizard can show the plan before anything is written:
``plan_restore`` resolves the selection, walks every tree it touches and
rejects the snapshot as a whole if any entry is unsafe (see engine.repo.walk),
and counts files and bytes; ``execute_restore`` then writes. Writes never
follow a symlink: files are opened with O_NOFOLLOW, and an existing entry in
the way (with --force) is removed, not written through. Directory metadata is
set last, deepest first, so their mtimes stay as stored.
"""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError, UnsafeEntry, UsageError
from engine.events import CancelToken, Event, EventCallback
from engine.repo.repository import Repository
from engine.repo.tree import link_target
from engine.repo.walk import find, walk


@dataclass
class RestorePlan:
    snapshot: dict
    target: Path
    selections: list[tuple[bytes, dict]]  # (path in snapshot, node)
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    force: bool = False
    entries: list[tuple[bytes, dict]] = field(default_factory=list, repr=False)

    @property
    def target_label(self) -> str:
        """What the job and the audit log call this restore."""
        return f"{self.snapshot['kind']}:{self.snapshot['source']} -> {self.target}"

    def summary(self) -> dict:
        return {
            "snapshot": self.snapshot["id"],
            "target": str(self.target),
            "paths": [os.fsdecode(p) or "/" for p, _ in self.selections],
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
        }


@dataclass
class RestoreResult:
    snapshot: str
    target: str
    files: int
    bytes: int
    warnings: list[str]


def _check_target(target: Path, force: bool) -> None:
    if target.is_symlink():
        raise UsageError(f"restore target {target} is a symlink; give the real directory")
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"restore target {target} exists and is not a directory")
        if any(target.iterdir()) and not force:
            raise UsageError(
                f"restore target {target} is not empty (use --force to restore into it)"
            )


def plan_restore(
    repo: Repository, snap: dict, target: str | os.PathLike[str], paths=(), force=False
) -> RestorePlan:
    if not os.fspath(target):  # e.g. an unset shell variable: never the current directory
        raise UsageError("restore target is empty: give the directory to restore into")
    tgt = Path(os.path.abspath(target))
    _check_target(tgt, force)
    selections = [find(repo, snap["tree"], p) for p in paths] if paths else [
        (b"", {"type": "dir", "subtree": snap["tree"]})
    ]
    plan = RestorePlan(snap, tgt, selections, force=force)
    for sel_path, node in selections:
        # parents of a selected path are restored as directories with their metadata
        parts = sel_path.split(b"/") if sel_path else []
        for i in range(1, len(parts)):
            p, n = find(repo, snap["tree"], os.fsdecode(b"/".join(parts[:i])))
            plan.entries.append((p, n))
        items = [(sel_path, node)] if sel_path else []
        if node["type"] == "dir":
            items += list(walk(repo, node["subtree"], sel_path))
        for p, n in items:
            plan.entries.append((p, n))
            if n["type"] == "file":
                plan.files += 1
                plan.bytes += int(n.get("size", 0))
                if not isinstance(n.get("content", []), list):
                    raise UnsafeEntry(f"{os.fsdecode(p)}: malformed content list")
            elif n["type"] == "dir":
                plan.dirs += 1
    return plan


class _Restorer:
    def __init__(self, repo: Repository, plan: RestorePlan, job_id: str, on_event, cancel):
        self.repo = repo
        self.plan = plan
        self.root = os.fsencode(str(plan.target))
        self.job_id = job_id
        self.on_event = on_event
        self.cancel = cancel
        self.is_root = os.geteuid() == 0
        self.bytes_done = 0
        self.files_done = 0
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._dirs_done: set[bytes] = set()
        # An empty or new target holds nothing we could write through or must remove;
        # then the lstat of every path before writing it is skipped.
        self.fresh = not plan.target.exists() or not any(plan.target.iterdir())

    def _dest(self, rel: bytes) -> bytes:
        dest = os.path.join(self.root, rel)
        # belt and braces: the names were checked, but never write outside the target
        if not os.path.normpath(dest).startswith(self.root.rstrip(b"/") + b"/"):
            raise UnsafeEntry(f"{os.fsdecode(rel)}: would be written outside the target")
        return dest

    def _ensure_parent(self, dest: bytes) -> None:
        parent = os.path.dirname(dest)
        if parent in self._dirs_done:
            return
        rel = os.path.relpath(parent, self.root)
        cur = self.root
        for part in [] if rel == b"." else rel.split(b"/"):
            cur = os.path.join(cur, part)
            self._make_dir(cur)
        self._dirs_done.add(parent)

    def _make_dir(self, path: bytes) -> None:
        if self.fresh:  # the target was empty: nothing can be in the way
            try:
                os.mkdir(path, 0o700)
                return
            except FileExistsError:
                pass
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            return
        if stat.S_ISDIR(st.st_mode):
            return
        os.unlink(path)  # a file or symlink in the way (only possible with --force)
        os.mkdir(path, 0o700)

    def _remove_existing(self, dest: bytes) -> None:
        if self.fresh:
            return
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            import shutil

            shutil.rmtree(dest)
        else:
            os.unlink(dest)

    def _meta_fd(self, fd: int, dest: bytes, node: dict) -> None:
        """Owner, mode and times through the open file: no path look-ups."""
        try:
            if self.is_root:
                os.fchown(fd, int(node.get("uid", 0)), int(node.get("gid", 0)))
            os.fchmod(fd, int(node.get("mode", 0o644)) & 0o7777)
            mt = int(node.get("mtime_ns", 0))
            os.utime(fd, ns=(mt, mt))
        except OSError as e:
            self.warnings.append(f"{os.fsdecode(dest)}: cannot set metadata: {e.strerror}")

    def _meta(self, dest: bytes, node: dict) -> None:
        link = node["type"] == "symlink"
        try:
            if self.is_root:
                os.chown(dest, int(node.get("uid", 0)), int(node.get("gid", 0)),
                         follow_symlinks=False)
            if not link:
                os.chmod(dest, int(node.get("mode", 0o644)) & 0o7777)
            mt = int(node.get("mtime_ns", 0))
            os.utime(dest, ns=(mt, mt), follow_symlinks=False)
        except OSError as e:
            self.warnings.append(f"{os.fsdecode(dest)}: cannot set metadata: {e.strerror}")

    def _write_file(self, dest: bytes, node: dict) -> None:
        self.cancel.check()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            for blob_id in node.get("content", []):
                data = self.repo.load_blob(blob_id, "data")
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                with self._lock:
                    self.bytes_done += len(data)
            self._meta_fd(fd, dest, node)
        finally:
            os.close(fd)
        with self._lock:
            self.files_done += 1

    def run(self, workers: int = 4) -> None:
        plan = self.plan
        os.makedirs(self.root, exist_ok=True)
        dirs: list[tuple[bytes, dict]] = []
        pending: set[Future] = set()
        created: set[bytes] = set()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
            try:
                for rel, node in plan.entries:
                    if rel in created:
                        continue
                    created.add(rel)
                    dest = self._dest(rel)
                    self._ensure_parent(dest)
                    typ = node["type"]
                    if typ == "dir":
                        self._make_dir(dest)
                        self._dirs_done.add(dest)
                        dirs.append((dest, node))
                        continue
                    self._remove_existing(dest)
                    if typ == "file":
                        pending.add(pool.submit(self._write_file, dest, node))
                        if len(pending) >= workers * 4:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for f in done:
                                f.result()
                            self._progress()
                    elif typ == "symlink":
                        os.symlink(link_target(node), dest)
                        self._meta(dest, node)
                    elif typ == "fifo":
                        os.mkfifo(dest, 0o600)
                        self._meta(dest, node)
                    elif typ in ("chardev", "blockdev") and self.is_root:
                        kind = stat.S_IFCHR if typ == "chardev" else stat.S_IFBLK
                        os.mknod(dest, kind | 0o600, int(node.get("rdev", 0)))
                        self._meta(dest, node)
                    else:
                        self.warnings.append(f"{os.fsdecode(rel)}: {typ} not restored")
                for f in pending:
                    f.result()
            except BaseException:
                self.cancel.cancel()
                raise
        for dest, node in sorted(dirs, key=lambda d: d[0].count(b"/"), reverse=True):
            self._meta(dest, node)
        self._progress(final=True)

    def _progress(self, final: bool = False) -> None:
        self.on_event(
            Event(
                self.job_id,
                "restore",
                bytes_done=self.bytes_done,
                bytes_total=self.plan.bytes,
                items_done=self.files_done,
                items_total=self.plan.files,
                message=str(self.plan.target),
                final=final,
            )
        )


def execute_restore(
    repo: Repository,
    plan: RestorePlan,
    job_id: str,
    on_event: EventCallback,
    cancel: CancelToken | None = None,
) -> RestoreResult:
    _check_target(plan.target, plan.force)
    r = _Restorer(repo, plan, job_id, on_event, cancel or CancelToken())
    try:
        r.run()
    except OSError as e:
        raise EngineError(f"restore into {plan.target} failed: {e}") from None
    if plan.snapshot.get("incomplete"):
        r.warnings.insert(0, f"snapshot {plan.snapshot['id'][:8]} is incomplete: "
                             f"{plan.snapshot.get('errors_total', 0)} path(s) could not be backed "
                             "up then and are not restored (see 'backup-tui show')")
    return RestoreResult(plan.snapshot["id"], str(plan.target), r.files_done, r.bytes_done,
                         r.warnings)
