"""Messages of the console, and the one place engine events become messages.

Most answer an engine call: a thread worker (``backup_tui.engine_calls``) calls
the engine and posts one of these (thread-safe); a ``...Failed`` message carries
the text of the one error path. A few go from a screen to the app, which acts
(``ScheduleActionRequested``): screens never import the app. ``EventRelay`` is
the engine ``on_event`` callback the console hands to every long operation: it
throttles in the worker thread (at most ~10 messages a second, the final event
always passes) and wraps each engine ``Event`` in a ``JobProgress`` that a newer
one may replace in the queue.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message
from textual.message_pump import MessagePump
from textual.worker import NoActiveWorker, Worker, get_current_worker

from engine.events import CancelToken, Event, Throttle
from engine.facade import SnapshotInfo

if TYPE_CHECKING:  # the facade returns them; the console only reads their fields
    from engine.ops.backup import BackupResult
    from engine.ops.replicate import ReplicaResult
    from engine.sources.base import SourceInfo

PROGRESS_INTERVAL = 0.1  # seconds between progress messages of one job


@dataclass
class SnapshotsLoaded(Message):
    """The inventory list was read; select ``select`` (a snapshot id) if given."""

    snapshots: list[SnapshotInfo]
    select: str | None = None


@dataclass
class SnapshotsFailed(Message):
    """The inventory list could not be read; ``error`` is the engine's message."""

    error: str


@dataclass
class DetailLoaded(Message):
    """The full record of one snapshot was read."""

    snapshot_id: str
    record: dict


@dataclass
class DetailFailed(Message):
    """The full record of one snapshot could not be read."""

    snapshot_id: str
    error: str


@dataclass
class JobProgress(Message):
    """A running job's latest engine event."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        # Textual asks this of the message about to be handled, with the next one queued:
        # True drops this one for the newer progress of the same job (never a final one).
        return (
            isinstance(message, JobProgress)
            and message.event.job_id == self.event.job_id
            and not self.event.final
        )


@dataclass
class SourcesLoaded(Message):
    """The configured sources (``Engine.sources``); ``pick``: then ask which to back up."""

    sources: list[SourceInfo]
    pick: bool = False


@dataclass
class BackupFinished(Message):
    """A backup committed snapshot ``result.id`` (``result.label``, ``result.source``)."""

    result: BackupResult


@dataclass
class BackupFailed(Message):
    """A backup of ``source`` made no snapshot; ``error`` says why."""

    source: SourceInfo
    error: str


@dataclass
class ReplicasLoaded(Message):
    """Each replica's state (``Engine.replica_states``); ``checked``: the lag was measured now."""

    states: list[dict]
    checked: bool


@dataclass
class ReplicasFailed(Message):
    """The replica states could not be read; ``error`` says why."""

    error: str


@dataclass
class ReplicationFinished(Message):
    """A "Replicate now" run ended: one result per replica, each ok or with its error."""

    results: list[ReplicaResult]


@dataclass
class ReplicationFailed(Message):
    """A "Replicate now" run stopped before any result (an unexpected error)."""

    error: str


@dataclass
class SourceStatesLoaded(Message):
    """Each source's status (``Engine.status()["sources"]``) and the health reasons."""

    sources: list[dict]
    reasons: list[str]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SourceStatesLoaded)  # a newer read says all this one would


@dataclass
class SourceStatesFailed(Message):
    """The status of the sources could not be read; ``error`` says why."""

    error: str


@dataclass
class JobsLoaded(Message):
    """The catalog's jobs, newest first, as read at ``now`` (the console's clock)."""

    jobs: list[dict]
    now: float

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobsLoaded)  # a newer poll says all this one would


@dataclass
class JobsFailed(Message):
    """The jobs could not be read from the catalog; ``error`` says why."""

    error: str


@dataclass
class SchedulesLoaded(Message):
    """Each schedule (``Engine.schedules``) as read now."""

    schedules: list[dict]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SchedulesLoaded)


