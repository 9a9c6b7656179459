"""The job panel: a running job's progress bar and one line of numbers, or the last outcome.

A job is a backup of one source (the screen names it: "fileset uploads",
"database app"), a replication to the S3 replicas, or a verify (of one snapshot
or all; ``finish_verify``: ok, or its problems). The panel shows engine
events as they come: bytes and items done of the totals the event carries
(``~`` before a total the engine only estimates, as a dump's), the rate since
the engine job's first event, and the event's message (the path being read);
for a replication (phase ``replicate``, one engine job per replica), the bytes
and objects uploaded of what that replica lacks. At the end it shows the
figures the result has: files only when the backup counted any.
A backup replicates by itself when replicas have ``replicate_after_backup``:
its ``replicate`` events follow its ``done`` event in the same stream, and the
title then says the snapshot is saved and which replica is being filled.

Trustworthy progress (``progress_fraction``, shared with the jobs screen): a
fraction only from a total the job has not reached yet; a running job never
reads 100% (at most 99% until its end); without a total the bar is
indeterminate and the numbers say bytes and rate; an ETA only with a total.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import ProgressBar, Static

from backup_tui.format import duration, human_bytes
from engine.events import Event

if TYPE_CHECKING:  # the facade returns them; the console only reads their fields
    from engine.ops.backup import BackupResult
    from engine.ops.replicate import ReplicaResult

PATH_WIDTH = 70  # the current path is cut from the left beyond this
ESTIMATED_PHASES = ("dump",)  # phases whose bytes_total is a guess, shown as "~"
ITEMS = {"replicate": "objects"}  # what a phase's items are; files otherwise
OUTGROWN_PHASES = ("backup", "dump")  # phases whose byte total is raised to what is done
RUNNING_CAP = 0.99  # a running job's bar stops here: 100% means it ended
BACKUP, REPLICATE, VERIFY = "backup", "replicate", "verify"  # the job kinds (phases too)


def _tail(path: str, width: int = PATH_WIDTH) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def _uploaded(results: list[ReplicaResult]) -> str:
    objects = sum(r.uploaded for r in results)
    nbytes = sum(r.uploaded_bytes for r in results)
    present = sum(r.present for r in results)
    if not objects:
        return f"nothing to upload, {present} object(s) already there"
    return f"{objects} object(s), {human_bytes(nbytes)} uploaded, {present} already there"


def replication_summary(results: list[ReplicaResult]) -> str:
    """One line: ``Replicated to use1, euw1: ...`` or which replicas failed and why."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    parts = [f"replicated to {', '.join(r.replica for r in ok)} ({_uploaded(ok)})"] if ok else []
    parts += [f"replica {r.replica} FAILED: {r.error}" for r in failed]
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def outgrown(phase: str | None, bytes_done: int, bytes_total: int) -> bool:
    """An estimated total (a database's size, a cluster's last backup) that the job has
    reached while still in that phase: it says nothing about what is left."""
    return phase in OUTGROWN_PHASES and bytes_total > 0 and bytes_done >= bytes_total


def progress_fraction(phase: str | None, bytes_done: int, bytes_total: int, items_done: int,
                      items_total: int, running: bool = True) -> float | None:
    """How far a job is, 0..1, or None when no total can be trusted (then the bar is
    indeterminate). Bytes when there is a byte total, else items. A running job reads at
    most ``RUNNING_CAP``: never 100% before its end."""
    if outgrown(phase, bytes_done, bytes_total):
        return None
    if bytes_total > 0:
        fraction = min(1.0, bytes_done / bytes_total)
    elif items_total > 0:
        fraction = min(1.0, items_done / items_total)
    else:
        return None
    return min(fraction, RUNNING_CAP) if running else fraction


