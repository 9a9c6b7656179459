"""Engine calls from the console: one way to run them off the UI thread, one way they fail.

The console calls the engine only from Textual thread workers (docs/ARCHITECTURE.md,
section 1). ``EngineCaller`` is the mixin for the screens, panes and the app
that do. ``call_engine(work, group=...)`` runs ``work`` in a thread worker
(``thread=True, exit_on_error=False``; ``exclusive`` by default: a newer call
of the group replaces an older one). ``work`` calls the engine and returns the
typed message that answers it (``backup_tui.messages``), or None; the message
is posted back to the caller unless the call was replaced meanwhile. A long
call may post progress on the way (``post_message`` is thread-safe; see
``messages.EventRelay``). Workers never touch widgets.

The one error path. ``work`` has no try/except: whatever it raises ends its
worker in the ERROR state, and the mixin's ``on_worker_state_changed`` (the only
one in the console) turns the exception into text (``error_text``), then

* posts the call's ``failed`` message, when it has one, so that the caller can
  show the failure in its own widgets (a job panel, a status line); and
* shows the text as an error notification titled ``alert``, when the call has
  one. Calls that poll (jobs, schedules) or fill a detail pane set no alert:
  their status line says it, and a notification each second would bury the screen.

The app keeps running either way, and a call replaced by a newer one fails
silently (its worker ends CANCELLED, not ERROR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from textual.dom import DOMNode
from textual.message import Message
from textual.worker import Worker, WorkerState, get_current_worker

from engine.errors import EngineError
from engine.jobs import run_niced

Work = Callable[[], Message | None]


def error_text(error: BaseException | None) -> str:
    """An engine error in its own words; anything else (a bug) with its type's name."""
    if isinstance(error, EngineError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class _Failure:
    """What to do when a call fails: see the module docstring."""

    failed: Callable[[str], Message] | None
    alert: str | None


class EngineCaller:
    """Mixin for a Textual node (app, screen, widget) that calls the engine."""

    def call_engine(self, work: Work, *, group: str, failed: Callable[[str], Message] | None = None,
                    alert: str | None = None, exclusive: bool = True,
                    job: bool = False) -> Worker[None]:
        """Run ``work`` in a thread worker of ``group`` and post the message it returns.
        On failure, post ``failed(text)`` and notify ``text`` titled ``alert`` (each if given).
        ``job``: ``work`` runs a job (backup, verify, restore...): on a thread of its own
        ``[console] job_nice`` steps below the console's, so that keys are answered while
        it uses every core (``engine.jobs.run_niced``)."""
        node = cast(DOMNode, self)
        nice = getattr(node.app, "job_nice", 0) if job else 0
        worker = node.run_worker(lambda: self.post_answer(run_niced(work, nice)), name=group,
                                 group=group,
                                 exit_on_error=False, exclusive=exclusive, thread=True)
        self._failures[worker] = _Failure(failed, alert)
        return worker

    def post_answer(self, message: Message | None) -> None:
        """From a worker thread: post ``message`` unless the call was replaced."""
        if message is not None and not get_current_worker().is_cancelled:
            cast(DOMNode, self).post_message(message)

    @property
    def _failures(self) -> dict[Worker, _Failure]:
        """The calls under way: worker -> what to do if it fails (UI thread only)."""
        return self.__dict__.setdefault("_engine_call_failures", {})

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        failure = self._failures.get(event.worker)
        if failure is None or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR,
                                                  WorkerState.CANCELLED):
            return
        del self._failures[event.worker]
        if event.state != WorkerState.ERROR:
            return
        node = cast(DOMNode, self)
        text = error_text(event.worker.error)
        if failure.failed is not None:
            node.post_message(failure.failed(text))
        if failure.alert is not None:
            node.app.notify(text, title=failure.alert, severity="error", markup=False)
