"""The console: a Textual app over one Engine, with four screens and, maybe, the scheduler.

Screens are modes, each kept while the others show: the dashboard, first
(``d``: am I protected?), the inventory (snapshots,
replicas and sources with their WAL archive and drills, ``i``), the jobs
(``j``) and the schedule (``s``). Screens call the engine only from thread
workers, through ``backup_tui.engine_calls`` (one way to call, one error path),
and never import this module: what only the app may do (a schedule action,
say) they ask for with a message
(``ScheduleActionRequested``), which the app acts on. ``run_console`` is what
``backup-tui`` with no command runs.

Who runs the schedule (``SchedulerHost``): one scheduler per state directory
(docs/ARCHITECTURE.md, section 5). At start the console looks for the holder of the
scheduler lock. A daemon (``backup-tui --run-scheduler``) holds it: the console
is a *viewer* (sub-title "viewer: daemon pid N"), starts no scheduler, shows the
daemon's jobs from the catalog and sends "run now" through the catalog. Nobody
holds it: the console runs the schedule itself ("scheduler: this console"),
unless ``run_scheduler`` is False or the user is no admin (scheduled jobs would
be refused); then nobody runs it ("scheduler off") and a run now waits in the
catalog for a scheduler to start. The holder is looked up again every few
seconds while the console does not run the schedule, so the sub-title follows a
daemon that starts or stops; the console never takes the schedule over from a
daemon that stopped (systemd restarting it would then find the lock taken).

Quitting with the console's own scheduler stops it in a thread: no new jobs,
and a running scheduled job gets ``STOP_GRACE`` seconds to end before it is
interrupted (its catalog row says so; the repository stays consistent).
While this console runs a job (its own, in ``job_tokens``, or its scheduler's),
``q`` asks first and says what quitting does to it; "no" (the default, Esc)
keeps it running, "yes" cancels it and waits for it to end before quitting.
A daemon's jobs are not the console's: quitting leaves them alone.

``?`` opens the help over any screen: every key of that screen and the app
(``backup_tui.screens.help``). ``[console] keys`` in the config remaps keys by
binding id (Textual's keymap): an unknown id refuses to start, a key two bindings
of one screen would share is a warning at start (``console_keymap``).

While the console runs, the engine's log (logger ``backup_tui``: the
scheduler's "job failed", a notification that could not be sent) becomes
notifications (``LogToConsole``) instead of lines written over the screen.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import cast

from textual import events
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen, Screen

from backup_tui.engine_calls import EngineCaller
from backup_tui.messages import (
    EngineLogged,
    JobTokens,
    ScheduleActionDone,
    ScheduleActionRequested,
    SchedulerSettled,
    SchedulerStopped,
)
from backup_tui.screens.commands import ConsoleCommands
from backup_tui.screens.dashboard import DashboardScreen
from backup_tui.screens.help import HelpScreen, console_keymap, keys_of
from backup_tui.screens.inventory import InventoryScreen
from backup_tui.screens.jobs import ConfirmDialog, JobsScreen, cancel_effect, runner_label
from backup_tui.screens.schedule import ScheduleScreen
from engine.daemon import Scheduler, SchedulerLock
from engine.errors import EngineError, LockedError
from engine.events import CancelToken
from engine.facade import Engine

PREWARM_AFTER = 0.3  # seconds after start before the other screens are built, hidden
PREWARM_GAP = 0.1  # seconds between two steps of it: keys pressed meanwhile come first
STOP_GRACE = 5.0  # seconds a running scheduled job gets to end when the console quits
RECHECK_SECONDS = 5.0  # how often a console that does not run the schedule looks again
REFREEZE_SECONDS = 300.0  # how often the frozen heap is collected and frozen again
JOBS_STOP_WAIT = 60.0  # seconds quitting waits for this console's cancelled jobs to end
STARTING, OWN, VIEWER, OFF = "starting", "own", "viewer", "off"


class SchedulerHost:
    """Whether this console runs the schedule (``own``), watches a daemon's (``viewer``), or
    neither (``off``). ``settle`` and ``stop`` block: call them from a thread."""

    def __init__(self, engine: Engine, enabled: bool) -> None:
        self.engine = engine
        self.enabled = enabled  # may this console run the schedule itself
        self.mode = STARTING
        self.daemon_pid: int | None = None  # the holder of the lock when a viewer
        self.last_daemon_pid: int | None = None  # the daemon watched before, once it stopped
        self.error = ""  # why the console's own scheduler could not start
        self.scheduler: Scheduler | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def label(self) -> str:
        """For the sub-title."""
        if self.mode == OWN:
            return "scheduler: this console"
        if self.mode == VIEWER:
            return f"viewer: daemon pid {self.daemon_pid if self.daemon_pid != -1 else '?'}"
        if self.mode == OFF:
            return "scheduler off"
        return "scheduler: looking…"

    def settle(self) -> bool:
        """Attach to a daemon, or (the first time only) start the console's own scheduler, or
        neither; True when that changed. Does nothing once the console runs the schedule or
        has stopped."""
        with self._lock:
            if self._stopped or self.mode == OWN:
                return False
            before = (self.mode, self.daemon_pid)
            state_dir = self.engine.config.state_dir
            pid = SchedulerLock.holder(state_dir)
            if pid is None and self.enabled and self.mode == STARTING:  # at start only
                try:
                    self.scheduler = Scheduler(
                        self.engine, job_nice=self.engine.config.console.job_nice).start()
                except LockedError:  # a daemon started between the look and the start
                    pid = SchedulerLock.holder(state_dir)
                except EngineError as e:  # say so once, and do not try again
                    self.error, self.enabled = str(e), False
                else:
                    self.mode, self.daemon_pid = OWN, None
                    return True
            if self.mode == VIEWER and pid is None:
                self.last_daemon_pid = self.daemon_pid
            self.mode, self.daemon_pid = (OFF, None) if pid is None else (VIEWER, pid)
            return (self.mode, self.daemon_pid) != before

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the console's own scheduler, if it runs: see the module docstring."""
        with self._lock:
            self._stopped = True
            scheduler, self.scheduler = self.scheduler, None
            if scheduler is not None:
                scheduler.stop(grace=grace)
                self.mode = OFF

    def where_runs_go(self) -> str:
        """Who takes a run-now request, as the end of a sentence."""
        if self.mode == OWN:
            return "this console's scheduler starts it within a second"
        if self.mode == VIEWER:
            return f"the daemon (pid {self.daemon_pid}) starts it within a second"
        return ("no scheduler is running, here or in a daemon: it waits until one starts "
                "(backup-tui --run-scheduler)")