def progress_line(event: Event, started: float) -> str:
    """Bytes, files, rate and ETA of one event, e.g.
    ``3.1 MiB of 20.0 MiB · 40/312 files · 9 MiB/s · ETA 2.1 s``; "" before there are any."""
    parts = []
    grown = outgrown(event.phase, event.bytes_done, event.bytes_total)
    if grown:
        parts.append(f"{human_bytes(event.bytes_done)} so far (more than estimated)")
    elif event.bytes_total:
        about = "~" if event.phase in ESTIMATED_PHASES else ""
        parts.append(f"{human_bytes(event.bytes_done)} of {about}{human_bytes(event.bytes_total)}")
    elif event.bytes_done:
        parts.append(human_bytes(event.bytes_done))
    if event.items_total:
        parts.append(f"{event.items_done}/{event.items_total} {ITEMS.get(event.phase, 'files')}")
    elif event.items_done:
        parts.append(f"{event.items_done} {ITEMS.get(event.phase, 'files')}")
    elapsed = event.time - started
    rate = event.bytes_done / elapsed if event.bytes_done and elapsed > 0 else None
    if rate:
        parts.append(f"{human_bytes(rate)}/s")
    if rate and event.bytes_total > event.bytes_done and not grown and not event.final:
        parts.append(f"ETA {duration((event.bytes_total - event.bytes_done) / rate)}")
    return " · ".join(parts)


