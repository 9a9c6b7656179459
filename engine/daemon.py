"""The scheduler: runs the ``[schedule]`` in the background, in the daemon or the console.

One scheduler per state directory: ``state/scheduler.lock`` is held with flock
for the scheduler's life, and holds its pid, so a second one refuses to start
and names the first. Each schedule kind is one APScheduler cron job with
``max_instances=1`` and ``coalesce=True``; a per-source lock keeps runs of the
same source from overlapping even when "run now" meets a scheduled run. A run
missed while nothing was running is run once at start, and the log says so.
"Run now" requests arrive through the catalog (another process, the console
attached as a viewer, may have made them), polled every second.

Stopping (SIGTERM/SIGINT in the daemon): no new jobs are taken; running ones
get ``grace_seconds`` to end, then their cancel tokens are set and they end as
interrupted. ``Scheduler.cancel(job_id)`` sets the token of one running job (the
catalog's job id, as the console's jobs screen knows it): the token is kept per
schedule target, and the job ids a target's run makes are learned from its events
(or, before its first event, from its catalog row: this process's running job of
that target). Logs are logfmt lines on stderr (journald-friendly).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from engine.errors import EngineError, LockedError
from engine.events import CancelToken
from engine.jobs import run_niced
from engine.ops import walship
from engine.schedule import make_trigger, missed_since
from engine.sources import registry

log = logging.getLogger("backup_tui.scheduler")


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        msg = record.getMessage().replace('"', "'")
        parts = [f"time={ts}", f"level={record.levelname.lower()}", f'msg="{msg}"']
        for key, value in getattr(record, "fields", {}).items():
            text = str(value).replace('"', "'")
            parts.append(f'{key}="{text}"' if (" " in text or not text) else f"{key}={text}")
        return " ".join(parts)


def setup_logging(stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("backup_tui")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _info(msg: str, **fields) -> None:
    log.info(msg, extra={"fields": fields})


def _warn(msg: str, **fields) -> None:
    log.warning(msg, extra={"fields": fields})


class SchedulerLock:
    """flock on state/scheduler.lock; the file holds the holder's pid."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "scheduler.lock")
        self.fd: int | None = None

    def acquire(self) -> SchedulerLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EngineError(f"cannot open {self.path}: {e.strerror} (is the state "
                              "directory writable?)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(f"a scheduler is already running for state directory "
                              f"{os.path.dirname(self.path)} (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def holder(state_dir) -> int | None:
        """The pid of the running scheduler of this state directory, or None."""
        path = os.path.join(state_dir, "scheduler.lock")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None


class Scheduler:
    def __init__(self, engine, poll_seconds: float = 1.0, job_nice: int = 0):
        """``job_nice``: its jobs run this many nice steps lower (a console running the
        schedule keeps answering keys; ``engine.jobs.run_niced``)."""
        self.engine = engine
        self.job_nice = job_nice
        self.config = engine.config
        self.tz = ZoneInfo(self.config.schedule.timezone)
        self.poll = poll_seconds
        self.lock = SchedulerLock(self.config.state_dir)
        self._aps = None
        self._source_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._running: dict[str, CancelToken] = {}  # target -> the token of its run
        self._job_keys: dict[str, str] = {}  # catalog job id -> the target running it
        self._since: dict[str, float] = {}  # target -> when its run began (time.time)
        self._running_guard = threading.Lock()
        self._stopping = threading.Event()
        self._idle = threading.Condition()

    # --------------------------------------------------------------- life
    def start(self) -> Scheduler:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.lock.acquire()
        cat = self.engine.catalog  # the state dir must be usable before anything runs
        gone = cat.mark_interrupted()
        if gone:
            _warn("jobs left running by a process that ended were marked interrupted",
                  count=gone)
        self._aps = BackgroundScheduler(timezone=self.tz, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        for kind in self.config.schedule.kinds:
            trig = make_trigger(self.config.schedule.cron(kind), self.tz)
            if trig is None:
                continue
            self._aps.add_job(self.run_kind, trig, args=[kind, "schedule"], id=kind,
                              name=kind)
        from apscheduler.triggers.interval import IntervalTrigger

        self._aps.add_job(self._take_requests, IntervalTrigger(seconds=self.poll),
                          id="_requests", max_instances=1)
        ship_every = walship.interval(self.engine)
        if ship_every:  # new WAL to every replica, so a region's recovery point lags little
            self._aps.add_job(self._ship_wal, IntervalTrigger(seconds=ship_every),
                              id="_wal_ship", max_instances=1, coalesce=True)
        self._aps.start()
        _info("scheduler started", pid=os.getpid(), state=str(self.config.state_dir))
        for job in self._aps.get_jobs():
            if job.id == "_wal_ship":
                _info("wal shipping", every_seconds=ship_every,
                      replicas=",".join(r.name for r in self.config.replicas))
            elif job.id != "_requests":
                _info("schedule", kind=job.id, cron=self.config.schedule.cron(job.id),
                      next_run=job.next_run_time.isoformat() if job.next_run_time else "none")
        self._catch_up(cat)
        return self

    def _catch_up(self, cat) -> None:
        now = datetime.now(self.tz)
        states = cat.schedule_states()
        for kind in self.config.schedule.kinds:
            st = states.get(kind, {})
            last = st.get("last_run")
            if last is None:
                continue
            last_dt = datetime.fromtimestamp(last, self.tz)
            if last_dt > now:
                _warn("last run is in the future: the clock went back; nothing is caught up",
                      kind=kind, last_run=last_dt.isoformat())
                continue
            missed = missed_since(self.config.schedule.cron(kind), self.tz, last_dt, now)
            if missed is not None:
                _info("missed run while down; running it once now", kind=kind,
                      missed=missed.isoformat())
                threading.Thread(target=self.run_kind, args=(kind, "missed", missed),
                                 daemon=True, name=f"catchup-{kind}").start()

    def stop(self, grace: float | None = None) -> None:
        """Take no new jobs; let running ones end within grace, then interrupt them."""
        grace = float(self.config.schedule.grace_seconds) if grace is None else grace
        self._stopping.set()
        if self._aps is not None:
            self._aps.shutdown(wait=False)
        with self._running_guard:
            running = list(self._running)
        if running:
            _info("stopping: waiting for running jobs", jobs=",".join(running),
                  grace_seconds=grace)
        deadline = time.monotonic() + grace
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(timeout=0.2)
        with self._running_guard:
            tokens = list(self._running.values())
        if tokens:
            _warn("grace period over: interrupting running jobs", count=len(tokens))
            for t in tokens:
                t.cancel()
            with self._idle:
                end = time.monotonic() + 60
                while self._running and time.monotonic() < end:
                    self._idle.wait(timeout=0.2)
        self.lock.release()
        _info("scheduler stopped")

    # --------------------------------------------------------------- runs
    def _source_lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._source_locks.setdefault(key, threading.Lock())

    def _ship_wal(self) -> None:
        """WAL shipping (engine/ops/walship.py): no job row; a failure is logged and kept
        in the catalog, where status and health show it."""
        if self._stopping.is_set():
            return
        try:
            for r in walship.ship(self.engine):
                if not r["ok"]:
                    _warn("wal shipping failed", replica=r["replica"], error=r["error"])
        except EngineError as e:  # the local repository busy or unreadable: next round
            _warn("wal shipping failed", error=e)
        except Exception as e:  # noqa: BLE001 - never stop the daemon
            log.exception("wal shipping crashed", extra={"fields": {"error": str(e)}})

    def _take_requests(self) -> None:
        if self._stopping.is_set():
            return
        try:
            requests = self.engine.catalog.take_requests()
        except Exception as e:  # noqa: BLE001 - the poller must survive a locked catalog
            _warn("cannot read run-now requests", error=e)
            return
        for req in requests:
            _info("run now requested", kind=req["kind"], user=req["user"])
            threading.Thread(target=self.run_kind, args=(req["kind"], "run now"),
                             daemon=True, name=f"runnow-{req['kind']}").start()

    def _targets(self, kind: str) -> list[tuple[str, object]]:
        """(job target, run with a cancel token and an event callback) of each job a
        schedule kind runs."""
        e = self.engine
        sources = registry.for_schedule(self.config, kind)
        if sources:
            return [(s.info().target,
                     lambda c, ev, s=s: e.backup(s.kind, s.name, on_event=ev, cancel=c))
                    for s in sources]
        operations = {
            "verify": lambda c, ev: e.verify(on_event=ev, cancel=c),
            "replicate": lambda c, ev: e.replicate(on_event=ev, cancel=c),
            "cleanup": lambda c, ev: e.cleanup(on_event=ev, cancel=c),
        }
        if kind == "replicate" and not self.config.replicas:
            return []
        if kind == "drill":  # one job per source whose kind has drills (engine/ops/drill.py)
            from engine.ops.drill import drillable

            return [(f"drill {s.info().target}", lambda c, ev, s=s: self._drill(s, c, ev))
                    for s in registry.sources(self.config) if drillable(s)]
        return [(kind, operations[kind])] if kind in operations else []

    def run_kind(self, kind: str, reason: str = "schedule", missed: datetime | None = None) -> str:
        """Run every target of a schedule kind; returns 'succeeded' or 'failed'."""
        if self._stopping.is_set():
            return "skipped"
        cat = self.engine.catalog
        if reason == "schedule" and cat.schedule_states().get(kind, {}).get("paused"):
            _info("paused: skipped", kind=kind)
            return "skipped"
        targets = self._targets(kind)
        if not targets:
            _info("nothing to run", kind=kind)
            cat.schedule_ran(kind, "nothing to run")
            return "succeeded"
        errors = []
        for key, fn in targets:
            if self._stopping.is_set():
                errors.append(f"{key}: not started (stopping)")
                break
            start = time.monotonic()
            try:
                result = self.run_target(key, fn, wait=reason != "schedule", kind=kind,
                                         reason=reason)
                if result is _SKIPPED:  # the running one does the same work
                    continue
                problems = self._problems(result)
                if problems:
                    errors.append(f"{key}: {problems}")
                    _warn("job ended with problems", kind=kind, target=key, error=problems,
                          seconds=round(time.monotonic() - start, 2))
                else:
                    _info("job succeeded", kind=kind, target=key,
                          seconds=round(time.monotonic() - start, 2))
            except _NotStarted:
                errors.append(f"{key}: not started (stopping)")
                break
            except EngineError as e:
                errors.append(f"{key}: {e}")
                _warn("job failed", kind=kind, target=key, error=e)
            except Exception as e:  # noqa: BLE001 - a bug in one job must not stop the daemon
                errors.append(f"{key}: {type(e).__name__}: {e}")
                log.exception("job crashed", extra={"fields": {"kind": kind, "target": key}})
        outcome = "failed" if errors else "succeeded"
        cat.schedule_ran(kind, outcome, "; ".join(errors),
                         missed.timestamp() if missed else None)
        return outcome

    def run_target(self, key: str, fn, wait: bool = True, kind: str = "", reason: str = "",
                   token: CancelToken | None = None, on_event=None, on_start=None):
        """Run ``fn(token, on_event)`` as the job of target ``key`` (a source's target, or
        an operation): never beside another run of the same key (the per-key lock; with
        ``wait`` it queues behind it, else it returns ``_SKIPPED``), cancellable through
        ``cancel``, and waited for (then interrupted) by ``stop``. ``on_start()`` is called
        once the lock is held. The schedule and the HTTP API (engine/api/jobs.py) both run
        their work here: one queue, one set of locks. Raises what ``fn`` raises, and
        ``_NotStarted`` when the scheduler stops before the turn comes."""
        lock = self._source_lock(key)
        if not lock.acquire(blocking=False):
            if not wait:
                _info("already running: skipped", kind=kind, target=key)
                return _SKIPPED
            _info("queued behind the running job of the same source", kind=kind,
                  target=key, reason=reason)
            while not lock.acquire(timeout=0.5):  # a run-now or an API job waits its turn
                if self._stopping.is_set() or (token is not None and token.cancelled):
                    raise _NotStarted(key)
        if self._stopping.is_set():
            lock.release()
            raise _NotStarted(key)
        token = token or CancelToken()
        with self._running_guard:
            self._running[key] = token
            self._since[key] = time.time()
        learn = self._learner(key)

        def events(event) -> None:
            learn(event)
            if on_event is not None:
                on_event(event)

        _info("job started", kind=kind, target=key, reason=reason)
        try:
            if on_start is not None:
                on_start()
            return run_niced(lambda: fn(token, events), self.job_nice)
        finally:
            lock.release()
            with self._running_guard:
                self._running.pop(key, None)
                self._since.pop(key, None)
                for job_id in [j for j, k in self._job_keys.items() if k == key]:
                    del self._job_keys[job_id]
            with self._idle:
                self._idle.notify_all()

    def _learner(self, key: str):
        """The event callback of a run of ``key``: it learns the catalog job ids the run
        makes (a backup, then its replication), so that ``cancel`` finds them."""

        def learn(event) -> None:
            if event.job_id and event.job_id not in self._job_keys:
                with self._running_guard:
                    if key in self._running:
                        self._job_keys[event.job_id] = key

        return learn

    def token(self, job_id: str, job: dict | None = None) -> CancelToken | None:
        """The cancel token of the running job ``job_id`` (a catalog job id) when this
        scheduler runs it, else None. ``job``: its catalog row when the caller has it
        (else it is read, unless an event of the job was seen)."""
        with self._running_guard:
            key = self._job_keys.get(job_id)
            if key is not None:
                return self._running.get(key)
        if job is None:  # not seen in an event yet: its catalog row names its target
            try:
                job = self.engine.catalog.job(job_id)
            except EngineError:
                return None
        if not job or job.get("state") != "running" or job.get("pid") != os.getpid():
            return None
        with self._running_guard:
            for key in (job["target"], f"{job['kind']} {job['target']}", job["kind"]):
                # a job of this run, not of an earlier run of the same target
                if key in self._running and (job.get("started") or 0) >= self._since[key]:
                    self._job_keys[job_id] = key
                    return self._running[key]
        return None

    def cancel(self, job_id: str, job: dict | None = None) -> bool:
        """Cancel the running job ``job_id`` (a catalog job id) when this scheduler runs it:
        it stops at its next check and ends as interrupted; the run of its schedule kind is
        recorded as failed, and the next scheduled run happens as usual. False when this
        scheduler does not run that job (any more)."""
        token = self.token(job_id, job)
        if token is None:
            return False
        token.cancel()
        _info("job cancel requested", job=job_id)
        return True

    def cancel_handle(self, job: dict) -> CancelToken | None:
        """A token whose ``cancel()`` is ``cancel(job id)`` for the running job ``job`` (a
        catalog row, as the console's jobs screen has it), or None when this scheduler does
        not run it. No catalog read: the console calls it from its UI thread."""
        if self.token(job["id"], job) is None:
            return None
        return _SchedulerCancel(self, job)

    def _drill(self, source, cancel: CancelToken, on_event=None):
        """A scheduled drill: a failed one is a failed job of the schedule."""
        from engine.events import ignore

        result = self.engine.drill(source.kind, source.name, on_event=on_event or ignore,
                                   cancel=cancel)
        if not result.ok:
            raise EngineError(f"drill failed: {result.error}")
        return result

    @staticmethod
    def _problems(result) -> str:
        """Problems a result carries without raising (incomplete backup, replica failed)."""
        items = result if isinstance(result, list) else [result]
        out = []
        for r in items:
            if getattr(r, "errors", None):
                out.append(f"incomplete: {len(r.errors)} error(s)")
            for rep in getattr(r, "replication", []) or []:
                if not rep.ok:
                    out.append(f"replica {rep.replica}: {rep.error}")
            if hasattr(r, "replica") and hasattr(r, "ok") and not r.ok:
                out.append(f"replica {r.replica}: {r.error}")
            if hasattr(r, "problems") and getattr(r, "problems", None):
                out.append(f"{len(r.problems)} problem(s)")
        return "; ".join(out)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def running(self) -> list[str]:
        """Targets of the jobs this scheduler is running now."""
        with self._running_guard:
            return list(self._running)

    def next_run_times(self) -> dict[str, datetime | None]:
        if self._aps is None:
            return {}
        return {j.id: j.next_run_time for j in self._aps.get_jobs() if j.id != "_requests"}


_SKIPPED = object()  # run_target without wait: the key was running already


class _NotStarted(EngineError):
    """run_target: the scheduler stopped (or the caller cancelled) before the turn came."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: not started (stopping)")


class _SchedulerCancel(CancelToken):
    """``Scheduler.cancel_handle``: cancelling it cancels one job of the scheduler."""

    def __init__(self, scheduler: Scheduler, job: dict) -> None:
        super().__init__()
        self._scheduler, self._job = scheduler, job

    def cancel(self) -> None:
        super().cancel()
        self._scheduler.cancel(self._job["id"], self._job)


def run_daemon(engine) -> int:
    """backup-tui --run-scheduler: run until SIGTERM or SIGINT; exit 0 after a clean stop."""
    setup_logging()
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        _info("signal received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sched = Scheduler(engine).start()
    servers = []
    try:
        if engine.config.api.listen:  # the HTTP API (engine/api/), in this process
            from engine.api.server import serve_api

            servers.append(serve_api(engine, sched))
        if engine.config.metrics.listen:
            from engine.api.server import serve_metrics

            servers.append(serve_metrics(engine, engine.config.metrics.listen))
        while not stop.wait(1.0):
            pass
    finally:
        sched.stop()  # running jobs (API ones too) get their grace first
        for server in servers:
            server.stop()
    return 0