class LogToConsole(logging.Handler):
    """The engine's log records, posted to the app as ``EngineLogged`` (from any thread)."""

    def __init__(self, app: App) -> None:
        super().__init__(logging.WARNING)
        self.app = app
        self._saved: tuple[list[logging.Handler], bool] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # The scheduler's records carry logfmt fields: "job failed" target=files:src error=...
        fields = {k: str(v) for k, v in getattr(record, "fields", {}).items()}
        if not fields:
            title, text = record.levelname.capitalize(), record.getMessage()
        else:
            title = record.getMessage().capitalize()
            if fields.get("target") or fields.get("kind"):
                title += f": {fields.get('target') or fields.get('kind')}"
            text = fields.get("error") or ", ".join(
                f"{k} {v}" for k, v in fields.items() if k not in ("target", "kind"))
        self.app.post_message(EngineLogged(record.levelno, title, text or title))

    def install(self) -> None:
        """Be the engine logger's only handler (a stderr one would write over the screen)."""
        logger = logging.getLogger("backup_tui")
        self._saved = (list(logger.handlers), logger.propagate)
        logger.handlers[:] = [self]
        logger.propagate = False

    def uninstall(self) -> None:
        if self._saved is not None:
            logger = logging.getLogger("backup_tui")
            logger.handlers[:], logger.propagate = self._saved
            self._saved = None