class JobPanel(Vertical):
    """Idle, running (bar + numbers + path), done or failed; the state is a CSS class.

    Two lines in every state but a failure's long error: the title (and the bar beside
    it while running), then the numbers and the path (idle: the keys). Starting a job
    (a key) then changes no layout: a taller panel would shrink the table above it,
    and re-rendering every row of it is most of a key's time while a backup runs
    (bench/key_latency.py)."""

    STATES = ("-idle", "-running", "-done", "-partial", "-failed")

    def __init__(self, hint: str = "No backup running.", keys: str = "Press b to back up now.",
                 *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.hint = hint  # the idle title
        self.keys = keys  # the idle second line
        self._job_id: str | None = None
        self._started = 0.0
        self.kind: str | None = None  # BACKUP or REPLICATE: the job shown
        self.what = ""  # what it backs up ("fileset uploads") or the replicas it fills
        self._saved = ""  # a backup's "done" message ("snapshot 1a2b3c4d") once it came

    def compose(self) -> ComposeResult:
        with Horizontal(id="job-head"):
            yield Static(Content(self.hint), id="job-title")
            yield ProgressBar(total=100, show_eta=False, id="job-bar")
        with Horizontal(id="job-foot"):
            yield Static(Content(self.keys), id="job-numbers")
            yield Static("", id="job-path")

    def on_mount(self) -> None:
        self._set_state("-idle")

    @property
    def text(self) -> str:
        """What the panel shows, as plain text, one line per part."""
        parts = (self.query_one(f"#{i}", Static).visual
                 for i in ("job-title", "job-numbers", "job-path"))
        return "\n".join(v.plain if isinstance(v, Content) else str(v) for v in parts)

    @property
    def bar(self) -> ProgressBar:
        return self.query_one("#job-bar", ProgressBar)

    def _set_state(self, state: str) -> None:
        self.remove_class(*self.STATES)
        self.add_class(state)

    def _text(self, widget_id: str, text: str) -> None:
        # Content, not str: paths and engine messages are data, never markup.
        self.query_one(f"#{widget_id}", Static).update(Content(text))

    def start(self, kind: str, what: str) -> None:
        """A job begins: a ``BACKUP`` of ``what`` ("fileset uploads"), or a ``REPLICATE`` to
        ``what`` (the replicas' names)."""
        self._job_id, self.kind, self.what, self._saved = None, kind, what, ""
        self._set_state("-running")
        title = {REPLICATE: f"Replicating to {what}…",
                 VERIFY: f"Verifying {what}…"}.get(kind, f"Backing up {what}…")
        self._text("job-title", title)
        self.bar.update(total=None, progress=0)
        self._text("job-numbers", "starting")
        self._text("job-path", "")

    def show_event(self, event: Event) -> None:
        if event.job_id != self._job_id:
            self._job_id, self._started = event.job_id, event.time
            self.bar.update(total=None, progress=0)  # a new engine job: a new replica, say
        fraction = progress_fraction(event.phase, event.bytes_done, event.bytes_total,
                                     event.items_done, event.items_total)
        if event.phase == "done" or (event.final and event.phase == REPLICATE):
            self.bar.update(total=100, progress=100)
        elif fraction is not None:
            self.bar.update(total=100, progress=round(fraction * 100, 1))
        else:  # no total to trust: indeterminate, with bytes and rate in the numbers
            self.bar.update(total=None)
        numbers = progress_line(event, self._started)
        if event.phase == REPLICATE and event.final and not event.items_total:
            numbers = "nothing to upload"
        self._text("job-numbers", f"{event.phase}: {numbers}" if numbers else event.phase)
        if event.phase == "done" and self.kind != REPLICATE:
            self._saved = event.message
        if event.phase == REPLICATE:
            self._replicating(event.message)
        elif event.phase == "backup":
            self._text("job-path", _tail(event.message))
        elif event.message:
            self._text("job-path", event.message)

    def _replicating(self, where: str) -> None:
        """The title while a replica is filled (``where``: "to use1"), after a backup or not."""
        if self.kind == REPLICATE:
            title = f"Replicating {where}…"
        else:
            saved = f": {self._saved} saved" if self._saved else ""
            title = f"Backed up {self.what}{saved}; replicating {where}…"
        self._text("job-title", title)
        self._text("job-path", "")

    def finish(self, result: BackupResult) -> None:
        """A backup ended with a snapshot, complete or not."""
        self._set_state("-done")
        self.bar.update(total=100, progress=100)
        if not result.complete:
            status = f"INCOMPLETE, {len(result.errors)} error(s)"
        elif result.warnings:
            status = f"complete, {len(result.warnings)} warning(s)"
        else:
            status = "complete"
        numbers = human_bytes(result.size)
        if result.files:
            numbers = f"{result.files} files, {numbers}"
        self._text("job-title", f"Backed up {result.label} {result.source}: "
                                f"snapshot {result.id[:8]}, {status}")
        self._text("job-numbers", f"{numbers}, new data {human_bytes(result.added)} "
                                  f"in {result.duration:.1f} s")
        replication = result.replication
        if replication and not all(r.ok for r in replication):
            self._set_state("-partial")
        notes = [replication_summary(replication)] if replication else []
        self._text("job-path", " · ".join([*notes, *result.warnings[:1]]))

    def finish_replication(self, results: list[ReplicaResult]) -> None:
        """A "Replicate now" job ended: every replica filled, some, or none."""
        ok = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        self.bar.update(total=100, progress=100)
        if not failed:
            self._set_state("-done")
            self._text("job-title", f"Replicated to {', '.join(r.replica for r in ok)}")
            seconds = sum(r.seconds for r in results)
            self._text("job-numbers", f"{_uploaded(ok)}, in {seconds:.1f} s")
            self._text("job-path", "")
            return
        if ok:
            self._set_state("-partial")
            self._text("job-title", f"Replicated to {', '.join(r.replica for r in ok)}; "
                                    f"{', '.join(r.replica for r in failed)} failed")
            self._text("job-numbers", _uploaded(ok))
        else:
            self._set_state("-failed")
            self._text("job-title", "Replication failed")
            self._text("job-numbers", "")
        self._text("job-path" if ok else "job-numbers",
                   "; ".join(f"{r.replica}: {r.error}" for r in failed))

    def finish_verify(self, report: Any) -> None:
        """A verify ended with its report (``engine.ops.verify.VerifyReport``)."""
        self.bar.update(total=100, progress=100)
        how = "read every blob" if report.read_data else "structure and pack sizes"
        read = f", {human_bytes(report.bytes_read)} read" if report.read_data else ""
        numbers = (f"{len(report.snapshots)} snapshot(s), {report.packs_checked} pack(s), "
                   f"{report.blobs_checked} blob(s) checked{read} ({how})")
        if report.ok:
            self._set_state("-done")
            self._text("job-title", f"Verified {self.what}: ok")
            self._text("job-numbers", numbers)
            self._text("job-path", "")
            return
        self._set_state("-failed")
        self._text("job-title", f"Verified {self.what}: {len(report.problems)} problem(s)")
        self._text("job-numbers", "; ".join(p.message for p in report.problems[:3])
                   + (" …" if len(report.problems) > 3 else ""))
        self._text("job-path", numbers)

    def fail(self, error: str) -> None:
        """The job shown ended without a result."""
        self._set_state("-failed")
        self._text("job-title", {REPLICATE: "Replication failed",
                                 VERIFY: f"Verify of {self.what} failed"}.get(
                                     self.kind, f"Backup of {self.what} failed"))
        self._text("job-numbers", error)
        self._text("job-path", "")