@dataclass
class SchedulesFailed(Message):
    """The schedules could not be read; ``error`` says why."""

    error: str


@dataclass
class SchedulerSettled(Message):
    """Who runs the schedule changed (or was found out at start): see ``app.SchedulerHost``."""

    before: str  # the host's mode before: "starting", "own", "viewer" or "off"


@dataclass
class ScheduleActionRequested(Message):
    """A screen or the palette asks the app for ``action`` (run, pause or resume) of
    schedule ``kind``."""

    kind: str
    action: str


@dataclass
class ScheduleActionDone(Message):
    """``action`` (run, pause or resume) of schedule ``kind`` was done or requested."""

    kind: str
    action: str


@dataclass
class SchedulerStopped(Message):
    """The console's own scheduler stopped (the app quits); ``error`` if stopping failed."""

    error: str = ""


@dataclass
class EngineLogged(Message):
    """The engine logged a warning or an error (a scheduled job failed, say)."""

    level: int  # logging.WARNING or above
    title: str
    text: str


@dataclass
class PitrSourcesLoaded(Message):
    """The sources the point-in-time wizard offers (``pitr_wizard.Choice``s)."""

    choices: list


@dataclass
class PitrTimelineLoaded(Message):
    """The reachable points of the chosen source (a ``pitr_wizard.Timeline``)."""

    timeline: Any


@dataclass
class PitrPlanned(Message):
    """The wizard's plan for time ``target`` (as typed): a cluster's ``PitrPlan.as_json()``
    in ``plan``, or for a logical source the dump it restores in ``dump`` ({snapshot,
    before, when}); ``refused`` says why it cannot be done."""

    target: str
    plan: dict | None
    dump: dict | None
    refused: str = ""
    describe: str = ""  # the target in the engine's words ("time 2026-...+00:00")


@dataclass
class PitrTargetChecked(Message):
    """The wizard's target passed its checks: a data directory and ``port`` (a cluster),
    or a database name and its restore ``plan`` (a logical source)."""

    target: str
    port: int | None
    plan: Any


@dataclass
class PitrStepFailed(Message):
    """An engine call of wizard step ``step`` failed; ``error`` says why."""

    step: str
    error: str


@dataclass
class PitrFinished(Message):
    """The wizard's recovery ended: ``Engine.restore_pitr``'s result, or a dump's."""

    result: dict


@dataclass
class PitrFailed(Message):
    """The wizard's recovery failed or was cancelled; ``error`` says why."""

    error: str


class EventRelay:
    """An engine ``on_event`` callback posting throttled ``JobProgress`` messages to ``target``.

    Called from the engine's thread; ``post_message`` is thread-safe. Given the job's
    ``cancel`` token (and ``what`` it does: "the backup of fileset src"), it also enters
    each engine job it sees in the app's ``JobTokens``, so that the jobs screen can cancel
    it and quitting asks first.
    """

    def __init__(self, target: MessagePump, interval: float = PROGRESS_INTERVAL,
                 cancel: CancelToken | None = None, what: str = ""):
        self._target = target
        self._throttle = Throttle(self._post, interval)
        self._cancel, self._what = cancel, what
        # Looked up here, on the UI thread: the relay is called from the engine's.
        self._tokens: JobTokens | None = (getattr(target.app, "job_tokens", None)
                                          if cancel is not None else None)

    def __call__(self, event: Event) -> None:
        if self._tokens is not None and self._cancel is not None:
            self._tokens.seen(event, self._cancel, self._what)
        self._throttle(event)

    def _post(self, event: Event) -> None:
        self._target.post_message(JobProgress(event))


@dataclass
class _Running:
    token: CancelToken
    what: str  # "the backup of fileset src"
    worker: Worker | None  # the thread worker running it, when one does
    ended: bool = False  # its final event came


