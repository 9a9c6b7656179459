"""The console's jobs and schedule screens, and the scheduler in the console or in a daemon.

Flows drive ``BackupConsole`` over a real engine: attached as a viewer to a real
daemon process (``backup-tui --run-scheduler``, helpers from test_daemon.py) it
shows the daemon's running job live from the catalog; with its own scheduler it
runs a schedule now and pauses one; a user who is not an admin gets a read-only
console. Snapshot tests show both screens on canned data with a fixed clock,
terminal size and time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from test_daemon import schedule_toml, start_daemon, stop_daemon, wait_for
from test_tui import T0, CannedEngine, settle
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input

from backup_tui import app as app_module
from backup_tui.app import OFF, OWN, VIEWER, BackupConsole
from backup_tui.format import duration
from backup_tui.screens.jobs import ConfirmDialog, JobsScreen
from backup_tui.screens.schedule import ScheduleScreen
from backup_tui.screens.source_picker import SourcePicker
from backup_tui.widgets.job_panel import JobPanel
from backup_tui.widgets.job_table import USER_QUIET, Figures, JobDetail, JobTable, numbers_line
from backup_tui.widgets.schedule_table import ScheduleTable
from engine.daemon import Scheduler, SchedulerLock
from engine.errors import EngineError
from engine.events import CancelToken, Event
from engine.facade import Engine

SIZE = (124, 32)


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch):
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def until(pilot: Pilot, pred: Callable[[], object], timeout: float = 60.0,
                what: str = "condition"):
    """Let the console run until ``pred()`` is true; returns its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


def notes(app: BackupConsole, severity: str | None = None) -> list[str]:
    return [n.message for n in app._notifications if severity in (None, n.severity)]


def binding_states(app: BackupConsole) -> dict[str, bool]:
    """Binding id -> enabled, for the bindings the footer may show now."""
    return {b.binding.id: b.enabled for b in app.active_bindings.values() if b.binding.id}


