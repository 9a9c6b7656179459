"""The ``files`` kind: a ``[[fileset]]`` of directories, walked into tree blobs.

This module is the kind's face to the rest of the engine (config, backup entry
point, restore planning); the walk itself is ``engine/sources/files.py`` and
the writing of a restore ``engine/ops/restore.py``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, EngineError, UsageError
from engine.events import CancelToken, Event
from engine.sources.base import (
    BackupContext,
    BackupOutput,
    RestoreCheck,
    RestoreForm,
    Source,
    SourceConfig,
)


@dataclass(frozen=True, kw_only=True)
class FilesetConfig(SourceConfig):
    """One ``[[fileset]]``: absolute paths, exclude patterns."""

    section = "fileset"

    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    one_file_system: bool = False

    def validate(self, where: str, prefix: str) -> None:
        if not self.paths:
            raise ConfigError(f"{where}: {prefix}.paths must not be empty")
        for p in self.paths:
            if not os.path.isabs(p):
                raise ConfigError(f"{where}: {prefix}.paths: {p!r} is not an absolute path")


class _Totals:
    """Progress totals a reader can trust: known, or 0 (unknown), never merely what is done.

    Without a parent snapshot a scan of the tree, on a thread of its own, counts it; its
    figures count once it has finished. With a parent, its figures are the first estimate
    (a fresh walk only to count the tree cost 40% of a no-change backup). A backup that
    outgrows the estimate is reading a grown fileset, new data beside which a walk is cheap:
    the scan starts then. A total the backup has passed says nothing: ``get`` reports 0
    until a finished scan knows better, so no reader shows 100% while most of a grown
    fileset is still to go (an indeterminate bar with bytes and rate instead)."""

    def __init__(self, parent: dict | None, fileset: FilesetConfig, cancel: CancelToken):
        self._fileset, self._cancel = fileset, cancel
        self._figures = (0, 0)  # (files, bytes); one tuple, so a reader never sees half
        self._scan: threading.Thread | None = None
        if parent is not None:
            stats = parent.get("stats", {})
            self._figures = (int(stats.get("files", 0)), int(stats.get("size", 0)))
        else:
            self._start_scan()

    def _start_scan(self) -> None:
        from engine.sources.files import scan

        def run() -> None:
            try:
                self._figures = scan(self._fileset, self._cancel)
            except Exception:  # noqa: BLE001 - totals are a nicety; the backup goes on
                pass

        self._figures = (0, 0)  # unknown until the scan has finished
        self._scan = threading.Thread(target=run, daemon=True, name="scan")
        self._scan.start()

    def get(self, files_done: int = 0, bytes_done: int = 0) -> tuple[int, int]:
        """(files, bytes) to back up, or (0, 0) when unknown: not counted yet, or passed."""
        files, nbytes = self._figures
        passed = bytes_done > nbytes or files_done > files
        if passed and self._scan is None:  # a grown fileset: count it now
            self._start_scan()
        if passed or (files, nbytes) == (0, 0):
            return 0, 0
        return files, nbytes

    def wait(self, timeout: float | None = None) -> None:
        """Tests: until a scan that started has finished."""
        if self._scan is not None:
            self._scan.join(timeout)


class FilesSource(Source):
    kind = "files"
    config_type = FilesetConfig
    label = "fileset"
    schedule = "files"
    default_cron = "0 3 * * *"
    schedule_text = "back up every fileset"
    example_name = "uploads"

    config: FilesetConfig

    def description(self) -> str:
        return ", ".join(self.config.paths)

    def check(self) -> None:
        for p in self.config.paths:
            if not os.path.lexists(p):
                raise EngineError(f"fileset {self.name!r}: path {p} does not exist")

    def usable_parent(self, parent: dict) -> bool:
        # a parent of other paths would make every file look new, and its tree unrelated
        return sorted(parent.get("paths", [])) == sorted(self.config.paths)

    def backup(self, ctx: BackupContext) -> BackupOutput:
        from engine.sources.files import FilesBackup, FilesStats

        ctx.on_event(Event(ctx.job_id, "scan", message=f"scanning {self.description()}"))
        totals = _Totals(ctx.parent, self.config, ctx.cancel)

        def progress(stats: FilesStats, current: str) -> None:
            done = stats.bytes + stats.partial
            n_files, n_bytes = totals.get(stats.files, done)
            if done >= n_bytes and stats.files >= n_files:  # reached: the trees are still
                n_files = n_bytes = 0  # to write, so not 100% before the end (unknown)
            ctx.on_event(Event(ctx.job_id, "backup", bytes_done=done, bytes_total=n_bytes,
                               items_done=stats.files, items_total=n_files, message=current))

        fb = FilesBackup(ctx.repo, ctx.writer, self.config,
                         ctx.parent["tree"] if ctx.parent else None, progress, ctx.cancel)
        root = fb.run()
        stats = fb.stats
        return BackupOutput(
            fields={"paths": list(self.config.paths), "tree": root,
                    "errors": stats.errors[:1000], "errors_total": len(stats.errors)},
            size=stats.bytes,
            stats={"files": stats.files, "dirs": stats.dirs,
                   "unchanged_files": stats.unchanged_files, "bytes_read": stats.bytes_read},
            errors=stats.errors,
            items=stats.files,
        )

    # ------------------------------------------------------------ restore
    @classmethod
    def plan_restore(cls, config, repo, snap: dict, target: str = "",
                     paths: list[str] | tuple[str, ...] = (), force: bool = False,
                     allow_devices: bool = False, allow_setid: bool = False,
                     resume: bool = False, **unknown: Any):
        """Options: ``target``, ``paths``, ``force``, ``resume`` (an existing target
        accepted; files already there with the snapshot's content are kept, so a restore
        that stopped part way is finished); as root from an unencrypted repository,
        ``allow_devices`` / ``allow_setid`` (device nodes, setuid/setgid bits and file
        capabilities are otherwise left out, with a warning per path)."""
        from engine.ops.restore import plan_restore

        cls.reject_options(unknown)
        return plan_restore(repo, snap, target, paths, force, allow_devices, allow_setid,
                            resume=resume)

    @classmethod
    def restore(cls, config, repo, plan, job_id, on_event, cancel):
        from engine.ops.restore import execute_restore
        from engine.sources.readers import reader_processes

        # content written by forked processes, one a core, from a local repository (the
        # GIL holds one process's writer threads to about one core); elsewhere, or with
        # BACKUP_TUI_READERS=0, threads
        return execute_restore(repo, plan, job_id, on_event, cancel,
                               processes=max(1, reader_processes(repo)))

    @classmethod
    def restore_form(cls, snap: dict) -> RestoreForm:
        """A directory (empty or new), and optionally paths inside the snapshot."""
        return RestoreForm("directory", option="target", paths_option="paths", noun="files",
                           on_stop="the files written so far stay in the target directory "
                           "and nothing else was changed: restore files --resume into "
                           "it finishes the restore, keeping the files already whole")

    @classmethod
    def check_target(cls, value: str) -> None:
        """An absolute path: a console's working directory is nobody's choice."""
        if not value.strip():
            raise UsageError("give the directory to restore into")
        if not os.path.isabs(value):
            raise UsageError(f"{value}: give an absolute path (it starts with /)")
        try:
            busy = os.path.isdir(value) and not os.path.islink(value) and os.listdir(value)
        except OSError as e:
            raise UsageError(f"{value}: cannot look into it: {e.strerror}") from None
        if busy:
            raise UsageError(f"{value} is not empty: the console restores only into an empty "
                             "or new directory, so nothing there is overwritten or mixed in "
                             "(from the command line, restore files --resume finishes a "
                             "restore there and --force overwrites)")

    @classmethod
    def check_restore(cls, config, repo, plan, result, drills: list[dict]) -> RestoreCheck:
        """Files and bytes written against the plan's count; every blob was read through
        ``Repository.load_blob``, which authenticates it (encrypted repositories) and
        checks it against its id, so a finished restore is one whose blobs all passed."""
        check = RestoreCheck()
        check.lines.append(f"{result.files} of {plan.files} file(s), {result.bytes} of "
                           f"{plan.bytes} bytes written into {result.target}")
        if result.files != plan.files or result.bytes != plan.bytes:
            check.problems.append(f"the plan counted {plan.files} file(s) and {plan.bytes} "
                                  f"bytes; {result.files} and {result.bytes} were written")
        if repo.keys.encrypted:
            check.lines.append("every blob was authenticated (AES-256-GCM) and matched its id "
                               "as it was read: a damaged or altered blob stops a restore")
        else:
            check.lines.append("every blob matched its id as it was read; the repository is "
                               "not encrypted, so nothing authenticates its content")
        if result.warnings:
            check.lines.append(f"{len(result.warnings)} warning(s): " + result.warnings[0])
        return check