class BackupConsole(EngineCaller, App[int]):
    """Backups of PostgreSQL and files, from the keyboard."""

    CSS_PATH = "app.tcss"
    TITLE = "backup-tui"
    DEFAULT_MODE = "dashboard"  # the first screen; BackupConsole(start=...) picks another
    BINDINGS = [
        Binding("d", "switch_mode('dashboard')", "Dashboard", id="dashboard"),
        Binding("i", "switch_mode('inventory')", "Inventory", id="inventory"),
        Binding("j", "switch_mode('jobs')", "Jobs", id="jobs"),
        Binding("s", "switch_mode('schedule')", "Schedule", id="schedule"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]
    COMMANDS = App.COMMANDS | {ConsoleCommands}

    def __init__(self, engine: Engine, notice: str | None = None, *,
                 run_scheduler: bool = True, clock: Callable[[], float] = time.time,
                 start: str = DEFAULT_MODE, prewarm: bool = True) -> None:
        """``run_scheduler``: run the schedule here when no daemon does. ``clock``: "now" for
        durations and ETAs (snapshot tests fix it). ``start``: the first screen's mode."""
        self.DEFAULT_MODE = start  # Textual starts in DEFAULT_MODE: this instance's own
        super().__init__()
        self.engine = engine
        self.job_nice = engine.config.console.job_nice  # call_engine(job=True): below the UI
        self.prewarm = prewarm  # build the other screens ahead (_prewarm_next)
        self._built_ahead: Screen | None = None  # built at the last step, to render ahead
        keymap, self.key_clashes = console_keymap(engine.config.console.keys,
                                                  str(engine.config.path or "config"))
        self.set_keymap(keymap)  # [console] keys: ConfigError above for an unknown id
        self.notice = notice  # shown once at start, e.g. why the demo has no database
        self.clock = clock
        self.read_only = not engine.is_admin  # mutating actions need an admin
        self.scheduler_host = SchedulerHost(engine, run_scheduler and not self.read_only)
        self._quitting = False
        self.job_tokens = JobTokens()  # the jobs this console runs (EventRelay fills it)
        self._log = LogToConsole(self)
        ro = self.read_only
        modes: dict[str, Callable[[], Screen]] = {
            "dashboard": lambda: DashboardScreen(engine),
            "inventory": lambda: InventoryScreen(engine, read_only=ro),
            "jobs": lambda: JobsScreen(engine, clock, self._runner, self._canceller),
            "schedule": lambda: ScheduleScreen(engine, read_only=ro),
        }
        for mode, make in modes.items():
            self.add_mode(mode, self._mode_screen(make))
        self._show_sub_title()

    def _show_sub_title(self) -> None:
        parts = [str(self.engine.config.repo_path), self.scheduler_host.label]
        self.sub_title = " · ".join(parts + (["read-only"] if self.read_only else []))

    def _runner(self, pid: int | None) -> str:
        host = self.scheduler_host
        if pid and host.daemon_pid is None and pid == host.last_daemon_pid:
            return f"run by the daemon (pid {pid}, stopped since)"
        return runner_label(pid, host.daemon_pid)

    def _canceller(self, job: dict) -> CancelToken | str:
        """A running job's cancel token when this console runs it, else why it has none."""
        token = self.job_tokens.token(job["id"])
        if token is not None:
            return token
        pid, host = job.get("pid"), self.scheduler_host
        if pid == os.getpid():  # this console's scheduler: Scheduler.cancel once confirmed
            handle = host.scheduler.cancel_handle(job) if host.scheduler is not None else None
            return handle or "this console's scheduler no longer runs it: it has ended."
        if pid and pid == host.daemon_pid:
            return (f"the daemon (pid {pid}) runs it, and the engine has no way to ask another "
                    "process to cancel a job; stopping the daemon interrupts it.")
        return (f"another process (pid {pid}) runs it, and the engine has no way to ask it to "
                "cancel a job; stop it there (Ctrl+C).")

    def on_mount(self) -> None:
        self._log.install()
        if self.notice:
            self.notify(self.notice, severity="warning", timeout=10, markup=False)
        if self.key_clashes:
            self.notify("\n".join(self.key_clashes), title="[console] keys: a key does two "
                        "things", severity="warning", timeout=20, markup=False)
        self.settle_scheduler()
        self.set_interval(RECHECK_SECONDS, self._recheck)
        if self.prewarm:
            self.set_timer(PREWARM_AFTER, self._prewarm_next)

    def _prewarm_next(self) -> None:
        """Build one screen not shown yet, hidden, then the next a moment later: a screen's
        first show mounts its widgets and re-applies the whole stylesheet for their
        classes (up to 0.4 s on this machine while a backup ran, bench/key_latency.py);
        built ahead, the first press of j, s, d or i only switches. The screen is resumed
        and at once suspended, as a switch away from it would. At the next step, once its
        data has had time to arrive, the screen built before is rendered once, hidden
        (``_render_ahead``)."""
        if self._quitting or not self.is_running:  # shutting down: the stacks are closing
            return
        if self._built_ahead is not None:
            self._render_ahead(self._built_ahead)
            self._built_ahead = None
        elif self.screen._css_update_count != self._css_update_count:
            # The first screen was mounted after the start's refresh_css (the theme's) and
            # is not marked styled: refresh once here, not at the first switch back to it.
            self.refresh_css(animate=False)
            self.set_timer(PREWARM_GAP, self._prewarm_next)
            return
        for mode in self._modes:
            if mode not in self._screen_stacks and mode != self.current_mode:
                self._init_mode(mode)  # mounts it and posts ScreenResume
                screen = self._screen_stacks[mode][0]
                screen.post_message(events.ScreenSuspend())
                self._built_ahead = screen
                self.set_timer(PREWARM_GAP, self._prewarm_next)
                return
        # every screen built: what lives now lives long
        self._freeze_heap()
        self.set_interval(REFREEZE_SECONDS, self._refreeze_heap)

    def _mode_screen(self, make: Callable[[], Screen]) -> Callable[[], Screen]:
        """A mode's screen factory whose screens are marked styled as of their making.
        They are: each widget is styled as it is registered. Unmarked, ``_init_mode`` and
        then ``switch_mode`` would each call refresh_css, which parses the whole stylesheet
        again and restyles every screen: 0.07-0.3 s of the UI thread while a backup ran
        (bench/key_latency.py --profile), whether the screen was built ahead or at its
        first key. A theme changed later still restyles a screen at its next show."""
        def build() -> Screen:
            screen = make()
            stacks = self._screen_stacks.get(self.current_mode)
            # Only while the screen showing is up to date, so is the stylesheet: the first
            # screen comes before the theme's refresh_css, and is left to Textual.
            if stacks and stacks[-1]._css_update_count == self._css_update_count:
                screen._css_update_count = self._css_update_count
            return screen
        return build

    def _render_ahead(self, screen: Screen) -> None:
        """Lay ``screen`` out and render every widget of it once, hidden, the lines thrown
        away: its widgets keep what they rendered (a DataTable its rows and cells, each
        widget its styled lines), so its first show only composes them. Rendered at its
        first show instead, the jobs table alone took 0.15-0.25 s of the UI thread while a
        backup ran (bench/key_latency.py --profile)."""
        if screen.is_current or not screen.is_attached or not screen.is_running:
            return
        screen._refresh_layout(self.size)
        screen._compositor.render_update(full=True)

    @staticmethod
    def _freeze_heap() -> None:
        """Move the objects alive now (screens, widgets, the inventory's rows) out of the
        cyclic garbage collector's sight (``gc.freeze``). A full collection otherwise walks
        all of them, on whatever thread allocates at that moment: while a backup ran, the
        UI thread met one inside a key's rendering often enough to cost that key 100-200 ms
        (bench/key_latency.py --profile showed it as time in textual's cache and strip
        constructors)."""
        gc.collect()
        gc.freeze()

    def _refreeze_heap(self) -> None:
        """Cycles among objects that died after a freeze are collected only here: unfreeze,
        collect, freeze again (every REFREEZE_SECONDS)."""
        if self._quitting or not self.is_running:
            return
        gc.unfreeze()
        self._freeze_heap()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "switch_mode":  # not to the screen showing (from under a dialog: below)
            return parameters[0] != self.current_mode
        return True

    async def action_switch_mode(self, mode: str) -> None:
        """Switch screens, but never from under a dialog. Refused here rather than in
        ``check_action``: there, each dialog that opens or closes would change the bindings
        of the screen below and rebuild its footer (most of a key's time while a backup
        ran, bench/key_latency.py)."""
        if not isinstance(self.screen, ModalScreen):
            self.switch_mode(mode)

    def action_help(self) -> None:
        """The keys of the screen showing (``backup_tui.screens.help``)."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
        elif not isinstance(self.screen, ModalScreen):
            # One help per screen, kept (installed) and opened again: built, laid out and
            # rendered at its first open only (~20-40 ms of the UI thread each time after).
            mode, keys = self.current_mode, keys_of(self.screen)
            name = f"help-{mode}"
            if self.is_screen_installed(name):
                cast(HelpScreen, self.get_screen(name)).show_keys(keys)
            else:
                title = {"inventory": "Inventory", "jobs": "Jobs", "schedule": "Schedule",
                         "dashboard": "Dashboard"}
                self.install_screen(HelpScreen(title.get(mode, mode), keys), name)
            self.push_screen(name)

    def on_engine_logged(self, message: EngineLogged) -> None:
        severity = "error" if message.level >= logging.ERROR else "warning"
        self.notify(message.text, title=message.title, severity=severity, markup=False)

    # ------------------------------------------------------------ scheduler
    def settle_scheduler(self) -> None:
        """Look (in a thread) for who runs the schedule; start it here if nobody does."""
        self.call_engine(self._settle, group="scheduler", alert="Looking for the scheduler failed")

    def _settle(self) -> SchedulerSettled | None:
        before = self.scheduler_host.mode
        if self.scheduler_host.settle() or before == STARTING:
            return SchedulerSettled(before)
        return None

    def _recheck(self) -> None:
        if self.scheduler_host.mode in (VIEWER, OFF) and not self._quitting:
            self.settle_scheduler()

    def on_scheduler_settled(self, message: SchedulerSettled) -> None:
        host = self.scheduler_host
        self._show_sub_title()
        if host.error and host.mode != OWN:
            self.notify(host.error, title="Cannot run the schedule here", severity="warning",
                        markup=False)
        elif message.before == VIEWER and host.mode == OFF:
            self.notify(f"The daemon (pid {host.last_daemon_pid}) stopped: nothing runs the "
                        "schedule now.", title="Scheduler gone", severity="warning",
                        markup=False)
        elif message.before != STARTING and host.mode == VIEWER:
            self.notify(f"A daemon (pid {host.daemon_pid}) runs the schedule: this console "
                        "watches it.", title="Viewer", markup=False)

    # ----------------------------------------------------- schedule actions
    def run_now(self, kind: str) -> None:
        """Ask the scheduler to run schedule ``kind`` now (through the catalog)."""
        self.post_message(ScheduleActionRequested(kind, "run"))

    def set_paused(self, kind: str, paused: bool) -> None:
        self.post_message(ScheduleActionRequested(kind, "pause" if paused else "resume"))

    def schedules_for_palette(self) -> list[dict]:
        """The schedules, for the command palette (called off the UI thread)."""
        return self.engine.schedules()

    def on_schedule_action_requested(self, message: ScheduleActionRequested) -> None:
        """From the schedule screen or the palette: run now, pause or resume a schedule."""
        kind, action = message.kind, message.action
        if self.read_only:
            self.notify("This console is read-only: changing the schedule needs an admin.",
                        severity="warning")
            return
        what = "Run now" if action == "run" else action.capitalize()
        self.call_engine(partial(self._schedule_action, kind, action),
                         group="schedule-action", exclusive=False,
                         alert=f"{what}: {kind} failed")

    def _schedule_action(self, kind: str, action: str) -> ScheduleActionDone:
        if action == "run":
            self.engine.request_run(kind)
        else:
            self.engine.pause(kind, action == "pause")
        return ScheduleActionDone(kind, action)

    def on_schedule_action_done(self, message: ScheduleActionDone) -> None:
        if message.action == "run":
            host = self.scheduler_host
            self.notify(f"Run now: {message.kind} requested; {host.where_runs_go()}.",
                        title="Run now", markup=False,
                        severity="information" if host.mode in (OWN, VIEWER) else "warning")
        else:
            self.notify(f"Schedule {message.kind} {message.action}d.", markup=False)
        if isinstance(self.screen, ScheduleScreen):
            self.screen.load()

    # ------------------------------------------------------------------ quit
    def action_quit(self) -> None:
        """Quit; while this console runs a job, ask first (see the module docstring)."""
        if self._quitting or isinstance(self.screen, ConfirmDialog):
            return
        question = self.quit_question()
        if question is None:
            self._quit()
        else:
            self.push_screen(ConfirmDialog("Quit while a job runs?", question,
                                           yes="Quit and cancel", no="Keep running"),
                             lambda yes: self._quit() if yes else None)

    def quit_question(self) -> str | None:
        """What quitting now would do to the jobs this console runs, or None without any."""
        scheduler = self.scheduler_host.scheduler
        scheduled = scheduler.running() if scheduler is not None else []
        own = self.job_tokens.running()
        kinds = {job_id.rsplit("-", 2)[0] for job_id in own}
        parts = []
        if own:
            parts.append(f"This console runs {', '.join(own.values())}. Quitting cancels it: "
                         "it stops at its next check and ends as interrupted. "
                         + " ".join(cancel_effect(k) for k in sorted(kinds)))
        if scheduled:
            parts.append(f"This console's scheduler runs {', '.join(scheduled)}: it gets "
                         f"{STOP_GRACE:.0f} s to end, then it is interrupted; the repository "
                         "stays consistent.")
        return "\n\n".join(parts) or None

    def _quit(self) -> None:
        """Cancel this console's jobs and stop its scheduler (in a thread), then exit."""
        self._quitting = True
        if (self.scheduler_host.scheduler is None and self.scheduler_host.mode != STARTING
                and not self.job_tokens.running()):
            self.exit()
            return
        self.set_timer(0.5, self._say_stopping)
        self.call_engine(self._stop_jobs, group="quit", failed=SchedulerStopped)

    def _say_stopping(self) -> None:
        if self.job_tokens.running():
            self.notify("Cancelling this console's jobs: each stops at its next check.",
                        title="Quitting", timeout=STOP_GRACE * 3)
        if self.scheduler_host.scheduler is not None:
            self.notify(f"Stopping the scheduler: a running scheduled job gets "
                        f"{STOP_GRACE:.0f} s to end, then it is interrupted.", title="Quitting",
                        timeout=STOP_GRACE * 3)

    def _stop_jobs(self) -> SchedulerStopped:
        self.job_tokens.cancel_all()
        end = time.monotonic() + JOBS_STOP_WAIT
        while self.job_tokens.running() and time.monotonic() < end:
            time.sleep(0.1)
        self.scheduler_host.stop(STOP_GRACE)
        return SchedulerStopped()

    def on_scheduler_stopped(self, message: SchedulerStopped) -> None:
        if message.error:
            self.exit(return_code=1, message=f"Stopping the scheduler failed: {message.error}")
        else:
            self.exit()

    async def on_unmount(self) -> None:
        # Any other way out (the app exited from elsewhere, a test ending): stop it here. The
        # screen is gone by now, so this only ever waits for a running job's grace period.
        await asyncio.to_thread(self.scheduler_host.stop, STOP_GRACE)
        self._log.uninstall()


def run_console(engine: Engine, notice: str | None = None, run_scheduler: bool = True) -> int:
    """Run the console until the user quits; returns the exit code."""
    app = BackupConsole(engine, notice, run_scheduler=run_scheduler)
    app.run()
    return app.return_code or 0