def spy_on_scheduler_start(monkeypatch) -> list[Scheduler]:
    """Every ``Scheduler.start`` in this process (the console's), recorded."""
    started: list[Scheduler] = []
    original = Scheduler.start

    def start(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(Scheduler, "start", start)
    return started


# --- the done-when: a console attached to a daemon shows its running job live ---------



def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, as /proc lists them now."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return found


@contextlib.contextmanager
def throttled(pid: int, run: float = 0.1, pause: float = 0.2) -> Iterator[None]:
    """Let process ``pid`` and its children run ``run`` seconds of every ``run + pause``
    (SIGSTOP / SIGCONT) while the block runs, so that a backup in another process lasts
    long enough to be watched however fast this machine backs it up; all continued after."""
    done = threading.Event()

    def signal_all(sig: int) -> None:
        for p in _process_tree(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def loop() -> None:
        while not done.wait(run):
            signal_all(signal.SIGSTOP)
            done.wait(pause)
            signal_all(signal.SIGCONT)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal_all(signal.SIGCONT)

def test_viewer_shows_the_daemons_running_job_live(sandbox, tmp_path, monkeypatch):
    # The source arrives only once the console watches, so the daemon's first backup of it
    # (no parent snapshot: real totals) runs for seconds in front of it.
    data = sandbox.root / "data"
    staging = sandbox.root / "staging"
    staging.mkdir()
    for i in range(16):
        (staging / f"big{i:02d}.bin").write_bytes(os.urandom(24 << 20))
    sandbox.filesets = {"src": [str(data)]}
    sandbox.extra = schedule_toml(files="*/2 * * * * *", grace_seconds=0)
    sandbox.write_config()
    sandbox.engine(init=True).pause("files")  # until the console is watching
    started = spy_on_scheduler_start(monkeypatch)
    log = tmp_path / "daemon.log"
    proc = start_daemon(sandbox, log)
    try:
        wait_for(lambda: "scheduler started" in log.read_text(), 30)
        engine = sandbox.engine()
        app = BackupConsole(engine, start="inventory", run_scheduler=True)
        seen: list[tuple[int, str]] = []  # (bytes done, progress cell) of the running job

        async def flow():
            async with app.run_test(size=SIZE) as pilot:
                viewer = f"{sandbox.repo} · viewer: daemon pid {proc.pid}"
                # the mode changes in the worker, the sub-title when its message arrives
                await until(pilot, lambda: app.sub_title == viewer, 30, "viewer")
                assert app.scheduler_host.mode == VIEWER
                # Resume the schedule from the console: the daemon sees it in the catalog.
                await pilot.press("s")
                screen = app.screen
                assert isinstance(screen, ScheduleScreen)
                await until(pilot, lambda: "files" in screen.table.schedules)
                screen.table.move_cursor(row=screen.table.get_row_index("files"))
                await until(pilot, lambda: screen.table.selected["paused"])
                await pilot.press("space")
                await until(pilot, lambda: not next(s for s in engine.schedules()
                                                    if s["kind"] == "files")["paused"])
                os.rename(staging, data)
                # The daemon runs a tenth of a second in three: its backup lasts long enough
                # to be seen running, and moving, however fast this machine backs it up.
                with throttled(proc.pid):
                    await pilot.press("j")
                    jobs = app.screen
                    assert isinstance(jobs, JobsScreen)
                    table = jobs.table

                    def running() -> dict | None:
                        job = next((j for j in table.jobs.values()
                                    if j["state"] == "running" and j["bytes_done"] > 0), None)
                        if job is None:
                            return None
                        progress = table.get_row(job["id"])[5].plain  # "" until the scan's total
                        seen.append((job["bytes_done"], progress))
                        return job if progress.rstrip("%") not in ("", "0") else None

                    job = await until(pilot, running, 60, "a running job with progress")
                    assert job["target"] == "files:src" and job["pid"] == proc.pid
                    assert table.get_row(job["id"])[2].plain == "running"
                    assert int(table.get_row(job["id"])[5].plain.rstrip("%")) > 0
                    assert table.selected["id"] == job["id"]  # the newest: highlighted
                    detail = jobs.query_one(JobDetail)
                    assert detail.has_class("-running") and detail.bar.percentage > 0
                    assert f"run by the daemon (pid {proc.pid})" in detail.text
                    await until(pilot, lambda: (running() or True)
                                and table.jobs[job["id"]]["state"] == "succeeded", 90, "success")
                    assert table.get_row(job["id"])[2].plain == "succeeded"
                    assert table.get_row(job["id"])[5].plain == "100%"
                    assert len({b for b, _ in seen}) >= 2, seen  # live: it moved while we watched
                assert app.scheduler_host.scheduler is None and not started
                assert SchedulerLock.holder(sandbox.state) == proc.pid
                # The daemon stops: the console says so and does not take the schedule over.
                assert stop_daemon(proc) == 0, log.read_text()
                off = f"{sandbox.repo} · scheduler off"
                await until(pilot, lambda: app.sub_title == off, 30, "daemon gone")
                assert app.scheduler_host.mode == OFF
                assert any(f"daemon (pid {proc.pid}) stopped" in n for n in notes(app))
                assert not started and SchedulerLock.holder(sandbox.state) is None

        asyncio.run(flow())
    finally:
        if proc.poll() is None:
            stop_daemon(proc)
    assert "run now requested" not in log.read_text()
    assert not notes(app, "error")


# --- the console's own scheduler: run now, pause, resume ------------------------------


def schedule_row(app: BackupConsole, kind: str) -> dict[str, str]:
    table = app.screen.query_one(ScheduleTable)
    cells = table.get_row(kind)
    return {str(c.value): cell.plain for c, cell in zip(table.columns, cells, strict=True)}


def test_own_scheduler_runs_now_and_pauses(sandbox, monkeypatch, utc):
    (sandbox.src / "a.txt").write_text("a\n")
    sandbox.extra = schedule_toml(files="0 3 * * *")
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    started = spy_on_scheduler_start(monkeypatch)
    app = BackupConsole(engine, start="inventory", run_scheduler=True)

    def files() -> dict:
        return next(s for s in engine.schedules() if s["kind"] == "files")

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            own = f"{sandbox.repo} · scheduler: this console"  # once the message is in
            await until(pilot, lambda: app.sub_title == own, 30, "own scheduler")
            assert app.scheduler_host.mode == OWN
            assert SchedulerLock.holder(sandbox.state) == os.getpid()
            await pilot.press("s")
            screen = app.screen
            assert isinstance(screen, ScheduleScreen)
            await until(pilot, lambda: "files" in screen.table.schedules)
            assert schedule_row(app, "files")["state"] == "active"
            assert schedule_row(app, "files")["next"].endswith(" 03:00 UTC")
            assert schedule_row(app, "database")["state"] == "off"
            await pilot.press("down", "down")  # database, then cluster, then files
            assert screen.table.selected["kind"] == "files"
            await pilot.press("n")
            await until(pilot, lambda: any(j["state"] == "succeeded" for j in engine.jobs()),
                        30, "the requested backup")
            assert any("this console's scheduler starts it" in n for n in notes(app))
            await until(pilot, lambda: schedule_row(app, "files")["result"] == "succeeded")
            assert schedule_row(app, "files")["last"] != "never"
            # The jobs screen has it, run by this console.
            await pilot.press("j")
            table = app.screen.query_one(JobTable)
            await until(pilot, lambda: table.jobs)
            [job] = table.jobs.values()
            assert (job["kind"], job["target"], job["state"]) == ("backup", "files:src",
                                                                   "succeeded")
            assert "run by this console" in app.screen.query_one(JobDetail).text
            # Pause from the command palette, resume with space.
            await pilot.press("s")
            await pilot.press("ctrl+p")
            await pilot.press(*"pause: files")
            await pilot.pause(0.3)
            await pilot.press("down", "enter")
            await until(pilot, lambda: files()["paused"], 10, "paused")
            assert files()["next_run"] is None
            await until(pilot, lambda: schedule_row(app, "files")["state"] == "paused")
            assert schedule_row(app, "files")["next"] == "paused"
            assert "resume" in binding_states(app) and "pause" not in binding_states(app)
            await pilot.press("space")
            await until(pilot, lambda: not files()["paused"], 10, "resumed")
            await until(pilot, lambda: schedule_row(app, "files")["state"] == "active")
            assert files()["next_run"]
            actions = [a["action"] for a in engine.audit_log()]
            assert actions[:4] == ["resume", "pause", "backup", "run now"]
            await pilot.press("q")  # stops the scheduler in a thread, then quits
            await until(pilot, lambda: not app.is_running, 30, "quit")

    asyncio.run(flow())
    assert len(started) == 1
    assert SchedulerLock.holder(sandbox.state) is None
    assert not notes(app, "error")


def test_a_failed_scheduled_job_is_a_notification_not_a_line_over_the_screen(sandbox):
    import logging
    import shutil

    sandbox.extra = schedule_toml()
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    shutil.rmtree(sandbox.src)
    logger = logging.getLogger("backup_tui")
    before = (list(logger.handlers), logger.propagate)
    app = BackupConsole(engine, start="inventory", run_scheduler=True)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.scheduler_host.mode == OWN)
            app.run_now("files")
            await until(pilot, lambda: [n for n in app._notifications
                                        if n.title == "Job failed: files:src"], 30)
            [note] = [n for n in app._notifications if n.title == "Job failed: files:src"]
            assert note.severity == "warning" and "does not exist" in note.message

    asyncio.run(flow())
    assert (list(logger.handlers), logger.propagate) == before  # given back on exit


def test_run_now_without_any_scheduler_waits_and_says_so(sandbox):
    sandbox.extra = schedule_toml()
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    app = BackupConsole(engine, start="inventory", run_scheduler=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.sub_title.endswith(" · scheduler off"))
            assert app.scheduler_host.mode == OFF
            await pilot.press("s")
            await until(pilot, lambda: app.screen.query_one(ScheduleTable).schedules)
            await pilot.press("down", "down")  # database, cluster: nothing to run (n disabled)
            await pilot.press("n")  # files: the request is made
            await until(pilot, lambda: notes(app, "warning"))
            [warning] = notes(app, "warning")
            assert "no scheduler is running" in warning and "--run-scheduler" in warning
            assert SchedulerLock.holder(sandbox.state) is None

    asyncio.run(flow())
    assert [a["action"] for a in engine.audit_log()] == ["run now", "init"]


# --- a read-only console ----------------------------------------------------------------


def test_read_only_console_disables_what_would_change_things(sandbox, monkeypatch):
    (sandbox.src / "a.txt").write_text("a\n")
    sandbox.extra = schedule_toml(files="0 3 * * *")
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    monkeypatch.setattr(Engine, "is_admin", property(lambda self: False))
    started = spy_on_scheduler_start(monkeypatch)
    app = BackupConsole(engine, start="inventory", run_scheduler=True)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            # No scheduler of its own: its jobs would be refused.
            assert app.scheduler_host.mode == OFF and not started
            assert app.sub_title == f"{sandbox.repo} · scheduler off · read-only"
            assert binding_states(app)["backup"] is False
            assert "Read-only console" in app.screen.query_one(JobPanel).text
            await pilot.press("b")
            await settle(app, pilot)
            assert app.screen.query_one(JobPanel).has_class("-idle")
            await pilot.press("s")
            await until(pilot, lambda: app.screen.query_one(ScheduleTable).schedules)
            await pilot.press("down")
            states = binding_states(app)
            assert states["run-now"] is False and states["pause"] is False
            await pilot.press("n", "space", "P")
            await pilot.pause(0.3)
            await settle(app, pilot)
            # The palette offers the screens, and nothing that changes anything.
            await pilot.press("ctrl+p")
            await pilot.press(*"now")
            await pilot.pause(0.5)
            assert isinstance(app.screen, CommandPalette)
            offered = [str(o.prompt) for o in app.screen.query_one(CommandList).options]
            assert not [o for o in offered if "now" in o.lower()], offered
            await pilot.press("escape")

    asyncio.run(flow())
    assert engine.jobs() == [] and [a["action"] for a in engine.audit_log()] == ["init"]
    assert not any(s["paused"] for s in engine.schedules())
    assert not notes(app, "error")


# --- figures ---------------------------------------------------------------------------


def _job(**fields) -> dict:
    base = {"id": "j", "kind": "backup", "target": "files:src", "state": "running",
            "started": 1000.0, "ended": None, "phase": "backup", "bytes_done": 0,
            "bytes_total": 0, "items_done": 0, "items_total": 0, "message": "", "error": "",
            "pid": 1, "updated": 1000.0}
    return base | fields


def test_figures_of_a_running_and_a_finished_job():
    running = Figures.of(_job(bytes_done=50 << 20, bytes_total=200 << 20, updated=1010.0),
                         now=1011.0)
    assert running.percent == "25%" and running.elapsed == 11.0
    assert running.rate == 5 << 20  # 50 MiB in the 10 s to the last progress row
    assert running.eta == pytest.approx(29.0)  # 150 MiB at 5 MiB/s, less the second since
    dump = Figures.of(_job(phase="dump", bytes_done=10, bytes_total=40, updated=1001.0), 1002.0)
    assert dump.percent == "~25%"
    done = Figures.of(_job(state="succeeded", ended=1004.0, bytes_done=8, bytes_total=8,
                           updated=1004.0), now=5000.0)
    assert (done.percent, done.elapsed, done.rate, done.eta) == ("100%", 4.0, 2.0, None)
    assert Figures.of(_job(), 1000.5).percent == "" and Figures.of(_job(), 1000.5).eta is None
    # A total the running job has reached (the last snapshot's size, outgrown) says nothing.
    grown = _job(bytes_done=300, bytes_total=300, items_done=1, items_total=314, updated=1003.0)
    assert (Figures.of(grown, 1004.0).percent, Figures.of(grown, 1004.0).eta) == ("", None)
    assert numbers_line(grown, Figures.of(grown, 1004.0)).startswith("300 B so far")
    committing = grown | {"phase": "commit"}
    assert Figures.of(committing, 1004.0).percent == "99%"  # 100% only once it has ended
    assert [duration(s) for s in (4.24, 37, 185, 7620)] == ["4.2 s", "37 s", "3m 05s",
                                                            "2h 07m"]


# --- the look, on canned data -----------------------------------------------------------

NOW = (T0 + timedelta(hours=50)).timestamp()  # 2024-06-05 04:00:11 UTC
DAEMON_PID = 4242


def _at(seconds_before_now: float) -> float:
    return NOW - seconds_before_now


def _canned_jobs() -> list[dict]:
    mib = 1 << 20
    rows = [
        # kind, target, state, started (s before now), ran (s), phase, bytes done/total,
        # items done/total, message, error
        ("backup", "files:app-data", "running", 42, None, "backup", 96 * mib, 240 * mib,
         120, 310, "/srv/app/data/uploads/2024/06/IMG_0612.jpg", ""),
        ("backup", "db:shop", "running", 30, None, "dump", 120 * mib, 384 * mib, 0, 0,
         "pg_dump shop", ""),
        ("replicate", "euw1", "failed", 310, 2.4, "replicate", 0, 14 * mib, 0, 41,
         "to euw1", "s3://acme-backup-euw1/web-1/ (euw1): put data/3f/3f9a0c: access denied "
         "(AccessDenied); check the credentials and the bucket policy"),
        ("replicate", "use1", "succeeded", 312, 1.9, "replicate", 14 * mib, 14 * mib, 41, 41,
         "to use1", ""),
        ("verify", "all", "interrupted", 3_600, 95, "verify", 0, 0, 3, 6, "snapshot 1a2b3c4d",
         "cancelled by request"),
        ("backup", "db:shop", "succeeded", 7_200, 7.5, "done", 311 * mib, 311 * mib, 0, 0,
         "snapshot 9c0d1e2f", ""),
        ("backup", "files:app-data", "incomplete", 86_400, 12.3, "done", 22 * mib, 22 * mib,
         310, 310, "snapshot 5e6f7a8b", "1 file(s) could not be read"),
        ("cleanup", "all", "succeeded", 90_000, 3.1, "done", 0, 0, 0, 0,
         "forgot 2 snapshot(s), pruned 1.2 MiB", ""),
    ]
    out = []
    for n, (kind, target, state, ago, ran, phase, done, total, items, items_total, message,
            error) in enumerate(rows):
        started = _at(ago)
        ended = None if ran is None else started + ran
        out.append({
            "id": f"{kind}-canned-{n}", "kind": kind, "target": target, "state": state,
            "started": started, "ended": ended, "phase": phase, "bytes_done": done,
            "bytes_total": total, "items_done": items, "items_total": items_total,
            "message": message, "error": error, "pid": DAEMON_PID,
            "updated": ended or NOW - 0.4,
        })
    return out


def _iso_ago(seconds: float) -> str:
    return (T0 + timedelta(hours=50, seconds=-seconds)).isoformat()


def _iso_in(seconds: float) -> str:
    return (T0 + timedelta(hours=50, seconds=seconds)).isoformat()


CANNED_SCHEDULES = [
    {"kind": "database", "cron": "0 2 * * *", "what": "back up every database",
     "paused": False, "next_run": _iso_in(79_189), "last_run": _iso_ago(7_192),
     "last_result": "succeeded", "last_error": None, "last_missed": None},
    {"kind": "files", "cron": "0 3 * * *", "what": "back up every fileset", "paused": False,
     "next_run": _iso_in(82_789), "last_run": _iso_ago(3_540), "last_result": "succeeded",
     "last_error": None, "last_missed": _iso_ago(3_611)},
    {"kind": "cleanup", "cron": "0 4 * * sun", "what": "apply retention and prune",
     "paused": True, "next_run": None, "last_run": _iso_ago(90_000),
     "last_result": "succeeded", "last_error": None, "last_missed": None},
    {"kind": "verify", "cron": "0 */6 * * *", "what": "verify the repository",
     "paused": False, "next_run": _iso_in(7_189), "last_run": _iso_ago(3_600),
     "last_result": "failed", "last_error": "all: cancelled by request", "last_missed": None},
    {"kind": "replicate", "cron": "*/5 * * * *", "what": "copy to every replica",
     "paused": False, "next_run": _iso_in(289), "last_run": _iso_ago(310),
     "last_result": "failed",
     "last_error": "replica euw1: s3://acme-backup-euw1/web-1/ (euw1): put data/3f/3f9a0c: "
                   "access denied (AccessDenied); check the credentials and the bucket policy",
     "last_missed": None},
]


class CannedJobsEngine(CannedEngine):
    """The canned inventory engine with jobs and schedules; ``admin`` says who is looking."""

    def __init__(self, admin: bool = True) -> None:
        super().__init__()
        self.admin = admin

    @property
    def is_admin(self) -> bool:  # type: ignore[override]
        return self.admin

    def jobs(self, limit: int = 50) -> list[dict]:
        return [dict(j) for j in _canned_jobs()[:limit]]

    def schedules(self, now=None) -> list[dict]:
        return [dict(s) for s in CANNED_SCHEDULES]


@pytest.fixture
def daemon_holds_the_lock(monkeypatch):
    """The console finds a daemon (pid 4242) holding the scheduler lock."""
    monkeypatch.setattr(app_module.SchedulerLock, "holder", staticmethod(lambda _d: DAEMON_PID))


def canned_console(admin: bool = True) -> BackupConsole:
    return BackupConsole(CannedJobsEngine(admin), start="inventory", run_scheduler=False,
                         clock=lambda: NOW)


def _then(*keys: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)

    return run_before


def test_jobs_look(snap_compare, utc, daemon_holds_the_lock):
    """j: the daemon's two running jobs and the recent ones; the top one in full with its bar."""
    assert snap_compare(canned_console(), terminal_size=SIZE, run_before=_then("j"))


def test_schedule_look(snap_compare, utc, daemon_holds_the_lock):
    """s: each schedule; files under the cursor, its last run a missed one caught up."""
    assert snap_compare(canned_console(), terminal_size=SIZE, run_before=_then("s", "down"))


def test_schedule_read_only_look(snap_compare, utc):
    """s as a non-admin: run now and pause disabled, "read-only" in the sub-title; replicate
    under the cursor with its whole error."""
    assert snap_compare(canned_console(admin=False), terminal_size=SIZE,
                        run_before=_then("s", "down", "down", "down", "down"))


# --- following, cancelling and quitting (issue 12) ---------------------------------------


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """300,000 empty files in folders of a thousand, made once for this module: cheap to
    make, and a backup of them takes tens of seconds here (the console competing for the
    same two cores), long enough to see it running, cancel it or quit under it."""
    import shutil

    where = tmp_path_factory.mktemp("slow-tree")
    for d in range(300):
        folder = where / f"d{d:03d}"
        folder.mkdir()
        for i in range(1000):
            os.close(os.open(folder / f"f{i:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
    yield where
    shutil.rmtree(where, ignore_errors=True)



def hold_backups(engine) -> None:
    """Every backup run through ``engine`` (by the console or its scheduler) stays running,
    at its first event, until it is cancelled: a test that cancels, or quits under, a
    running backup must not race that backup's end (the slow tree alone got backed up
    in the few seconds such a test takes once the walk got faster)."""
    real = engine.backup

    def backup(kind, name, on_event=None, cancel=None, replicate=True):
        def held(event):
            if on_event is not None:
                on_event(event)
            while cancel is not None and not cancel.wait(0.05):
                pass

        return real(kind, name, held, cancel, replicate)

    engine.backup = backup

def cli_backup(sandbox, name: str) -> subprocess.Popen:
    """``backup-tui backup files NAME`` in a process of its own (not this console's)."""
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    return subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
         "backup", "files", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_the_cursor_follows_a_job_that_starts_or_fails(sandbox, slow_tree):
    (sandbox.src / "a.txt").write_text("a\n")
    sandbox.filesets |= {"big": [str(slow_tree)], "gone": [str(sandbox.root / "missing")]}
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")
    engine.backup("files", "src")  # two old jobs: the user can move off the top one
    app = BackupConsole(engine, start="inventory", run_scheduler=False)
    proc = None

    async def flow():
        nonlocal proc
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("j")
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            table = screen.table
            await until(pilot, lambda: len(table.jobs) == 2, 10, "the two old jobs")
            old = [j["id"] for j in engine.jobs()]
            await pilot.press("down")  # the user moves the cursor to the older job...
            assert table.selected["id"] == old[1]
            table.touched -= USER_QUIET  # ...long enough ago
            # A job starts in another process: the cursor goes to it, and c cannot cancel it.
            proc = cli_backup(sandbox, "big")
            running = await until(pilot, lambda: next(
                (j for j in table.jobs.values() if j["state"] == "running"), None),
                60, "the running job")
            await until(pilot, lambda: table.selected["id"] == running["id"], 5, "followed")
            assert binding_states(app)["cancel-job"] is True
            await pilot.press("c")
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmDialog)
            [why] = [n for n in notes(app, "warning") if n.startswith("Cannot cancel")]
            assert f"another process (pid {proc.pid}) runs it" in why
            # The user moves the cursor; a job fails right after: the cursor stays put.
            await pilot.press("down")
            mine = table.selected["id"]
            with pytest.raises(EngineError):
                engine.backup("files", "gone")
            await until(pilot, lambda: any(j["state"] == "failed"
                                            for j in table.jobs.values()), 10, "failure shown")
            assert table.selected["id"] == mine
            # Some seconds later another fails: now the cursor goes to it.
            table.touched -= USER_QUIET
            with pytest.raises(EngineError):
                engine.backup("files", "gone")
            newest_failed = engine.jobs()[0]["id"]
            await until(pilot, lambda: table.selected["id"] == newest_failed, 10,
                        "the newest failed job followed")
            assert "does not exist" in screen.detail.text
            assert proc.wait(120) == 0, proc.stderr.read().decode()

    try:
        asyncio.run(flow())
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [s.source for s in engine.snapshots()].count("big") == 1


def test_cancel_a_running_backup_after_confirming(sandbox, slow_tree):
    sandbox.filesets = {"src": [str(slow_tree)]}
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    hold_backups(engine)
    app = BackupConsole(engine, start="inventory", run_scheduler=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.screen.sources is not None, 10, "sources read")
            await pilot.press("b")  # one source: it starts at once
            await pilot.press("j")
            table = app.screen.query_one(JobTable)
            job = await until(pilot, lambda: next(
                (j for j in table.jobs.values() if j["state"] == "running"), None),
                30, "the running backup")
            assert table.selected["id"] == job["id"]
            assert binding_states(app)["cancel-job"] is True
            token = await until(pilot, lambda: app.job_tokens.token(job["id"]), 10, "token")
            # c asks; Esc keeps the job running.
            await pilot.press("c")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, ConfirmDialog)
            assert dialog.title_text == "Cancel backup files:src?"
            assert "No snapshot is made" in dialog.text and "consistent" in dialog.text
            assert dialog.focused.id == "confirm-no"  # the safe answer is the default
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, JobsScreen) and not token.cancelled
            await pilot.pause(0.6)
            assert table.jobs[job["id"]]["state"] == "running"
            # c again, and yes: the job ends interrupted, with no snapshot.
            await pilot.press("c")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: table.jobs[job["id"]]["state"] != "running", 60,
                        "the end of the job")
            assert table.jobs[job["id"]]["state"] == "interrupted", table.jobs[job["id"]]
            assert token.cancelled
            assert any(n.startswith("Cancelling backup files:src") for n in notes(app))
            assert table.jobs[job["id"]]["error"] == "cancelled by request"
            await until(pilot, lambda: binding_states(app)["cancel-job"] is False, 5,
                        "c disabled on an ended job")

    asyncio.run(flow())
    assert engine.snapshots() == []
    assert engine.jobs()[0]["state"] == "interrupted"


