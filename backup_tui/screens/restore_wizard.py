"""The restore wizard: modal steps from a snapshot to a validated restore.

Steps, each a ``ModalScreen`` answering through ``dismiss`` (None: Esc, cancelled):

1. ``SnapshotStep``: the snapshot of the row (preselected), or "as of" a typed
   time that the engine resolves (``Engine.snapshot_as_of``: a time in the future
   or before the first backup is refused inline).
2. ``TargetStep``: what the snapshot's kind restores into, as the engine describes it
   (``Engine.restore_form``, kind-blind): a database (a new name, prefilled and
   checked as an identifier, or the source database replaced) or a directory
   (empty or new), optionally one path picked in ``PathStep``, a browsable tree of
   the snapshot. The engine checks the target and makes the plan
   (``Engine.plan_restore``) before the step answers it.
3. ``ReviewStep``: what is written where, bytes, the estimated time from past
   restores and drills (``Engine.restore_estimate``), and the equivalent command line
   (``c`` copies it).
4. ``ConfirmStep`` (replacing only): the target's name typed exactly.
5. ``RunStep``: live progress (bytes), ``x`` cancels cleanly and says what was left
   behind; then the result with the engine's validation (``Engine.check_restore``).

Esc cancels every step before the restore starts, and nothing has been written by
then. ``RestoreWizard`` chains the steps. Every engine call runs in a thread worker
(``EngineCaller.call_engine``): a refusal of what was typed (``UsageError``,
``NotFound``) shows in the step; any other failure opens an ``ErrorDialog`` and
the step stays open.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from backup_tui.engine_calls import EngineCaller
from backup_tui.format import duration, human_bytes, local_time
from backup_tui.messages import (
    EventRelay,
    JobProgress,
    RestoreEstimated,
    RestoreFailed,
    RestoreFinished,
    WizardAnswer,
    WizardFailed,
    WizardRefused,
)
from backup_tui.widgets.snapshot_tree import SnapshotTree
from engine.errors import NotFound, UsageError
from engine.events import CancelToken

if TYPE_CHECKING:
    from textual.app import App

    from engine.facade import Engine

STEPS = 4  # shown as "step n of 4": snapshot, target, review, restore
REFUSALS = (UsageError, NotFound)  # what a step shows inline: the input was wrong


@dataclass(frozen=True)
class Chosen:
    """The snapshot to restore (its record) and how it was chosen."""

    snap: dict
    as_of: str = ""  # the typed time, when chosen by time
    before: float = 0.0  # seconds between the snapshot and that time


@dataclass(frozen=True)
class Target:
    """The checked target and the plan the engine made for it."""

    options: dict
    plan: Any
    replaces: str = ""  # the name to type to confirm, when the plan replaces


def cli_line(snap: dict, options: dict) -> str:
    """The command line that does the same restore."""
    args = ["backup-tui", "restore", snap["kind"], snap["id"][:12]]
    for key, value in options.items():
        flag = "--path" if key == "paths" else "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, list | tuple):
            for v in value:
                args += [flag, str(v)]
        elif value:
            args += [flag, str(value)]
    if options.get("replace"):
        args.append("--yes")
    return shlex.join(args)


def refusal(work: Callable[[], Message]) -> Callable[[], Message]:
    """``work``, with a refusal of the input answered as ``WizardRefused``."""
    def run() -> Message:
        try:
            return work()
        except REFUSALS as e:
            return WizardRefused(str(e))
    return run


class ErrorDialog(ModalScreen[None]):
    CSS_PATH = "restore_wizard.tcss"

    """An engine failure in its own words; Esc or Enter closes it."""

    BINDINGS = [Binding("escape,enter", "close", "Close", id="error-close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="restore-error", classes="restore-dialog"):
            yield Label(Content(self.title_text), classes="restore-title")
            yield Static(Content(self.text), id="restore-error-text")
            yield Label("Esc or Enter closes this; the console carries on.",
                        classes="restore-keys")

    def action_close(self) -> None:
        self.dismiss(None)


class WizardStep(EngineCaller, ModalScreen[Any]):
    """A step: a title, a body, an inline status line, the keys. Esc answers None."""

    CSS_PATH = "restore_wizard.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="restore-cancel")]
    STEP = 0
    HEADING = ""
    KEYS = "Enter next · Esc cancel"

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def compose(self) -> ComposeResult:
        with Vertical(classes="restore-dialog"):
            where = f" · step {self.STEP} of {STEPS}" if self.STEP else ""
            yield Label(Content(f"Restore{where}: {self.HEADING}"), classes="restore-title")
            with VerticalScroll(classes="restore-body", can_focus=False):
                yield from self.body()
            yield Static("", id="restore-status")
            yield Label(self.KEYS, id="restore-keys", classes="restore-keys")

    def body(self) -> ComposeResult:
        yield from ()

    def say(self, text: str, error: bool = True) -> None:
        status = self.query_one("#restore-status", Static)
        status.update(Content(text))
        status.set_class(error and bool(text), "-error")

    def ask(self, work: Callable[[], Message], what: str) -> None:
        """Run ``work`` (an engine call) in a thread; say ``what`` meanwhile."""
        self.say(what + "…", error=False)
        self.call_engine(refusal(work), group="wizard", failed=WizardFailed)

    def on_wizard_refused(self, message: WizardRefused) -> None:
        self.say(message.error)

    def on_wizard_failed(self, message: WizardFailed) -> None:
        self.say("")
        self.app.push_screen(ErrorDialog("The engine failed", message.error))

    def on_wizard_answer(self, message: WizardAnswer) -> None:
        self.dismiss(message.value)

    def action_cancel(self) -> None:
        self.workers.cancel_group(self, "wizard")
        self.dismiss(None)


# ------------------------------------------------------------------- 1. snapshot
class SnapshotStep(WizardStep):
    """This snapshot, or the newest one of its source as of a typed time."""

    STEP, HEADING = 1, "which snapshot"
    KEYS = "↑↓ choose · Enter next · Esc cancel"

    def __init__(self, engine: Engine, snap: dict) -> None:
        super().__init__(engine)
        self.snap = snap

    def body(self) -> ComposeResult:
        s = self.snap
        when = local_time(datetime.fromisoformat(s["time"]), "%Y-%m-%d %H:%M:%S %Z")
        size = human_bytes(int(s.get("stats", {}).get("size", 0)))
        yield OptionList(
            Option(Content(f"This snapshot: {s['id'][:8]} of {s['kind']} {s['source']}, "
                           f"{when}, {size}"), id="this"),
            Option(Content(f"The newest snapshot of {s['source']} as of a time…"), id="as-of"),
            id="restore-snapshot-choice")
        yield Input(placeholder="as of (ISO 8601, e.g. 2026-11-26T14:00; local time)",
                    id="restore-as-of")

    def on_mount(self) -> None:
        choice = self.query_one("#restore-snapshot-choice", OptionList)
        choice.highlighted = 0
        choice.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id == "this":
            self.dismiss(Chosen(self.snap))
        else:
            self.query_one("#restore-as-of", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text, s = event.value.strip(), self.snap
        if not text:
            self.say("Type a time, or choose this snapshot above.")
            return

        def resolve() -> Message:
            snap, before = self.engine.snapshot_as_of(s["kind"], s["source"], text)
            return WizardAnswer(Chosen(snap, text, before))

        self.ask(resolve, f"Finding the snapshot of {s['source']} as of {text}")


# --------------------------------------------------------------------- 2. target
class TargetStep(WizardStep):
    """Where to: a new database or the source's own, replaced; or a directory and
    optionally one path of the snapshot."""

    STEP, HEADING = 2, "where to"

    def __init__(self, engine: Engine, chosen: Chosen, form: Any) -> None:
        super().__init__(engine)
        self.chosen, self.form = chosen, form
        self.path = ""  # one path inside the snapshot, or "" for everything
        if form.paths_option:
            self.KEYS = "Enter next · Tab, Enter: choose a path · Esc cancel"

    @property
    def into(self) -> str:
        return self.form.into

    def body(self) -> ComposeResult:
        s = self.chosen.snap
        yield Label(Content(f"Snapshot {s['id'][:8]} of {s['kind']} {s['source']}"
                            + (f" (as of {self.chosen.as_of})" if self.chosen.as_of else "")),
                    classes="restore-note")
        if self.form.replace_option:
            yield OptionList(
                Option(Content(f"Into a new {self.into}, named below"), id="new"),
                Option(Content(f"Replace {self.into} {self.form.replaces} (the old one is "
                               "kept under a dated name)"), id="replace"),
                id="restore-target-choice")
        yield Input(self.form.default, placeholder=f"the {self.into} to restore into",
                    id="restore-target")
        if self.form.paths_option:
            yield Label(Content("What: everything in the snapshot"), id="restore-path")
            yield Button("Choose one directory or file…", id="restore-browse", compact=True)

    def on_mount(self) -> None:
        for choice in self.query("#restore-target-choice").results(OptionList):
            choice.highlighted = 0
        self.query_one("#restore-target", Input).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id == "replace":
            self._plan(self.form.replaces, replace=True)
        else:
            self.query_one("#restore-target", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._plan(event.value.strip())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.app.push_screen(PathStep(self.engine, self.chosen.snap), self._picked)

    def _picked(self, path: str | None) -> None:
        if path is None:
            return
        self.path = "" if path == "/" else path
        what = self.path or "everything in the snapshot"
        self.query_one("#restore-path", Label).update(Content(f"What: {what}"))
        self.query_one("#restore-target", Input).focus()

    def _plan(self, value: str, replace: bool = False) -> None:
        form, snap = self.form, self.chosen.snap
        options: dict[str, Any] = {form.option: value}
        if replace:
            options[form.replace_option] = True
        if self.path and form.paths_option:
            options[form.paths_option] = [self.path]

        def plan() -> Message:
            if not replace:
                self.engine.check_restore_target(snap, value)
            made = self.engine.plan_restore(snap, **options)
            return WizardAnswer(Target(options, made, value if replace else ""))

        self.ask(plan, "Checking the target and planning")


class PathStep(WizardStep):
    """One directory or file of the snapshot, picked in its tree."""

    HEADING = "pick a directory or file"
    KEYS = "Space/→ open · Enter choose · Esc back"

    def __init__(self, engine: Engine, snap: dict) -> None:
        super().__init__(engine)
        self.snap = snap

    def body(self) -> ComposeResult:
        yield SnapshotTree(self.engine, self.snap, id="restore-tree")

    def on_mount(self) -> None:
        self.query_one(SnapshotTree).focus()

    def on_snapshot_tree_chosen(self, message: SnapshotTree.Chosen) -> None:
        message.stop()
        self.dismiss(message.path)


# --------------------------------------------------------------------- 3. review
def summary_text(plan: Any) -> str:
    """The plan's summary, as lines: what is written where, then the plan's own facts."""
    lines = [f"Writes: {plan.target_label}"]
    size = int(plan.snapshot.get("stats", {}).get("size", 0))
    for key, value in plan.summary().items():
        if key in ("snapshot",) or value in (None, "", [], {}, False):
            continue
        label = key.replace("_", " ")
        if key == "bytes":
            value = human_bytes(int(value))
        if isinstance(value, dict):
            lines.append(f"{label}:")
            lines += [f"  {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                      for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"{label}:")
            lines += [f"  • {v}" for v in value]
        else:
            lines.append(f"{label}: {value}")
    if "bytes" not in plan.summary():
        lines.append(f"snapshot size: {human_bytes(size)}")
    return "\n".join(lines)


class ReviewStep(WizardStep):
    """The plan, the estimate and the command line; Enter starts (or asks to confirm)."""

    STEP, HEADING = 3, "review"
    KEYS = "Enter restore · c copy the command · Esc cancel"
    BINDINGS = [Binding("enter", "go", "Restore", priority=True, id="restore-go"),
                Binding("c", "copy", "Copy command", id="restore-copy")]

    def __init__(self, engine: Engine, chosen: Chosen, target: Target) -> None:
        super().__init__(engine)
        self.chosen, self.target = chosen, target
        self.command = cli_line(chosen.snap, target.options)

    def body(self) -> ComposeResult:
        yield Static(Content(summary_text(self.target.plan)), id="restore-summary")
        yield Static("Estimated time: looking at past restores and drills…",
                     id="restore-estimate")
        yield Label("The same from the command line:", classes="restore-note")
        yield Static(Content(self.command), id="restore-command")

    def on_mount(self) -> None:
        plan = self.target.plan
        self.call_engine(lambda: RestoreEstimated(*self.engine.restore_estimate(plan)),
                         group="estimate",
                         failed=lambda text: RestoreEstimated(None, f"unknown ({text})"))

    def on_restore_estimated(self, message: RestoreEstimated) -> None:
        text = ("unknown: " + message.basis) if message.seconds is None else \
            f"about {duration(message.seconds)} (from {message.basis})"
        self.query_one("#restore-estimate", Static).update(Content(f"Estimated time: {text}"))

    def action_go(self) -> None:
        self.dismiss(True)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.command)
        self.say("Command copied to the clipboard.", error=False)


# ------------------------------------------------------------------ 4. confirm
class ConfirmStep(WizardStep):
    """Replacing: the target's name, typed exactly; a near miss is refused."""

    HEADING = "confirm the replacement"
    KEYS = "Enter confirm · Esc cancel"

    def __init__(self, engine: Engine, name: str, what: str) -> None:
        super().__init__(engine)
        self.name_to_type, self.what = name, what

    def body(self) -> ComposeResult:
        yield Static(Content(f"This replaces {self.what} {self.name_to_type}. Type its name "
                             "to go on."), classes="restore-note")
        yield Input(placeholder=self.name_to_type, id="restore-confirm")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value == self.name_to_type:
            self.dismiss(True)
        else:
            self.say(f"{event.value!r} is not {self.name_to_type!r}: type the name exactly, "
                     "or Esc to cancel.")