class JobTokens:
    """The jobs this console runs, by engine job id: each one's cancel token, what it does and
    the worker running it (thread-safe; ``EventRelay`` fills it). A job counts as running
    until its final event or the end of its worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Running] = {}

    def seen(self, event: Event, token: CancelToken, what: str = "") -> None:
        """From the engine's thread: ``event`` of a job that ``token`` cancels."""
        with self._lock:
            entry = self._jobs.get(event.job_id)
            if entry is None:
                try:
                    worker: Worker | None = get_current_worker()
                except NoActiveWorker:
                    worker = None
                kind = event.job_id.rsplit("-", 2)[0]  # engine job ids: kind-time-random
                entry = self._jobs[event.job_id] = _Running(token, what or f"a {kind}", worker)
            if event.final:
                entry.ended = True

    def _live(self) -> dict[str, _Running]:
        with self._lock:
            for job_id in [j for j, e in self._jobs.items()
                           if e.ended or (e.worker is not None and e.worker.is_finished)]:
                del self._jobs[job_id]
            return dict(self._jobs)

    def token(self, job_id: str) -> CancelToken | None:
        """The cancel token of job ``job_id`` while this console runs it."""
        entry = self._live().get(job_id)
        return entry.token if entry is not None else None

    def running(self) -> dict[str, str]:
        """Job id -> what it does, of every job this console runs now."""
        return {job_id: e.what for job_id, e in self._live().items()}

    def cancel_all(self) -> None:
        """Ask every job this console runs to stop at its next check."""
        for entry in self._live().values():
            entry.token.cancel()


# ------------------------------------------------------------ the restore wizard
@dataclass
class RestoreFormLoaded(Message):
    """A snapshot's record and what restoring it asks for (``Engine.restore_form``)."""

    snap: dict
    form: object


@dataclass
class RestoreChoices(Message):
    """For the palette's "Restore <noun>…": (noun, the sources it restores) pairs."""

    choices: list


@dataclass
class WizardAnswer(Message):
    """A wizard step's engine call succeeded: ``value`` is what the step returns."""

    value: object


@dataclass
class WizardRefused(Message):
    """A wizard step's input was refused by the engine (a bad name, a time in the
    future): shown inline, the step stays open."""

    error: str


@dataclass
class WizardFailed(Message):
    """A wizard step's engine call failed unexpectedly: an error dialog says so."""

    error: str


@dataclass
class SnapshotDirLoaded(Message):
    """One directory of a snapshot's tree (``Engine.snapshot_dir``) for tree node
    ``node_id``."""

    node_id: int
    entries: list


@dataclass
class SnapshotDirFailed(Message):
    """A directory of a snapshot's tree could not be read."""

    node_id: int
    error: str


@dataclass
class RestoreEstimated(Message):
    """How long the reviewed restore should take (None: unknown), and on what basis."""

    seconds: float | None
    basis: str


@dataclass
class RestoreFinished(Message):
    """The restore ran to its end; ``check`` is the engine's validation of it."""

    result: object
    check: object


@dataclass
class RestoreFailed(Message):
    """The restore stopped (failed or cancelled) with ``error``."""

    error: str


# ------------------------------------------------------------------- the dashboard
@dataclass
class DashboardLoaded(Message):
    """What the dashboard shows: ``Engine.status()`` and ``Engine.health()``, read
    together, and ``Engine.history()`` when it was read too (else None)."""

    status: dict
    health: dict
    history: dict | None

    def can_replace(self, message: Message) -> bool:
        # A newer read says all this one would, unless only this one carries the history.
        return isinstance(message, DashboardLoaded) and (
            self.history is None or message.history is not None)


@dataclass
class DashboardFailed(Message):
    """The dashboard's figures could not be read; ``error`` says why."""

    error: str


# ------------------------------------------------------------------------ verify
@dataclass
class VerifyFinished(Message):
    """A verify from the console ended: ``report`` (``engine.ops.verify.VerifyReport``: ok,
    or its problems) of ``what`` ("snapshot 1a2b3c4d", "every snapshot")."""

    report: Any
    what: str


@dataclass
class VerifyFailed(Message):
    """A verify stopped before its report (cancelled, or an unexpected error)."""

    error: str