def test_quit_during_a_job_asks_no_keeps_it_yes_cancels_it(sandbox, slow_tree):
    sandbox.filesets = {"src": [str(slow_tree)]}
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    hold_backups(engine)
    app = BackupConsole(engine, start="inventory", run_scheduler=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.screen.sources is not None, 10, "sources read")
            await pilot.press("b")
            await until(pilot, app.job_tokens.running, 30, "the backup under way")
            await pilot.press("q")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, ConfirmDialog)
            assert dialog.text.startswith("This console runs the backup of fileset src. "
                                          "Quitting cancels it")
            assert "repository stays consistent" in dialog.text
            await pilot.press("escape")  # no: it keeps running
            await pilot.pause(0.5)
            assert app.is_running and not isinstance(app.screen, ConfirmDialog)
            [job] = engine.jobs()
            assert job["state"] == "running" and app.job_tokens.running()
            await pilot.press("q")
            await pilot.pause()
            await pilot.press("n")  # no, by its key
            await pilot.pause()
            assert app.is_running and app.job_tokens.running()
            await pilot.press("q")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running, 60, "quit")

    asyncio.run(flow())
    [job] = engine.jobs()
    assert (job["state"], job["error"]) == ("interrupted", "cancelled by request")
    assert engine.snapshots() == []


