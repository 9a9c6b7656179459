"""The daemon's HTTP API (FastAPI): the routes under ``/api/v1/backup/``, the key check
and its roles, the audit line of every request that changes anything, and the old
``/health`` and ``/metrics``.

Each route is a few lines over the Engine facade, like a CLI command: the engine checks
and does the work; this module only maps HTTP to it. Work that takes time runs as an
API job (engine/api/jobs.py) on the daemon's scheduler and answers 202 with the job;
what is quick (lists, plans, status) answers at once, in FastAPI's thread pool, never on
the event loop. Errors are ``{"detail": "..."}``: NotFound 404, UsageError 400,
LockedError 409, NotAdmin 403, any other EngineError 500 with its message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from engine import security
from engine.api import models
from engine.api.jobs import AlreadyEnded, ApiJobs
from engine.api.keys import ROLES, ApiKey, KeyStore
from engine.errors import EngineError, LockedError, NotFound, UsageError
from engine.security import NotAdmin
from engine.sources import registry

log = logging.getLogger("backup_tui.api")

PREFIX = "/api/v1/backup"
KEEPALIVE = 15.0  # seconds between two comment lines of an idle event stream
FAIL_WINDOW = 600.0  # seconds over which failed authentications of an address count
FAIL_FREE = 5  # failures answered at once; then each is delayed
FAIL_BLOCK = 20  # failures after which the address gets 429 for the rest of the window
FAIL_DELAY_CAP = 5.0

_MUTATING = ("POST", "DELETE", "PUT", "PATCH")


# ------------------------------------------------------------------ errors
def _status_of(e: EngineError) -> int:
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, NotAdmin):
        return 403
    if isinstance(e, AlreadyEnded | LockedError):
        return 409
    if isinstance(e, UsageError):
        return 400
    return 500


def _engine_error(_request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, EngineError)
    return JSONResponse({"detail": str(e)}, status_code=_status_of(e))


# ------------------------------------------------------------------- keys
class Throttle:
    """Failed authentications per client address: the first ``FAIL_FREE`` are answered
    at once, the next ones after a doubling delay, and past ``FAIL_BLOCK`` the address
    gets 429 until its oldest failure leaves the window. A success does not clear it."""

    def __init__(self) -> None:
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, address: str, fail: bool = False) -> deque[float]:
        """The address's failures in the window (with one more now, if ``fail``); an
        address with none is forgotten, so the table does not grow with every client."""
        fails = self._fails.pop(address, None) or deque()
        now = time.monotonic()
        while fails and now - fails[0] > FAIL_WINDOW:
            fails.popleft()
        if fail:
            fails.append(now)
        if fails:
            self._fails[address] = fails
        return fails

    def blocked_for(self, address: str) -> int:
        fails = self._recent(address)
        if len(fails) < FAIL_BLOCK:
            return 0
        return max(1, int(FAIL_WINDOW - (time.monotonic() - fails[0])) + 1)

    def failed(self, address: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        fails = self._recent(address, fail=True)
        over = len(fails) - FAIL_FREE
        return 0.0 if over <= 0 else min(FAIL_DELAY_CAP, 0.5 * 2 ** (over - 1))


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's name and role, and the client's address."""

    name: str
    role: str
    address: str

    @property
    def actor(self) -> str:
        return f"api:{self.name}@{self.address}"

    def require(self, role: str, why: str) -> None:
        if ROLES.index(self.role) < ROLES.index(role):
            raise HTTPException(403, f"{why} needs the {role} role; key {self.name!r} "
                                f"has {self.role}")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ---------------------------------------------------------------- the app
