"""Jobs: the one wrapper every engine verb runs in.

A job gets an id, a row in the catalog with its latest progress (throttled
there, so other processes can watch), events to the caller's callback, one
audit line at the end, and after it the notifications and the metrics file.
A verb fills in the ``Job`` it is handed: the audit outcome, the objects it
touched and a detail line, or an end state such as ``incomplete``. An
exception ends the job ``failed`` (or ``interrupted`` when cancelled) with its
message, audited, and is raised on.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from engine.catalog import Catalog
from engine.errors import Cancelled, EngineError
from engine.events import Event, EventCallback

log = logging.getLogger("backup_tui.engine")
T = TypeVar("T")


def lower_thread_priority(nice: int) -> None:
    """Run the calling thread ``nice`` steps below the priority it has (at most nice 19),
    and with it every thread and process it starts from now on: on Linux the nice value
    belongs to a thread and is inherited. A console runs its jobs so, on a thread of their
    own, for the keys it answers while they run (``[console] job_nice``). The loss for
    the job is only the CPU that others ask for meanwhile. No-op where unsupported."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # not Linux, or not allowed: the job runs as it is
        pass


def run_niced(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` on a thread of its own run ``nice`` steps lower (``lower_thread_priority``),
    in a copy of the caller's context variables, its result or exception passed on; the
    calling thread (often a pool's, reused for other work) keeps its priority. ``nice``
    0: ``fn()`` here."""
    if nice <= 0:
        return fn()
    out: list = []

    def body() -> None:
        lower_thread_priority(nice)
        try:
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller
            out.append((False, e))

    thread = threading.Thread(target=contextvars.copy_context().run, args=(body,),
                              name="niced-job", daemon=True)
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def new_job_id(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class Job:
    """The running job as a verb sees it."""

    id: str
    kind: str
    target: str
    emit: EventCallback  # to the catalog and the caller
    outcome: str = "succeeded"  # the audit line's outcome
    objects: list[str] = field(default_factory=list)  # snapshot ids it made or touched
    detail: str = ""
    audit_target: str = ""  # what the audit line names, when not the job's target
    audited: bool = True  # False: a read-only run leaves no audit line (a dry run)
    state: str = "succeeded"  # the job's end state: succeeded, incomplete, failed
    error: str = ""

    def fail(self, error: str, outcome: str = "failed") -> None:
        """End without raising: the job failed, and its caller gets a result that says so."""
        self.state, self.error, self.outcome = "failed", error, outcome


@contextlib.contextmanager
def run_job(catalog: Catalog, kind: str, target: str, on_event: EventCallback,
            after: Callable[[str], None], record: bool = True) -> Iterator[Job]:
    """Run the body as job ``kind`` on ``target``; ``after(job_id)`` runs once it ended.
    record=False: an instant action (pin, pause): its audit line only, no job row."""
    job_id = new_job_id(kind)
    if record:
        catalog.start_job(job_id, kind, target)

    def emit(ev: Event) -> None:
        catalog.progress(ev)
        on_event(ev)

    if not record:
        job = Job(job_id, kind, target, on_event)
        try:
            yield job
        except BaseException as e:
            catalog.audit(kind, job.audit_target or target, "failed", detail=str(e))
            raise
        catalog.audit(kind, job.audit_target or target, job.outcome, job.objects[:100],
                      detail=job.detail)
        return

    job = Job(job_id, kind, target, emit)
    try:
        yield job
    except BaseException as e:
        msg = str(e) or type(e).__name__
        interrupted = isinstance(e, KeyboardInterrupt | Cancelled)
        state = "interrupted" if interrupted else "failed"
        with _bookkeeping(job):  # the job's own error is the one to raise
            catalog.end_job(job_id, state, error=msg)
            catalog.audit(kind, target, state, detail=msg)
        on_event(Event(job_id, state, message=msg, final=True))
        after(job_id)
        raise
    with _bookkeeping(job):  # the work is done (a snapshot committed): a full state
        catalog.end_job(job_id, job.state, error=job.error)  # dir must not undo that
        if job.audited:
            catalog.audit(kind, job.audit_target or target, job.outcome, job.objects[:100],
                          detail=job.detail)
    after(job_id)


@contextlib.contextmanager
def _bookkeeping(job: Job) -> Iterator[None]:
    """Writing a job's end to the catalog: a failure (a full state directory) is logged,
    never raised over the job's own outcome."""
    try:
        yield
    except EngineError as e:
        log.warning("%s %s: %s, but its end could not be recorded in the catalog: %s",
                    job.kind, job.target, job.state, e)