def test_quit_without_a_job_of_this_console_does_not_ask(sandbox):
    engine = sandbox.engine(init=True)
    app = BackupConsole(engine, start="inventory", run_scheduler=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert app.quit_question() is None
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, 10, "quit")

    asyncio.run(flow())


def test_b_during_a_running_job_refuses_before_the_picker(sandbox, slow_tree):
    sandbox.filesets["big"] = [str(slow_tree)]
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    hold_backups(engine)
    app = BackupConsole(engine, start="inventory", run_scheduler=False)

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.screen.sources is not None, 10, "sources read")
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, SourcePicker)
            await pilot.press("down", "enter")  # big
            await until(pilot, app.job_tokens.running, 30, "the backup under way")
            await pilot.press("b")
            await pilot.pause()
            assert not isinstance(app.screen, SourcePicker)
            assert "A backup is already running; wait for it to end." in notes(app, "warning")
            app.job_tokens.cancel_all()
            await until(pilot, lambda: not app.job_tokens.running(), 60, "cancelled")

    asyncio.run(flow())
    assert engine.snapshots() == []


# --- progress that can be trusted ------------------------------------------------------


def test_fileset_totals_are_known_or_unknown_never_what_is_done(tmp_path):
    from engine.events import CancelToken
    from engine.sources.fileset import FilesetConfig, _Totals

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"f{i}").write_bytes(b"x" * 1000)
    fileset = FilesetConfig(name="t", paths=(str(tree),))
    # The parent's figures are the estimate while the backup has not passed them.
    totals = _Totals({"stats": {"files": 2, "size": 1500}}, fileset, CancelToken())
    assert totals.get(1, 1000) == (2, 1500)
    # Passed: unknown (not 100%), and the grown tree is counted now.
    assert totals.get(2, 1600) == (0, 0)
    totals.wait(30)
    assert totals.get(2, 1600) == (3, 3000)
    assert totals.get(3, 3000) == (3, 3000)
    assert totals.get(4, 3100) == (0, 0)  # it grew again during the backup
    # No parent: unknown until the scan has counted the tree.
    fresh = _Totals(None, fileset, CancelToken())
    fresh.wait(30)
    assert fresh.get(0, 0) == (3, 3000)
    assert _Totals({"stats": {}}, fileset, CancelToken()).get(0, 0) == (0, 0)