def create_app(engine, scheduler=None, jobs: ApiJobs | None = None, *,
               keys: KeyStore | None = None, open_health: bool = True,
               metrics_only: bool = False) -> FastAPI:
    """The ASGI app. ``open_health``: /health and /metrics need no key (a loopback
    listener). ``metrics_only``: just those two (the old ``[metrics] listen``)."""
    app = FastAPI(title="backup-tui", version="1",
                  summary="Backups, restores and point-in-time recovery of PostgreSQL "
                  "databases and directories, from the daemon",
                  openapi_url=None if metrics_only else "/api/v1/openapi.json",
                  docs_url=None, redoc_url=None)
    app.add_exception_handler(EngineError, _engine_error)
    throttle = Throttle()
    keys = keys or KeyStore(engine.config.state_dir)

    async def caller_of(request: Request) -> Caller:
        address = _address(request)
        wait = throttle.blocked_for(address)
        if wait:
            raise HTTPException(429, "too many failed authentications from this address; "
                                f"try again in {wait} s", headers={"Retry-After": str(wait)})
        header = request.headers.get("authorization", "")
        scheme, _, text = header.partition(" ")
        key: ApiKey | None = None
        if scheme.lower() == "bearer" and text.strip():
            key = await run_in_threadpool(keys.authenticate, text.strip())
        if key is None:
            delay = throttle.failed(address)
            if delay:
                await asyncio.sleep(delay)
            raise HTTPException(401, "a valid API key is needed: Authorization: Bearer <key> "
                                "(backup-tui api-key create NAME --role ROLE)" if not header
                                else "the API key is not valid (unknown, changed or revoked)",
                                headers={"WWW-Authenticate": "Bearer"})
        caller = Caller(key.name, key.role, address)
        request.state.actor = caller.actor
        return caller

    def role(needed: str, why: str):
        async def dependency(request: Request) -> Caller:
            caller = await caller_of(request)
            caller.require(needed, why)
            return caller
        return dependency

    viewer = Depends(role("viewer", "reading"))

    # ----------------------------------------------------- /health, /metrics
    async def health_access(request: Request) -> None:
        if not open_health:
            (await caller_of(request)).require("viewer", "reading")

    def health_answer() -> JSONResponse:
        verdict = engine.health()
        return JSONResponse(jsonable_encoder(verdict), status_code=200 if verdict["ok"] else 503)

    app.get("/health", include_in_schema=False,
            dependencies=[Depends(health_access)])(health_answer)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(health_access)])
    def metrics_plain() -> PlainTextResponse:
        from engine import metrics

        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    if metrics_only:
        return app
    assert scheduler is not None and jobs is not None
    api = APIRouter(prefix=PREFIX)

    def accepted(request: Request, job: dict, target: str) -> JSONResponse:
        request.state.audit = (target, f"accepted {job['job_id']}")
        return JSONResponse(job, status_code=202,
                            headers={"Location": f"{PREFIX}/jobs/{job['job_id']}"})

    def start(request: Request, caller: Caller, kind: str, source: str | None, work,
              target: str) -> JSONResponse:
        request.state.audit = (target, "")
        job = jobs.start(kind, source, work, caller.name, caller.actor)
        return accepted(request, job, target)

    # -------------------------------------------------------------- reads
    @api.get("/list", response_model=models.SnapshotList, dependencies=[viewer],
             summary="Snapshots, newest first")
    def list_snapshots(request: Request, source: str | None = None, kind: str | None = None,
                       since: str | None = Query(None, description="ISO 8601 time"),
                       replica: str | None = None, limit: int = Query(50, ge=1, le=500),
                       offset: int = Query(0, ge=0)) -> Any:
        if kind is not None:
            registry.kind(kind)  # an unknown kind is a 400 naming the known ones
        eng = engine.for_replica(replica) if replica else engine
        infos = sorted(eng.snapshots(source=source, kind=kind), key=lambda i: i.time,
                       reverse=True)
        if since:
            when = engine.parse_time(since)
            infos = [i for i in infos if i.time >= when]
        page = infos[offset:offset + limit]
        more = offset + limit < len(infos)
        nxt = None
        if more:
            query = dict(request.query_params, offset=str(offset + limit), limit=str(limit))
            nxt = f"{PREFIX}/list?" + urlencode(query)
        return {"items": [i.as_json() for i in page], "total": len(infos), "limit": limit,
                "offset": offset, "next": nxt}

    @api.get("/status", dependencies=[viewer], summary="What status --json prints")
    def status() -> Any:
        return jsonable_encoder(engine.status())

    @api.get("/health", response_model=models.Health, dependencies=[viewer],
             responses={503: {"model": models.Health, "description": "not healthy"}},
             summary="200 when healthy, 503 with the reasons when not")
    def health() -> JSONResponse:
        return health_answer()

    # ------------------------------------------------------------- backup
    @api.post("/trigger", status_code=202, response_model=models.Job,
              summary="Back up one source, or all")
    def trigger(request: Request, body: models.TriggerRequest,
                caller: Caller = Depends(role("operator", "a backup"))) -> Any:
        if body.source == "all":
            sources = registry.sources(engine.config)
            if not sources:
                raise UsageError("no sources are configured")
            return start(request, caller, "backup", "all",
                         lambda run: _backup_all(engine, sources, run), "all")
        src = _find_source(engine, body.source, body.kind)
        target = src.info().target
        return start(request, caller, "backup", src.name,
                     lambda run: _backup_one(engine, src, run), target)

    @api.post("/verify/{backup_id}", status_code=202, response_model=models.Job,
              summary="Verify one snapshot")
    def verify(request: Request, backup_id: str, body: models.VerifyRequest | None = None,
               caller: Caller = Depends(role("operator", "a verify"))) -> Any:
        read_data = bool(body and body.read_data)
        snap = engine.snapshot(backup_id, body.source if body else None)  # 404 before a job

        def work(run):
            report = run("verify", lambda c, ev: engine.verify([snap["id"]], read_data,
                                                              on_event=ev, cancel=c))
            out = report.as_json()
            if not report.ok:
                out.update(_failed=True, _error=f"{len(report.problems)} problem(s): "
                           + "; ".join(p.message for p in report.problems[:3]))
            return out

        return start(request, caller, "verify", snap["source"], work, snap["id"])

    # ------------------------------------------------------------ restore
    @api.post("/restore/database", status_code=202, response_model=models.Job,
              summary="Restore a database snapshot into a database")
    def restore_database(request: Request, body: models.RestoreDatabaseRequest,
                         caller: Caller = Depends(role("operator", "a restore"))) -> Any:
        if body.replace or body.with_globals:
            what = "replacing a database" if body.replace else "with_globals (changing roles)"
            caller.require("admin", what)
            _confirmed(body.confirm, body.target_db, what)
        eng = engine.for_replica(body.replica) if body.replica else engine
        snap = _db_snapshot(eng, body.snapshot, body.source, body.at)
        plan = eng.plan_restore(snap, target_db=body.target_db, replace=body.replace,
                                drop_old=body.drop_old, no_owner=body.no_owner,
                                no_acl=body.no_acl, with_globals=body.with_globals,
                                create_missing_roles=body.create_missing_roles)
        return start(request, caller, "restore", snap["source"],
                     lambda run: _restore(eng, plan, run), f"database {body.target_db}")

    @api.post("/restore/files", status_code=202, response_model=models.Job,
              summary="Restore a files snapshot into a directory")
    def restore_files(request: Request, body: models.RestoreFilesRequest,
                      caller: Caller = Depends(role("operator", "a restore"))) -> Any:
        if body.force or body.resume:
            what = "force" if body.force else "resume"
            caller.require("admin", f"restoring into a non-empty directory ({what})")
            _confirmed(body.confirm, body.target, what)
        eng = engine.for_replica(body.replica) if body.replica else engine
        snap = eng.snapshot(body.snapshot, body.source)
        plan = eng.plan_restore(snap, target=body.target, paths=body.paths, force=body.force,
                                resume=body.resume)

        return start(request, caller, "restore", snap["source"],
                     lambda run: _restore(eng, plan, run), body.target)

    @api.post("/point-in-time-recovery", summary="Plan, or run, a recovery to a point in time",
              responses={200: {"description": "the plan"}, 202: {"model": models.Job}})
    def point_in_time(request: Request, body: models.PitrRequest,
                      caller: Caller = Depends(role("viewer", "a recovery plan"))) -> Any:
        src = _find_source(engine, body.source, None)
        request.state.no_audit = not body.execute  # a plan changes nothing
        if src.archives_wal:  # recovered by WAL replay to the second (engine/ops/pitr.py)
            return _pitr_cluster(request, caller, body, src)
        form = registry.kind(src.kind).restore_form({"kind": src.kind, "source": src.name})
        if form.option != "target_db":  # restored as a database: its newest dump before
            raise UsageError(f"{src.info().target}: point-in-time recovery needs a database "
                             f"or a cluster; a {src.info().label} is restored with "
                             "restore/files")
        return _pitr_logical(request, caller, body, src)

    def _pitr_logical(request: Request, caller: Caller, body: models.PitrRequest, src):
        if not body.target_time:
            raise UsageError(f"{src.info().target}: a logical source recovers by time only: "
                             "give target_time")
        eng = engine.for_replica(body.replica) if body.replica else engine
        when = engine.parse_time(body.target_time)
        snap, before = eng.snapshot_at(src.name, when)
        plan_json = {"kind": src.kind, "source": src.name, "snapshot": snap["id"],
                     "snapshot_time": snap["time"], "seconds_before": round(before, 3),
                     "target_time": when.isoformat(),
                     "note": "a logical source restores the newest dump taken before the "
                     "time, not the second itself"}
        if not body.execute:
            return plan_json
        _may_execute(caller, body, body.target_db, "target_db: the database to restore into",
                     "a restore", "replacing a database")
        plan = eng.plan_restore(snap, target_db=body.target_db, replace=body.replace)

        def work(run):
            out = _restore(eng, plan, run)
            out["plan"] = plan_json
            return out

        return start(request, caller, "pitr", src.name, work, f"database {body.target_db}")

    def _pitr_cluster(request: Request, caller: Caller, body: models.PitrRequest, src):
        target = _pitr_target(engine, body)
        plan = engine.pitr_plan(src.name, target, body.replica)
        if not plan.feasible:
            raise HTTPException(409, plan.problems[0])
        if not body.execute:
            return jsonable_encoder(plan.as_json())
        _may_execute(caller, body, body.pgdata, "pgdata: the data directory to recover into",
                     "a recovery", "recovering over the cluster's data directory")

        def work(run):
            return run(f"restore cluster {src.name}", lambda c, ev: engine.restore_pitr(
                src.name, target, body.pgdata, body.port, body.start, body.replace,
                body.replica, on_event=ev, cancel=c, wait_seconds=body.wait_seconds))

        return start(request, caller, "pitr", src.name, work, body.pgdata)

    # ------------------------------------------------------------ cleanup
    @api.delete("/cleanup", summary="Apply retention and prune (a dry run unless "
                "dry_run=false)", responses={200: {"model": models.CleanupPlan},
                                              202: {"model": models.Job}})
    async def cleanup(request: Request, dry_run: bool = True) -> Any:
        if dry_run:
            request.state.no_audit = True
            await caller_of(request)
            out = await run_in_threadpool(engine.cleanup, True, replicas=False)
            return {"dry_run": True, "decisions": out.get("decisions", []),
                    "prune": out.get("prune"), "wal": out.get("wal", [])}
        caller = await caller_of(request)
        caller.require("admin", "a cleanup")

        def work(run):
            return run("cleanup", lambda c, ev: engine.cleanup(on_event=ev, cancel=c))

        return await run_in_threadpool(start, request, caller, "cleanup", None, work,
                                       "repository")

    # --------------------------------------------------------------- jobs
    @api.get("/jobs", response_model=models.JobList, dependencies=[viewer],
             summary="The API's jobs, newest first")
    def list_jobs(state: models.JobState | None = None, limit: int = Query(50, ge=1, le=500),
                  offset: int = Query(0, ge=0)) -> Any:
        items, total = jobs.list(state, limit, offset)
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @api.get("/jobs/{job_id}", response_model=models.Job, dependencies=[viewer])
    def get_job(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    @api.get("/jobs/{job_id}/events", dependencies=[viewer],
             summary="Server-sent events: state, progress..., end",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

        def listener(name: str, body: dict) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (name, body))

        first = await run_in_threadpool(jobs.subscribe, job_id, listener)
        if first is None:
            raise NotFound(f"no job {job_id!r}")
        return StreamingResponse(_stream(job_id, first, queue, listener, request),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def _stream(job_id, first, queue, listener, request):
        try:
            yield _sse("state", first)
            if first["state"] in ("succeeded", "failed", "cancelled"):
                yield _sse("end", first)
                return
            idle = 0.0
            while True:
                try:
                    name, body = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if scheduler.stopping or await request.is_disconnected():
                        return
                    idle += 1.0
                    if idle >= KEEPALIVE:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    continue
                idle = 0.0
                yield _sse(name, body)
                if name == "end":
                    return
        finally:
            jobs.unsubscribe(job_id, listener)

    @api.post("/jobs/{job_id}/cancel", status_code=202, response_model=models.CancelAnswer,
              summary="Ask a running job to stop")
    def cancel_job(request: Request, job_id: str,
                   caller: Caller = Depends(role("admin", "cancelling a job"))) -> Any:
        request.state.audit = (job_id, "")
        answer = jobs.cancel(job_id)
        if answer is None:
            raise NotFound(f"no job {job_id!r}")
        request.state.audit = (job_id, "cancel requested")
        return JSONResponse(answer, status_code=202)

    app.include_router(api)
    app.add_middleware(AuditAndLimits, engine=engine,
                       max_body=engine.config.api.max_body_bytes)
    return app


def _sse(name: str, body: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def _confirmed(confirm: str | None, name: str, what: str) -> None:
    if confirm != name:
        raise HTTPException(400, f"{what}: confirm must be the target's name ({name!r}) "
                            + ("(it was not given)" if confirm is None else
                               f"(got {confirm!r})"))


def _may_execute(caller: Caller, body: models.PitrRequest, target: str | None, needs: str,
                 what: str, replacing: str) -> None:
    """A recovery's execute: its target given, an operator; replacing: an admin who typed
    the target's name in ``confirm``."""
    if not target:
        raise UsageError(f"execute needs {needs}")
    caller.require("operator", what)
    if body.replace:
        caller.require("admin", replacing)
        _confirmed(body.confirm, target, replacing)


def _find_source(engine, name: str, kind: str | None):
    found = [s for s in registry.sources(engine.config)
             if s.name == name and (kind is None or s.kind == kind)]
    if not found:
        known = ", ".join(sorted({s.name for s in registry.sources(engine.config)})) or "none"
        raise NotFound(f"no source {name!r}" + (f" of kind {kind}" if kind else "")
                       + f" (configured: {known})")
    if len(found) > 1:
        raise UsageError(f"{name!r} names sources of several kinds "
                         f"({', '.join(s.kind for s in found)}): give kind")
    return found[0]


def _backup_problem(result) -> str:
    if not result.complete:
        return f"backup of {result.source} incomplete: " + "; ".join(result.errors[:3])
    return ""


def _backup_one(engine, src, run) -> dict:
    result = run(src.info().target, lambda c, ev: engine.backup(src.kind, src.name,
                                                                on_event=ev, cancel=c))
    out = result.as_json()
    problem = _backup_problem(result)
    if problem:
        out.update(_failed=True, _error=problem)
    return out


def _backup_all(engine, sources, run) -> dict:
    """Every source in turn, each queued behind its own scheduled run, then one
    replication; a failing source does not stop the others (as ``backup all``)."""
    done, failures = [], []
    for src in sources:
        try:
            result = run(src.info().target, lambda c, ev, s=src: engine.backup(
                s.kind, s.name, on_event=ev, cancel=c, replicate=False))
        except EngineError as e:
            from engine.errors import Cancelled

            if isinstance(e, Cancelled):
                raise
            failures.append(f"{src.info().target}: {e}")
            continue
        done.append(result.as_json())
        if _backup_problem(result):
            failures.append(_backup_problem(result))
    replication: list = []
    if done and any(r.replicate_after_backup for r in engine.config.replicas):
        replication = run("replicate", lambda c, ev: engine.replicate(
            on_event=ev, cancel=c, only_auto=True))
    out: dict[str, Any] = {"backups": done,
                           "replication": [r.as_json() for r in replication]}
    if failures:
        out.update(_failed=True, _error="; ".join(failures))
    return out


def _db_snapshot(engine, ref: str | None, source: str | None, at: str | None) -> dict:
    if at:
        if ref or not source:
            raise UsageError("at needs source and no snapshot")
        snap, _before = engine.snapshot_at(source, engine.parse_time(at))
        return snap
    if not ref:
        raise UsageError("give snapshot, or source and at")
    return engine.snapshot(ref, source)


def _restore(engine, plan, run) -> dict:
    """Execute a restore plan of any kind as the job's step; its result as the CLI's
    ``--json`` prints it (warnings capped at 100)."""
    out = run(f"restore {plan.target_label}",
              lambda c, ev: engine.restore(plan, on_event=ev, cancel=c)).as_json()
    out["warnings"] = out["warnings"][:100]
    return out


def _pitr_target(engine, body: models.PitrRequest):
    given = [(k, getattr(body, f"target_{k}")) for k in ("time", "lsn", "xid", "name")
             if getattr(body, f"target_{k}") is not None]
    if body.immediate:
        given.append(("immediate", None))
    if len(given) != 1:
        raise UsageError("give exactly one of target_time, target_lsn, target_xid, "
                         "target_name, immediate")
    kind, value = given[0]
    return engine.pitr_target(kind, value, not body.exclusive)


# -------------------------------------------------------------- middleware
class AuditAndLimits:
    """A request body over ``max_body`` bytes is answered 413 before the route runs; and
    every request that could change something (POST, DELETE) leaves one audit line once
    answered: who (``api:<key>@<address>``, or unauthenticated), the route, the target,
    and the outcome (accepted with the job id, or denied with the status)."""

    def __init__(self, app, engine, max_body: int) -> None:
        self.app, self.engine, self.max_body = app, engine, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(send, self.max_body)
            if scope["method"] in _MUTATING:
                await run_in_threadpool(self._audit, scope, 413)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except _TooLarge:
            await _too_large(send, self.max_body)
            status = 413
        if scope["method"] in _MUTATING:
            await run_in_threadpool(self._audit, scope, status)

    def _audit(self, scope, status: int) -> None:
        state = scope.get("state") or {}
        if state.get("no_audit"):
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        actor = state.get("actor") or f"api:unauthenticated@{address}"
        target, outcome = state.get("audit") or (scope["path"], "")
        if status >= 400:
            outcome = f"denied {status}" if status < 500 else f"error {status}"
        elif not outcome:
            outcome = f"ok {status}"
        action = "api " + scope["path"].removeprefix(PREFIX + "/")
        try:
            with security.acting_as(actor):
                self.engine.catalog.audit(action, str(target), outcome)
        except EngineError as e:
            log.warning("cannot write the audit line of %s: %s", action, e)


class _TooLarge(HTTPException):
    """Raised by the body reader: an HTTPException, which FastAPI's body parsing passes on
    (any other exception there becomes a 400 "error parsing the body")."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