# ---------------------------------------------------------------------- 5. run
class _Rows(DataTable, can_focus=False):
    """The validated tables and row counts; never focused: Enter and Esc are the dialog's."""


class RunStep(WizardStep):
    """The restore running (bytes), ``x`` cancels; then the result and its validation."""

    STEP, HEADING = 4, "restoring"
    KEYS = "x cancel the restore"
    BINDINGS = [Binding("x", "stop", "Cancel restore", id="restore-stop"),
                Binding("escape,enter", "close", "Close", show=False, id="restore-close")]

    def __init__(self, engine: Engine, target: Target, form: Any) -> None:
        super().__init__(engine)
        self.target, self.form = target, form
        self.cancel = CancelToken()
        self.running = True
        self.last: Any = None  # the latest engine event

    def body(self) -> ComposeResult:
        yield Static(Content(self.target.plan.target_label), classes="restore-note")
        yield ProgressBar(total=None, show_eta=False, id="restore-bar")
        yield Static("Starting…", id="restore-numbers")
        yield Static("", id="restore-result")
        yield _Rows(id="restore-rows", show_cursor=False, zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#restore-rows", DataTable)
        table.display = False
        table.add_columns("table", Text("rows", justify="right"), Text("recorded",
                                                                       justify="right"))
        plan, cancel = self.target.plan, self.cancel
        # with the token: the jobs screen can cancel it too, and quitting asks first
        relay = EventRelay(self, cancel=cancel, what=f"the restore {plan.target_label}")

        def run() -> Message:
            result = self.engine.restore(plan, relay, cancel)
            return RestoreFinished(result, self.engine.check_restore(plan, result))

        self.call_engine(run, group="restore", failed=RestoreFailed, job=True)

    def on_job_progress(self, message: JobProgress) -> None:
        event = message.event
        if not (event.bytes_total or event.items_total or event.bytes_done):
            return  # the job's own end event: the result or the failure says the rest
        self.last = event
        bar = self.query_one("#restore-bar", ProgressBar)
        if event.bytes_total:
            bar.update(total=event.bytes_total, progress=min(event.bytes_done,
                                                             event.bytes_total))
        numbers = human_bytes(event.bytes_done) + (
            f" of {human_bytes(event.bytes_total)}" if event.bytes_total else "")
        if event.items_total:
            numbers += f" · {event.items_done}/{event.items_total} files"
        self.query_one("#restore-numbers", Static).update(Content(numbers))

    def _ended(self, title: str) -> None:
        self.running = False
        self.query_one("#restore-keys", Label).update("Enter or Esc closes")
        self.query_one(".restore-title", Label).update(Content(f"Restore: {title}"))

    def on_restore_finished(self, message: RestoreFinished) -> None:
        result, check = message.result, message.check
        self._ended("done" if check.ok else "done, with problems")
        done = int(getattr(result, "bytes", 0) or 0)
        self.query_one("#restore-bar", ProgressBar).update(total=max(1, done),
                                                            progress=max(1, done))
        self.query_one("#restore-numbers", Static).update(f"{human_bytes(done)} restored")
        lines = list(check.lines) + [f"PROBLEM: {p}" for p in check.problems]
        lines += [f"note: {n}" for n in getattr(result, "notes", [])]
        lines += [f"warning: {w}" for w in getattr(result, "warnings", [])[:5]]
        self.query_one("#restore-result", Static).update(Content("\n".join(lines)))
        self.set_class(not check.ok, "-problems")
        if check.rows:
            table = self.query_one("#restore-rows", DataTable)
            table.display = True
            for name, now, recorded in check.rows:
                table.add_row(Text(name), Text(str(now), justify="right"),
                              Text("—" if recorded is None else str(recorded), justify="right"))

    def on_restore_failed(self, message: RestoreFailed) -> None:
        cancelled = self.cancel.cancelled
        self._ended("cancelled" if cancelled else "FAILED")
        self.set_class(True, "-problems")
        self.query_one("#restore-result", Static).update(Content(
            ("Cancelled. " if cancelled else f"Failed: {message.error}\n") + self.left_behind()))

    def left_behind(self) -> str:
        """What a restore that stopped leaves, in the engine's words (``RestoreForm``)."""
        event = self.last
        done = (f" ({event.items_done} of {event.items_total} file(s), "
                f"{human_bytes(event.bytes_done)} written)" if event and event.items_total
                else "")
        return f"Left behind: {self.form.on_stop or 'see the error above'}{done}."

    def on_unmount(self) -> None:
        if self.running:  # the app is going away: let the restore stop, not outlive it
            self.cancel.cancel()

    def action_stop(self) -> None:
        if self.running and not self.cancel.cancelled:
            self.cancel.cancel()
            self.say("Cancelling: the restore stops at its next check…", error=False)

    def action_cancel(self) -> None:  # Esc while running: say how to stop
        if self.running:
            self.say("The restore is running: x cancels it.", error=False)
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.action_cancel()


# ----------------------------------------------------------------- the wizard
class RestoreWizard:
    """Chains the steps for one snapshot record; ``start`` pushes the first."""

    def __init__(self, app: App, engine: Engine, snap: dict, form: Any,
                 on_end: Callable[[], None] | None = None) -> None:
        self.app, self.engine, self.snap, self.form = app, engine, snap, form
        self.on_end = on_end  # called once the wizard closes, whatever happened
        self.chosen: Chosen | None = None
        self.target: Target | None = None

    def start(self) -> None:
        self.app.push_screen(SnapshotStep(self.engine, self.snap), self._snapshot)

    def _end(self) -> None:
        if self.on_end is not None:
            self.on_end()

    def _snapshot(self, chosen: Chosen | None) -> None:
        if chosen is None:
            return self._end()
        self.chosen = chosen
        self.app.push_screen(TargetStep(self.engine, chosen, self.form), self._target)

    def _target(self, target: Target | None) -> None:
        if target is None or self.chosen is None:
            return self._end()
        self.target = target
        self.app.push_screen(ReviewStep(self.engine, self.chosen, target), self._reviewed)

    def _reviewed(self, go: bool | None) -> None:
        if not go or self.target is None:
            return self._end()
        if self.target.replaces:
            self.app.push_screen(ConfirmStep(self.engine, self.target.replaces,
                                             self.form.into), self._confirmed)
        else:
            self._run()

    def _confirmed(self, ok: bool | None) -> None:
        if not ok:
            return self._end()
        self._run()

    def _run(self) -> None:
        assert self.target is not None
        self.app.push_screen(RunStep(self.engine, self.target, self.form),
                             lambda _: self._end())