def test_a_grown_fileset_never_reads_100_percent_before_the_end(sandbox):
    from backup_tui.widgets.job_panel import progress_fraction

    (sandbox.src / "small.txt").write_bytes(os.urandom(4096))
    engine = sandbox.engine(init=True)
    engine.backup("files", "src")  # the parent: 4 KiB
    for i in range(48):  # grown ten-thousandfold: progress every 0.1 s shows it
        (sandbox.src / f"new{i:02d}.bin").write_bytes(os.urandom(1 << 20))
    events = []
    engine.backup("files", "src", on_event=events.append)
    backing_up = [e for e in events if e.phase == "backup"]
    assert backing_up and events[-1].phase == "done" and events[-1].final
    for e in events[:-1]:  # the bytes figures never claim the end before it
        assert e.bytes_total == 0 or e.bytes_done < e.bytes_total or e.phase == "commit", e
        fraction = progress_fraction(e.phase, e.bytes_done, e.bytes_total, e.items_done,
                                     e.items_total)
        assert fraction is None or fraction < 1, e
    # Past the parent's 4 KiB and 1 file: unknown (an indeterminate bar), not the estimate.
    assert any(e.bytes_total == 0 for e in backing_up)
    assert not any(e.bytes_total == 4096 and (e.bytes_done > 4096 or e.items_done > 1)
                   for e in backing_up)
    done = events[-1]
    assert progress_fraction(done.phase, done.bytes_done, done.bytes_total, done.items_done,
                             done.items_total, running=False) == 1.0


