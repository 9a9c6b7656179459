"""The HTTP API's request and response bodies (pydantic): what the OpenAPI document
shows and what FastAPI validates. Requests forbid unknown fields, so a misspelt option is
a 422 naming it rather than silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerRequest(_Request):
    source: str = Field(min_length=1, max_length=200,
                        description="a configured source's name, or 'all'")
    kind: str | None = Field(None, description="the source's kind (db, files, cluster) when "
                             "two kinds have a source of that name")


class VerifyRequest(_Request):
    source: str | None = Field(None, description="with backup_id 'latest': whose newest "
                               "snapshot, when several sources have snapshots")
    read_data: bool = Field(False, description="read and authenticate every blob, not only "
                            "check that the snapshot's blobs are indexed")


class RestoreDatabaseRequest(_Request):
    snapshot: str | None = Field(None, description="an id, a unique prefix of 8+ characters, "
                                 "or 'latest' (with source); or give source and at")
    source: str | None = None
    at: str | None = Field(None, description="ISO 8601: the newest backup of source taken at "
                           "or before it")
    target_db: str = Field(min_length=1, max_length=63)
    replace: bool = Field(False, description="replace an existing database (admin; needs "
                          "confirm = target_db)")
    confirm: str | None = Field(None, description="the target's name, to confirm a replace")
    drop_old: bool = False
    no_owner: bool = False
    no_acl: bool = False
    create_missing_roles: bool = False
    with_globals: bool = Field(False, description="apply the saved roles, changing existing "
                               "ones (admin; needs confirm = target_db)")
    replica: str | None = Field(None, description="read the snapshot from this replica")


class RestoreFilesRequest(_Request):
    snapshot: str = Field(min_length=1)
    source: str | None = None
    target: str = Field(min_length=1, description="the directory to restore into")
    paths: list[str] = Field(default_factory=list, description="only these paths of the "
                             "snapshot (and what is below them)")
    force: bool = Field(False, description="restore into a non-empty directory (admin; needs "
                        "confirm = target)")
    resume: bool = Field(False, description="finish a restore that stopped part way: files "
                         "already in the directory with the snapshot's content are kept, the "
                         "rest written as with force (admin; needs confirm = target)")
    confirm: str | None = None
    replica: str | None = None


class PitrRequest(_Request):
    source: str = Field(min_length=1, description="a [[database]] or [[cluster]] name")
    target_time: str | None = Field(None, description="ISO 8601; without an offset, in the "
                                    "schedule's time zone")
    target_lsn: str | None = None
    target_xid: str | None = None
    target_name: str | None = None
    immediate: bool = Field(False, description="a cluster: stop as soon as it is consistent")
    exclusive: bool = False
    replica: str | None = None
    execute: bool = Field(False, description="false: the plan only")
    target_db: str | None = Field(None, description="a database source: restore into it")
    pgdata: str | None = Field(None, description="a cluster: the data directory to create")
    port: int | None = Field(None, ge=1, le=65535)
    start: bool = False
    replace: bool = False
    confirm: str | None = None
    wait_seconds: float = Field(3600.0, gt=0, le=86400)


class Progress(BaseModel):
    phase: str
    bytes_done: int
    bytes_total: int
    items_done: int
    items_total: int
    fraction: float | None
    message: str


class Job(BaseModel):
    job_id: str
    kind: str
    source: str | None
    state: JobState
    progress: Progress
    error: str | None
    result: dict[str, Any] | None = None
    requested_by: str = ""
    requested: str | None = None
    started: str | None = None
    ended: str | None = None
    jobs: list[str] = Field(default_factory=list, description="the catalog jobs it ran")


class JobList(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


class CancelAnswer(BaseModel):
    job_id: str
    state: str


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    time: str
    kind: str
    source: str


class SnapshotList(BaseModel):
    items: list[Snapshot]
    total: int
    limit: int
    offset: int
    next: str | None


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool
    reasons: list[str]


class CleanupPlan(BaseModel):
    dry_run: bool
    decisions: list[dict[str, Any]]


class Problem(BaseModel):
    detail: str
