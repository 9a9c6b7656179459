"""The HTTP API's jobs: one record per request that started work, run by the daemon's
scheduler (``Scheduler.run_target``), so an API backup queues behind the scheduled backup
of the same source, takes the same locks and is waited for (then interrupted) when the
daemon stops.

A record (``api_jobs`` in the catalog) is what a client polls: state ``queued`` until its
turn comes, ``running``, then ``succeeded``, ``failed`` or ``cancelled``; the latest
progress event; the error; a result; the catalog job ids it ran (a backup, its
replication). It outlives the daemon: one restarted finds the records a stopped daemon
left queued or running and ends them ``failed`` ("interrupted"). Live progress goes to
subscribers (the events route) through ``subscribe``; nothing a client does (or fails to
do: a disconnect) cancels a job, only ``cancel``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine import security
from engine.errors import Cancelled, EngineError
from engine.events import CancelToken, Event

log = logging.getLogger("backup_tui.api")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
INTERRUPTED = "interrupted: the daemon stopped before the job ended"
SAVE_EVERY = 1.0  # seconds between two progress writes of one job to the catalog

# A job's work: given run(key, fn) -> fn's result (fn(token, on_event) run by the
# scheduler as target ``key``), return the job's result (JSON-able).
Work = Callable[[Callable[..., Any]], dict | None]
Listener = Callable[[str, dict], None]  # (event name, the job's JSON)


def new_id() -> str:
    return f"api-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def progress_of(event: Event | None) -> dict:
    if event is None:
        return {"phase": "", "bytes_done": 0, "bytes_total": 0, "items_done": 0,
                "items_total": 0, "fraction": None, "message": ""}
    return {"phase": event.phase, "bytes_done": event.bytes_done,
            "bytes_total": event.bytes_total, "items_done": event.items_done,
            "items_total": event.items_total, "fraction": event.fraction,
            "message": event.message}


def public(row: dict) -> dict:
    """A catalog row as the API shows a job."""
    return {"job_id": row["id"], "kind": row["kind"], "source": row.get("source"),
            "state": row["state"], "progress": dict(row.get("progress") or progress_of(None)),
            "error": row.get("error") or None, "result": row.get("result"),
            "requested_by": row.get("requested_by") or "",
            "requested": _iso(row.get("requested")), "started": _iso(row.get("started")),
            "ended": _iso(row.get("ended")), "jobs": list(row.get("jobs") or [])}


_CATALOG_STATES = {"running": "running", "succeeded": "succeeded"}  # the rest: failed


def catalog_public(job: dict) -> dict:
    """A catalog job (the schedule's, the console's, the CLI's) in the API's job shape."""
    state = _CATALOG_STATES.get(job["state"], "failed")
    if job["state"] == "interrupted" and "cancel" in (job.get("error") or ""):
        state = "cancelled"  # on request; else the process running it ended
    progress = {k: job.get(k) or 0 for k in ("bytes_done", "bytes_total", "items_done",
                                             "items_total")}
    total, done = progress["bytes_total"] or progress["items_total"], (
        progress["bytes_done"] if progress["bytes_total"] else progress["items_done"])
    progress.update(phase=job.get("phase") or "", message=job.get("message") or "",
                    fraction=min(1.0, done / total) if total else None)
    error = job.get("error") or None
    if job["state"] == "incomplete" and not error:
        error = "incomplete"
    return {"job_id": job["id"], "kind": job["kind"], "source": job.get("target"),
            "state": state, "progress": progress, "error": error,
            "result": None, "requested_by": "", "requested": _iso(job.get("started")),
            "started": _iso(job.get("started")), "ended": _iso(job.get("ended")),
            "jobs": [job["id"]]}


@dataclass
class _Live:
    row: dict
    token: CancelToken = field(default_factory=CancelToken)
    listeners: list[Listener] = field(default_factory=list)
    saved: float = 0.0


class ApiJobs:
    """The daemon's API jobs (one instance per daemon)."""

    def __init__(self, engine, scheduler) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self._live: dict[str, _Live] = {}
        self._guard = threading.Lock()
        ended = engine.catalog.end_orphan_api_jobs(INTERRUPTED)
        if ended:
            log.warning("API jobs left queued or running by a daemon that stopped were "
                        "marked failed", extra={"fields": {"count": ended}})

    # ------------------------------------------------------------- starting
    def start(self, kind: str, source: str | None, work: Work, requested_by: str,
              actor: str) -> dict:
        """Record the job as queued and run ``work`` in a thread of its own; returns the
        job's JSON at once (the 202 body)."""
        row = {"id": new_id(), "kind": kind, "source": source, "state": "queued",
               "requested": time.time(), "started": None, "ended": None,
               "progress": progress_of(None), "error": None, "result": None,
               "requested_by": requested_by, "jobs": [], "pid": os.getpid()}
        self.engine.catalog.save_api_job(row)
        live = _Live(row)
        with self._guard:
            self._live[row["id"]] = live
        threading.Thread(target=self._run, args=(live, work, actor), daemon=True,
                         name=f"api-{kind}").start()
        return public(row)

    def _run(self, live: _Live, work: Work, actor: str) -> None:
        row = live.row

        def started() -> None:
            if row["state"] == "queued":
                row.update(state="running", started=time.time())
                self._changed(live, "progress", save=True)

        def on_event(event: Event) -> None:
            if event.job_id and event.job_id not in row["jobs"]:
                row["jobs"].append(event.job_id)
            row["progress"] = progress_of(event)
            self._changed(live, "progress", save=event.final)

        def run(key: str, fn: Callable[[CancelToken, Any], Any]) -> Any:
            live.token.check()
            return self.scheduler.run_target(key, fn, wait=True, kind=row["kind"],
                                             reason="api", token=live.token,
                                             on_event=on_event, on_start=started)

        try:
            with security.acting_as(actor):
                result = work(run)
            state, error = "succeeded", None
            if isinstance(result, dict) and result.pop("_failed", None):
                state, error = "failed", result.pop("_error", "failed")
        except Cancelled as e:
            state, error, result = "cancelled", str(e) or "cancelled by request", None
        except EngineError as e:
            if live.token.cancelled and not self.scheduler.stopping:
                state, error = "cancelled", "cancelled by request"
            elif self.scheduler.stopping:
                state, error = "failed", INTERRUPTED
            else:
                state, error = "failed", str(e)
            result = None
        except Exception as e:  # noqa: BLE001 - a bug fails the job, never the daemon
            log.exception("API job crashed", extra={"fields": {"job": row["id"]}})
            state, error, result = "failed", f"{type(e).__name__}: {e}", None
        if state == "cancelled" and self.scheduler.stopping:
            state, error = "failed", INTERRUPTED
        row.update(state=state, error=error, result=result, ended=time.time())
        row["started"] = row["started"] or row["ended"]
        self._changed(live, "end", save=True)
        with self._guard:
            self._live.pop(row["id"], None)

    def _changed(self, live: _Live, name: str, save: bool) -> None:
        now = time.monotonic()
        if save or now - live.saved >= SAVE_EVERY:
            live.saved = now
            try:
                self.engine.catalog.save_api_job(live.row)
            except EngineError as e:  # a full state dir: the job goes on, the record lags
                log.warning("cannot record API job %s: %s", live.row["id"], e)
        body = public(live.row)
        for listener in list(live.listeners):
            try:
                listener(name, body)
            except Exception:  # noqa: BLE001 - a gone subscriber must not hurt the job
                log.debug("API job listener failed", exc_info=True)

    # --------------------------------------------------------------- reading
    def get(self, job_id: str) -> dict | None:
        with self._guard:
            live = self._live.get(job_id)
        if live is not None:
            return public(live.row)
        row = self.engine.catalog.api_job(job_id)
        if row is not None:
            return public(row)
        job = self.engine.catalog.job(job_id)  # a scheduled, console or CLI job
        return catalog_public(job) if job else None

    def list(self, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        with self._guard:
            live = {k: public(v.row) for k, v in self._live.items()}
        rows, total = self.engine.catalog.api_jobs(state, limit, offset)
        return [live.get(r["id"]) or public(r) for r in rows], total

    def subscribe(self, job_id: str, listener: Listener) -> dict | None:
        """Call ``listener(name, job)`` on each change of a running job until it ends;
        returns the job now (None when unknown). A job not running here gets no calls."""
        with self._guard:
            live = self._live.get(job_id)
            if live is not None:
                live.listeners.append(listener)
                return public(live.row)
        return self.get(job_id)

    def unsubscribe(self, job_id: str, listener: Listener) -> None:
        with self._guard:
            live = self._live.get(job_id)
        if live is not None and listener in live.listeners:
            live.listeners.remove(listener)

    # ------------------------------------------------------------- cancelling
    def cancel(self, job_id: str) -> dict | None:
        """Ask a job to stop: an API job of this daemon, or a scheduled job (a catalog job
        id) this daemon runs. Returns ``{"job_id", "state"}``; None when unknown; raises
        ``AlreadyEnded`` for a job that ended."""
        with self._guard:
            live = self._live.get(job_id)
        if live is not None:
            live.token.cancel()
            log.info("API job cancel requested", extra={"fields": {"job": job_id}})
            return {"job_id": job_id, "state": live.row["state"]}
        row = self.engine.catalog.api_job(job_id)
        if row is not None:
            raise AlreadyEnded(f"job {job_id} already ended ({row['state']})")
        job = self.engine.catalog.job(job_id)
        if job is None:
            return None
        if job.get("state") != "running":
            raise AlreadyEnded(f"job {job_id} already ended ({job.get('state')})")
        if not self.scheduler.cancel(job_id, job):
            raise AlreadyEnded(f"job {job_id} is not run by this daemon (pid {job.get('pid')})"
                               "; cancel it where it runs")
        return {"job_id": job_id, "state": "running"}


class AlreadyEnded(EngineError):
    """Cancel of a job that is not running (here)."""