def test_figures_of_a_running_job_never_read_100_percent():
    from backup_tui.widgets.job_panel import progress_line
    from engine.events import Event

    restoring = _job(phase="restore", bytes_done=100, bytes_total=100, updated=1002.0)
    assert Figures.of(restoring, 1003.0).percent == "99%"
    assert Figures.of(restoring | {"state": "succeeded", "ended": 1003.0}, 1003.0).percent \
        == "100%"
    unknown = _job(bytes_done=30 << 20, updated=1003.0)  # no total: bytes and rate
    figures = Figures.of(unknown, 1004.0)
    assert (figures.fraction, figures.eta) == (None, None)
    assert numbers_line(unknown, figures) == "30.0 MiB · 10.0 MiB/s"
    line = progress_line(Event("j", "backup", bytes_done=30 << 20, bytes_total=60 << 20,
                               time=1003.0), started=1000.0)
    assert line == "30.0 MiB of 60.0 MiB · 10.0 MiB/s · ETA 3.0 s"
    line = progress_line(Event("j", "backup", bytes_done=30 << 20, items_done=7,
                               time=1003.0), started=1000.0)
    assert line == "30.0 MiB · 7 files · 10.0 MiB/s"


def test_the_job_panel_bar_is_indeterminate_without_a_total():
    from textual.app import App

    from engine.events import Event

    class PanelApp(App):
        def compose(self):
            yield JobPanel()

    async def flow():
        app = PanelApp()
        async with app.run_test() as pilot:
            panel = app.query_one(JobPanel)
            panel.start("backup", "fileset src")
            panel.show_event(Event("j", "backup", bytes_done=10, bytes_total=20, time=1.0))
            await pilot.pause()
            assert panel.bar.percentage == 0.5
            panel.show_event(Event("j", "backup", bytes_done=30, time=2.0))  # passed: unknown
            await pilot.pause()
            assert panel.bar.total is None and "30 B" in panel.text
            panel.show_event(Event("j", "commit", bytes_done=40, bytes_total=40, time=3.0))
            await pilot.pause()
            assert panel.bar.percentage == 0.99
            panel.show_event(Event("j", "done", bytes_done=40, bytes_total=40, time=3.5,
                                   final=True))
            await pilot.pause()
            assert panel.bar.percentage == 1.0

    asyncio.run(flow())


def test_starting_a_job_does_not_change_the_panels_height():
    """Idle, running and done take the same lines: a key that starts a job moves nothing
    above the panel (the table keeps its size and is not re-rendered under the key)."""
    from textual.app import App
    from textual.widgets import DataTable

    from engine.events import Event

    class PanelApp(App):
        CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

        def compose(self):
            yield DataTable(id="above")
            yield JobPanel("No backup running.", "Press b to back up.")

    async def flow():
        app = PanelApp()
        async with app.run_test(size=(100, 30)) as pilot:
            panel, above = app.query_one(JobPanel), app.query_one("#above")
            await pilot.pause()
            assert "Press b to back up." in panel.text  # idle: the keys on the second line
            heights = [(panel.region.height, above.region.height)]
            panel.start("backup", "fileset src")
            panel.show_event(Event("j", "backup", bytes_done=10, bytes_total=20, time=1.0,
                                   message="/srv/data/" + "x" * 200))
            await pilot.pause()
            heights.append((panel.region.height, above.region.height))
            panel.show_event(Event("j", "done", bytes_done=20, bytes_total=20, time=2.0,
                                   final=True))
            await pilot.pause()
            heights.append((panel.region.height, above.region.height))
            assert heights[0] == heights[1] == heights[2], heights

    asyncio.run(flow())


def test_quit_dialog_look(snap_compare, utc):
    """q while this console runs a backup: what quitting does to it; "no" has the focus."""

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        pilot.app.job_tokens.seen(Event("backup-20240605T035929-a1b2c3", "backup"),
                                  CancelToken(), "the backup of fileset app-data")
        await pilot.press("q")
        await settle(pilot.app, pilot)

    assert snap_compare(canned_console(), terminal_size=(80, 24), run_before=run_before)


def test_cancel_dialog_look(snap_compare, utc):
    """c on this console's running job: the confirmation at 80x24."""
    app = canned_console()
    running = _canned_jobs()[0]["id"]

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot.app, pilot)
        pilot.app.job_tokens.seen(Event(running, "backup"), CancelToken(),
                                  "the backup of fileset app-data")
        await pilot.press("j")
        await settle(pilot.app, pilot)
        await pilot.press("c")
        await settle(pilot.app, pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_the_palette_offers_to_cancel_each_running_job(utc, daemon_holds_the_lock):
    app = canned_console()

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("j")
            await settle(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"cancel job")
            await pilot.pause(0.5)
            offered = [str(o.prompt).splitlines()[0]
                       for o in app.screen.query_one(CommandList).options]
            assert offered == ["Cancel job: backup files:app-data",
                               "Cancel job: backup db:shop"], offered
            await pilot.press("down", "enter")  # the second: not the one under the cursor
            await settle(app, pilot)
            # The daemon runs it: the console says why it cannot cancel it, and asks nothing.
            assert isinstance(app.screen, JobsScreen)
            [why] = [n for n in notes(app, "warning") if n.startswith("Cannot cancel")]
            assert why.startswith("Cannot cancel backup db:shop: the daemon (pid "
                                  f"{DAEMON_PID}) runs it")

    asyncio.run(flow())


def test_cancel_a_job_of_the_consoles_own_scheduler(sandbox, slow_tree):
    """c on a job this console's scheduler runs: confirmed, Scheduler.cancel stops it."""
    sandbox.filesets = {"src": [str(slow_tree)]}
    sandbox.extra = schedule_toml(files="0 3 * * *")
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    hold_backups(engine)
    app = BackupConsole(engine, start="inventory", run_scheduler=True)
    cancelled = []

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.scheduler_host.mode == OWN, 30, "own scheduler")
            scheduler = app.scheduler_host.scheduler
            asked = scheduler.cancel
            scheduler.cancel = lambda job_id, job=None: cancelled.append(job_id) or asked(
                job_id, job)
            engine.request_run("files")  # the scheduler takes it within a second
            await pilot.press("j")
            table = app.screen.query_one(JobTable)
            job = await until(pilot, lambda: next(
                (j for j in table.jobs.values() if j["state"] == "running"), None),
                30, "the scheduled backup running")
            assert job["pid"] == os.getpid() and app.job_tokens.token(job["id"]) is None
            await until(pilot, lambda: table.selected["id"] == job["id"], 5, "followed")
            await pilot.press("c")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmDialog)
            assert app.screen.title_text == "Cancel backup files:src?"
            await pilot.press("escape")  # no: it keeps running
            await pilot.pause(0.6)
            assert not cancelled and table.jobs[job["id"]]["state"] == "running"
            await pilot.press("c")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: table.jobs[job["id"]]["state"] != "running", 60,
                        "the end of the job")
            assert cancelled == [job["id"]]
            assert (table.jobs[job["id"]]["state"], table.jobs[job["id"]]["error"]) == (
                "interrupted", "cancelled by request")
            assert not any(n.startswith("Cannot cancel") for n in notes(app, "warning"))
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, 30, "quit")

    asyncio.run(flow())
    assert engine.snapshots() == []
    assert engine.catalog.schedule_states()["files"]["last_result"] == "failed"
