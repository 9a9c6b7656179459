"""The daemon's HTTP API (engine/api/) against a real daemon process: real HTTP round trips
with httpx, keys made with the real ``api-key`` CLI, a database source on the test
PostgreSQL, two S3 replicas on moto_server. No mocks, no timed assertions: every wait is a
bounded poll that fails saying what it waited for.

Most tests share one module-scoped daemon (``daemon``). It sees at most four failed
authentications from 127.0.0.1 (the slow-down starts after five); the slow-down and its 429
get their own daemon, as do TLS and the non-loopback rules. A database backup is held
running, without timing, by a table lock its pg_dump waits for (``TableLock``).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from api_support import (
    FINAL,
    KEY_RE,
    PREFIX,
    ApiDaemon,
    TableLock,
    api,
    api_toml,
    self_signed,
    wait_for,
)

MAX_BODY = 4096


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shop(pg_cluster) -> str:
    """The database source's database: the application-like schema of tests/test_db.py."""
    from test_db import SCHEMA

    name = f"apishop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA, name)
    return name


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, pg_cluster, s3_server, shop):
    """The shared daemon: files sources ``src`` and ``big`` (192 MiB), database source
    ``shop``, replicas ``use1`` and ``euw1``; keys watcher (viewer), ops and ops2
    (operator), boss (admin)."""
    import os

    from test_s3 import replica_toml

    buckets = s3_server.make_bucket_pair()
    root = tmp_path_factory.mktemp("api")
    extra = (f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(shop)}"\n'
             + f'[[fileset]]\nname = "big"\npaths = ["{root / "big"}"]\n'
             + replica_toml("use1", buckets.use1, "us-east-1", s3_server.endpoint_url)
             + replica_toml("euw1", buckets.euw1, "eu-west-1", s3_server.endpoint_url))
    d = ApiDaemon(root, extra=extra, grace_seconds=0)
    d.api = api_toml(f"127.0.0.1:{d.port}", max_body_bytes=MAX_BODY)
    d.write_config()
    (d.src / "a.txt").write_text("alpha\n")
    (d.src / "sub").mkdir()
    (d.src / "sub" / "b.bin").write_bytes(os.urandom(2 << 20))
    big = d.root / "big"  # a backup that runs a while (the restart test)
    big.mkdir()
    for i in range(8):
        (big / f"{i}.bin").write_bytes(os.urandom(24 << 20))
    d.init()
    for name, role in (("watcher", "viewer"), ("ops", "operator"), ("ops2", "operator"),
                       ("boss", "admin")):
        d.create_key(name, role)
    d.start()
    try:
        yield d
    finally:
        rc = d.stop()
        assert rc in (0, None), f"daemon exit {rc}\n{d.log_tail()}"


@pytest.fixture(scope="module")
def db_snapshot(daemon) -> str:
    """A database backup of ``shop`` made through the API: its snapshot id."""
    with daemon.client("boss") as c:
        before = snapshot_ids(c, "shop")
        r = c.post(api("trigger"), json={"source": "shop"})
        assert r.status_code == 202, r.text
        job = daemon.wait_job(c, r.json()["job_id"])
        assert job["state"] == "succeeded", job
        [new] = snapshot_ids(c, "shop") - before
    return new


def snapshot_ids(client: httpx.Client, source: str | None = None) -> set[str]:
    params = {"limit": 500} | ({"source": source} if source else {})
    r = client.get(api("list"), params=params)
    assert r.status_code == 200, r.text
    return {s["id"] for s in r.json()["items"]}


def cli_snapshots(daemon) -> list[dict]:
    return json.loads(daemon.cli("list", "--json").stdout)


def trigger(client: httpx.Client, source: str, status: int = 202) -> dict:
    r = client.post(api("trigger"), json={"source": source})
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def locs(body: dict) -> list[list]:
    return [list(item["loc"]) for item in body["detail"]]


# --------------------------------------------------------------------- OpenAPI
ROUTES = {
    ("get", "list"), ("post", "trigger"), ("post", "verify/{}"),
    ("post", "restore/database"), ("post", "restore/files"),
    ("post", "point-in-time-recovery"), ("get", "status"), ("get", "health"),
    ("delete", "cleanup"), ("get", "jobs"), ("get", "jobs/{}"), ("get", "jobs/{}/events"),
    ("post", "jobs/{}/cancel"),
}


def test_openapi_lists_every_route_of_the_spec(daemon):
    with daemon.client("watcher") as c:
        r = c.get("/api/v1/openapi.json")
    assert r.status_code == 200, r.text
    listed = set()
    for path, ops in r.json()["paths"].items():
        if path.startswith(PREFIX + "/"):
            route = re.sub(r"\{[^}]*\}", "{}", path[len(PREFIX) + 1:])
            listed |= {(method.lower(), route) for method in ops}
    assert ROUTES <= listed, sorted(ROUTES - listed)


# --------------------------------------------------------------------- trigger, list
def test_trigger_a_database_backup_and_find_it_listed(daemon):
    with daemon.client("ops") as c:
        before = snapshot_ids(c, "shop")
        r = c.post(api("trigger"), json={"source": "shop"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"{PREFIX}/jobs/{job['job_id']}"
        assert job["job_id"].startswith("api-") and job["kind"] == "backup"
        assert job["source"] == "shop" and job["requested_by"] == "ops"
        assert job["state"] in ("queued", "running", "succeeded")
        done = daemon.wait_job(c, job["job_id"])
        assert done["state"] == "succeeded", done
        assert done["error"] is None and done["started"] and done["ended"] and done["jobs"]
        [new] = snapshot_ids(c, "shop") - before
        listed = c.get(api("list"), params={"source": "shop", "kind": "db"}).json()
        assert new in {s["id"] for s in listed["items"]}
        assert all(s["source"] == "shop" and s["kind"] == "db" for s in listed["items"])
        assert listed["total"] == len(listed["items"])
        recent = c.get(api("jobs")).json()
        assert job["job_id"] in [j["job_id"] for j in recent["items"]]
    [snap] = [s for s in cli_snapshots(daemon) if s["id"] == new]
    assert snap["kind"] == "db" and snap["source"] == "shop"


def test_list_pages_and_filters(daemon, db_snapshot):
    with daemon.client("watcher") as c:
        everything = c.get(api("list"), params={"limit": 500}).json()
        assert everything["total"] >= 1 and everything["offset"] == 0
        first = c.get(api("list"), params={"limit": 1}).json()
        assert len(first["items"]) == 1 and first["limit"] == 1
        assert first["total"] == everything["total"]
        if first["total"] > 1:
            assert first["next"]
        assert c.get(api("list"), params={"limit": 0}).status_code == 422
        assert c.get(api("list"), params={"limit": 501}).status_code == 422
        files = c.get(api("list"), params={"kind": "files"}).json()["items"]
        assert db_snapshot not in {s["id"] for s in files}


def test_verify_a_snapshot_by_its_prefix(daemon, db_snapshot):
    with daemon.client("ops") as c:
        r = c.post(api(f"verify/{db_snapshot[:8]}"), json={"read_data": True})
        assert r.status_code == 202, r.text
        job = daemon.wait_job(c, r.json()["job_id"])
    assert job["kind"] == "verify" and job["state"] == "succeeded", job


# --------------------------------------------------------------------- events
def test_follow_a_jobs_events_live(daemon, pg_cluster, shop):
    with daemon.client("ops") as c, TableLock(pg_cluster, shop, "orders") as lock:
        job_id = trigger(c, "shop")["job_id"]
        with daemon.events(c, job_id) as stream:
            event, first = next(stream)
            assert event == "state" and first["job_id"] == job_id
            assert first["state"] in ("queued", "running")
            # pg_dump waits for the lock: the job runs until the lock goes
            wait_for(lock.waiting, 60, "pg_dump to wait for the table lock", daemon.log_tail)
            lock.release()
            rest = list(stream)
    kinds = [e for e, _ in rest]
    assert kinds and kinds[-1] == "end" and kinds.count("end") == 1, kinds
    assert "progress" in kinds, kinds
    assert set(kinds) <= {"progress", "state", "end"}, kinds
    assert all(data["job_id"] == job_id for _, data in rest)
    end = rest[-1][1]
    assert end["state"] == "succeeded", end
    for _, data in rest[:-1]:
        assert data["state"] in ("queued", "running")
        assert set(data["progress"]) >= {"phase", "bytes_done", "bytes_total", "items_done",
                                         "items_total", "fraction", "message"}
    # a job already ended: its state, then its end, at once
    with daemon.client("watcher") as c, daemon.events(c, job_id) as stream:
        again = list(stream)
    assert [e for e, _ in again] == ["state", "end"], again
    assert again[-1][1]["state"] == "succeeded"


def test_a_client_that_goes_away_does_not_cancel_its_job(daemon, pg_cluster, shop):
    """The client that triggered the job and followed its events disconnects while the job
    runs (held by a table lock): the job goes on and succeeds."""
    with TableLock(pg_cluster, shop, "orders") as lock:
        with daemon.client("ops") as c:
            job_id = trigger(c, "shop")["job_id"]
            with daemon.events(c, job_id) as stream:
                event, first = next(stream)
                assert event == "state" and first["state"] in ("queued", "running")
            # the stream and the client are closed here, the job still waits on the lock
        wait_for(lock.waiting, 60, "pg_dump to wait for the table lock", daemon.log_tail)
        with daemon.client("watcher") as w:
            assert daemon.job(w, job_id)["state"] == "running"
    with daemon.client("watcher") as w:
        done = daemon.wait_job(w, job_id)
    assert done["state"] == "succeeded", done


# --------------------------------------------------------------------- restore
def test_restore_a_database_into_a_new_name(daemon, pg_cluster, shop, db_snapshot):
    from test_db_fidelity import row_hashes, schema_dump

    target = f"restored_{uuid.uuid4().hex[:8]}"
    try:
        with daemon.client("ops") as c:
            r = c.post(api("restore/database"), json={"snapshot": db_snapshot,
                                                      "target_db": target})
            assert r.status_code == 202, r.text
            assert r.json()["kind"] == "restore"
            job = daemon.wait_job(c, r.json()["job_id"])
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["target_db"] == target and result["old_db"] is None
        assert result["snapshot"].startswith(db_snapshot[:8]) and result["bytes"] > 0
        assert row_hashes(pg_cluster, target) == row_hashes(pg_cluster, shop)
        assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, shop)
    finally:
        pg_cluster.psql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_restore_that_replaces_needs_the_targets_name_as_confirm(daemon, pg_cluster,
                                                                 db_snapshot):
    scratch = f"scratch_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(scratch)
    pg_cluster.psql("CREATE TABLE marker (x int); INSERT INTO marker VALUES (42)", scratch)
    try:
        with daemon.client("boss") as c:
            body = {"snapshot": db_snapshot, "target_db": scratch, "replace": True}
            for confirm in (None, "wrong", scratch.upper()):
                r = c.post(api("restore/database"), json=body | {"confirm": confirm})
                assert r.status_code == 400, (confirm, r.status_code, r.text)
                assert "confirm" in r.json()["detail"], r.text
            # the operator may not replace at all, confirmed or not
        with daemon.client("ops") as c:
            r = c.post(api("restore/database"), json=body | {"confirm": scratch})
            assert r.status_code == 403, r.text
        assert pg_cluster.psql("SELECT x FROM marker", scratch).strip() == "42"
    finally:
        pg_cluster.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def test_restore_files_into_a_new_directory(daemon, tmp_path):
    from test_s3 import same_tree

    with daemon.client("ops") as c:
        job = daemon.wait_job(c, trigger(c, "src")["job_id"])
        assert job["state"] == "succeeded", job
        target = tmp_path / "restored"
        r = c.post(api("restore/files"), json={"snapshot": "latest", "source": "src",
                                               "target": str(target)})
        assert r.status_code == 202, r.text
        done = daemon.wait_job(c, r.json()["job_id"])
    assert done["kind"] == "restore" and done["state"] == "succeeded", done
    assert done["result"]["target"] == str(target) and done["result"]["files"] >= 2
    restored = target / str(daemon.src).lstrip("/")  # the tree keeps its absolute path
    assert same_tree(daemon.src, restored), sorted(str(p) for p in target.rglob("*"))


def test_a_point_in_time_plan_for_a_database_source(daemon, db_snapshot):
    from datetime import UTC, datetime

    with daemon.client("watcher") as c:
        r = c.post(api("point-in-time-recovery"),
                   json={"source": "shop", "target_time": datetime.now(UTC).isoformat()})
        assert r.status_code == 200, r.text
        plan = r.json()
        assert plan["kind"] == "db" and plan["source"] == "shop" and plan["snapshot"]
        assert plan["seconds_before"] >= 0 and "logical" in plan["note"]
        # executing it is an operator's
        r = c.post(api("point-in-time-recovery"),
                   json={"source": "shop", "target_time": datetime.now(UTC).isoformat(),
                         "execute": True, "target_db": f"pitr_{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 403, r.text
        # a fileset has no point in time to recover to: refused at once, saying what to use
        r = c.post(api("point-in-time-recovery"),
                   json={"source": "src", "target_time": datetime.now(UTC).isoformat()})
        assert r.status_code == 400 and "restore/files" in r.json()["detail"], r.text


def test_an_admin_cancels_a_running_job(daemon, pg_cluster, shop):
    with daemon.client("ops") as c, TableLock(pg_cluster, shop, "orders") as lock:
        before = snapshot_ids(c, "shop")
        job_id = trigger(c, "shop")["job_id"]
        wait_for(lock.waiting, 60, "pg_dump to wait for the table lock", daemon.log_tail)
        with daemon.client("boss") as admin:
            r = admin.post(api(f"jobs/{job_id}/cancel"))
            assert r.status_code == 202, r.text
            assert r.json()["job_id"] == job_id
            assert r.json()["state"] in ("running", "cancelled")
            lock.release()  # the dump goes on and stops at its next check
            done = daemon.wait_job(admin, job_id)
            assert done["state"] == "cancelled", done
            r = admin.post(api(f"jobs/{job_id}/cancel"))
            assert r.status_code == 409, r.text
        assert snapshot_ids(c, "shop") == before  # no snapshot of a cancelled backup


# --------------------------------------------------------------------- errors
def test_without_a_key_or_with_a_wrong_one_is_401(daemon):
    with daemon.client() as c:
        r = c.get(api("list"))
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    wrong = "btk_0123abcd_" + "A" * 43
    with daemon.client(wrong) as c:
        r = c.get(api("status"))
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert wrong not in r.text


def test_a_role_too_low_is_403_naming_both_roles(daemon, db_snapshot):
    with daemon.client("watcher") as c:
        r = c.post(api("trigger"), json={"source": "shop"})
        assert r.status_code == 403, r.text
        assert "operator" in r.json()["detail"] and "viewer" in r.json()["detail"]
        assert c.get(api("status")).status_code == 200  # a viewer reads
        job_id = c.get(api("jobs")).json()["items"][0]["job_id"]
    with daemon.client("ops") as c:
        r = c.post(api(f"jobs/{job_id}/cancel"))
        assert r.status_code == 403, r.text
        assert "admin" in r.json()["detail"] and "operator" in r.json()["detail"]
        before = snapshot_ids(c)
        r = c.delete(api("cleanup"), params={"dry_run": "false"})
        assert r.status_code == 403, r.text
        assert "admin" in r.json()["detail"] and "operator" in r.json()["detail"]
        assert snapshot_ids(c) == before


def test_an_invalid_body_is_422_naming_the_field(daemon):
    with daemon.client("ops") as c:
        r = c.post(api("trigger"), json={"source": 5})
        assert r.status_code == 422, r.text
        assert any("source" in loc for loc in locs(r.json())), r.text
        r = c.post(api("trigger"), json={"source": "shop", "colour": "blue"})
        assert r.status_code == 422, r.text
        assert any("colour" in loc for loc in locs(r.json())), r.text
        r = c.post(api("restore/database"), json={"snapshot": "latest", "source": "shop",
                                                  "target_db": "x", "replace": "maybe"})
        assert r.status_code == 422, r.text
        assert any("replace" in loc for loc in locs(r.json())), r.text


def test_unknown_things_are_404(daemon):
    with daemon.client("ops") as c:
        r = c.post(api("verify/deadbeefdeadbeef"))
        assert r.status_code == 404, r.text
        assert isinstance(r.json()["detail"], str)
        r = c.post(api("trigger"), json={"source": "no-such-source"})
        assert r.status_code == 404, r.text
        assert c.get(api("jobs/api-20000101T000000-000000")).status_code == 404
    with daemon.client("boss") as c:
        assert c.post(api("jobs/api-20000101T000000-000000/cancel")).status_code == 404


def test_cleanup_without_parameters_is_a_dry_run(daemon, db_snapshot):
    before_cli = [s["id"] for s in cli_snapshots(daemon)]
    with daemon.client("watcher") as c:
        before = snapshot_ids(c)
        r = c.delete(api("cleanup"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["dry_run"] is True and isinstance(body["decisions"], list)
        assert snapshot_ids(c) == before
    assert [s["id"] for s in cli_snapshots(daemon)] == before_cli


def test_a_key_revoked_with_the_cli_while_the_daemon_runs_gets_401(daemon):
    daemon.create_key("temp", "operator")  # made while the daemon runs: valid at once
    with daemon.client("temp") as c:
        assert c.get(api("status")).status_code == 200
        daemon.revoke_key("temp")
        r = c.get(api("status"))
        assert r.status_code == 401, r.text
    listed = json.loads(daemon.cli("api-key", "list", "--json").stdout)
    [temp] = [k for k in listed if k["name"] == "temp"]
    assert temp["revoked"]


def test_a_body_over_max_body_bytes_is_413(daemon):
    with daemon.client("ops") as c:
        r = c.post(api("trigger"), json={"source": "x" * (MAX_BODY + 100)})
        assert r.status_code == 413, r.text
        body = b'{"source": "' + b"y" * (MAX_BODY + 100) + b'"}'
        r = c.post(api("trigger"), content=iter([body]),  # chunked: no Content-Length
                   headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text


# --------------------------------------------------------------------- concurrency
def test_a_second_client_is_answered_while_a_job_runs(daemon, pg_cluster, shop):
    with daemon.client("ops") as a, daemon.client("ops2") as b:
        with TableLock(pg_cluster, shop, "orders") as lock:
            job_a = trigger(a, "shop")["job_id"]
            wait_for(lock.waiting, 60, "pg_dump to wait for the table lock", daemon.log_tail)
            listed = b.get(api("jobs"))
            assert listed.status_code == 200, listed.text
            states = {j["job_id"]: j["state"] for j in listed.json()["items"]}
            assert states[job_a] == "running"
            running = b.get(api("jobs"), params={"state": "running"}).json()["items"]
            assert job_a in [j["job_id"] for j in running]
            assert b.get(api("status")).status_code == 200
            assert daemon.job(b, job_a)["state"] == "running"
            job_b = trigger(b, "src")["job_id"]
            assert daemon.job(a, job_a)["state"] == "running"
        done_a = daemon.wait_job(a, job_a)
        done_b = daemon.wait_job(b, job_b)
    assert done_a["state"] == "succeeded", done_a
    assert done_b["state"] == "succeeded", done_b
    assert done_b["requested_by"] == "ops2" and done_a["requested_by"] == "ops"


def restart_while_polling(daemon, job_id: str) -> tuple[dict, list[str], list[str]]:
    """Poll ``GET jobs/{id}`` from a thread while the daemon is stopped (SIGTERM) and
    started again; connection errors are tolerated. (final job, answers seen, errors)."""
    seen: list[str] = []
    errors: list[str] = []
    final: dict = {}
    stop = threading.Event()
    with daemon.client("watcher", timeout=10) as c:
        def poll():
            while not stop.is_set():
                try:
                    r = c.get(api(f"jobs/{job_id}"))
                except httpx.TransportError as e:
                    errors.append(type(e).__name__)
                else:
                    seen.append(f"{r.status_code} {r.text[:300]}")
                    if r.status_code == 200 and r.json()["state"] in FINAL:
                        final.update(r.json())
                        return
                stop.wait(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            daemon.restart()
            poller.join(120)  # the restarted daemon answers at once: bounded
        finally:
            stop.set()
            poller.join(15)
    assert final, (f"no final state of {job_id} within the bound: answers {seen[-3:]}, "
                   f"connection errors {errors[-3:]}\n{daemon.log_tail()}")
    assert final["job_id"] == job_id
    assert all(s.startswith("200 ") for s in seen), seen[-5:]
    return final, seen, errors


def test_a_daemon_restart_while_a_client_polls(daemon):
    with daemon.client("ops") as c:
        job_id = trigger(c, "big")["job_id"]
        daemon.wait_job(c, job_id, 60, states=("running", *FINAL))
    final, _seen, _errors = restart_while_polling(daemon, job_id)
    if final["state"] != "succeeded":  # it did not finish before the stop
        assert final["state"] == "failed", final
        assert final["error"] and "interrupted" in final["error"], final
    with daemon.client("watcher") as c:  # the restarted daemon answers from the catalog
        again = daemon.job(c, job_id)
    assert again["state"] == final["state"] and again["ended"], again
    assert again["error"] == final["error"], (again, final)


def test_a_restart_while_pg_dump_waits_for_a_lock(daemon, pg_cluster, shop):
    """A database backup whose pg_dump waits for a table lock (a long migration holding
    it, say) cannot finish: SIGTERM still stops the daemon (grace 0 here), the interrupted
    job's pg_dump does not outlive it, and the restarted daemon shows the job failed,
    interrupted."""
    with daemon.client("ops") as c, TableLock(pg_cluster, shop, "orders") as lock:
        job_id = trigger(c, "shop")["job_id"]
        wait_for(lock.waiting, 60, "pg_dump to wait for the table lock", daemon.log_tail)
        assert pg_dumps_of(shop), "no pg_dump of the database runs"
        final, _seen, _errors = restart_while_polling(daemon, job_id)
        left = pg_dumps_of(shop)  # still under the lock: nothing could have ended them
        assert not left, f"pg_dump of the interrupted job left running: {left}"
    assert final["state"] == "failed", final
    assert final["error"] and "interrupted" in final["error"], final


def pg_dumps_of(db: str) -> list[str]:
    """The command lines of the pg_dump processes running on database ``db``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_dump") and any(db.encode() in a for a in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


# --------------------------------------------------------------------- audit
def test_the_audit_log_names_the_key_and_never_holds_a_key(daemon):
    with daemon.client("watcher") as c:
        assert c.post(api("trigger"), json={"source": "src"}).status_code == 403
    with daemon.client() as c:
        assert c.post(api("trigger"), json={"source": "src"}).status_code == 401
    with daemon.client("ops") as c:
        job_id = trigger(c, "src")["job_id"]
        assert daemon.wait_job(c, job_id)["state"] == "succeeded"
    rows = json.loads(daemon.cli("audit", "--json", "--limit", "1000").stdout)

    def lines(user):
        return [r for r in rows if r["user"] == user]

    ops = lines("api:ops@127.0.0.1")
    accepted = [r for r in ops if r["action"].startswith("api") and "trigger" in r["action"]
                and r["outcome"].startswith("accepted")]
    assert any(job_id in json.dumps(r) for r in accepted), ops
    # the engine's own line of the API job carries the actor too
    assert any(r["action"] == "backup" for r in ops), ops
    denied = [r for r in lines("api:watcher@127.0.0.1")
              if r["action"].startswith("api") and r["outcome"].startswith("denied")]
    assert any("403" in r["outcome"] for r in denied), lines("api:watcher@127.0.0.1")
    anon = lines("api:unauthenticated@127.0.0.1")
    assert any("401" in r["outcome"] for r in anon), rows[:10]
    # no key's text anywhere: audit, responses, the daemon's log, the state directory
    texts = [json.dumps(rows), daemon.log(), *daemon.seen]
    texts += [p.read_bytes().decode("latin-1") for p in daemon.state.rglob("*") if p.is_file()]
    for name, key in daemon.keys.items():
        secret = key.split("_", 2)[2]
        for text in texts:
            assert key not in text and secret not in text, f"key {name} was written"
    assert not any(KEY_RE.search(t) for t in texts)


# --------------------------------------------------------------------- own daemons
def small_daemon(root) -> ApiDaemon:
    d = ApiDaemon(root, grace_seconds=0)
    (d.src / "a.txt").write_text("alpha\n")
    d.init()
    return d


def test_tls(tmp_path):
    import ssl

    d = small_daemon(tmp_path)
    cert, key = self_signed(tmp_path)
    d.api = api_toml(f"127.0.0.1:{d.port}", tls_cert=str(cert), tls_key=str(key))
    d.write_config()
    d.create_key("watcher", "viewer")
    d.scheme = "https"
    d.verify = ssl.create_default_context(cafile=str(cert))
    d.start()
    try:
        with d.client("watcher") as c:
            r = c.get(api("status"))
            assert r.status_code == 200, r.text
            assert r.url.scheme == "https"
            assert c.get(api("health")).status_code in (200, 503)
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{d.port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError):  # nor is an unverified certificate trusted
            httpx.get(f"https://127.0.0.1:{d.port}/health", timeout=5)
    finally:
        assert d.stop() == 0, d.log_tail()


def test_a_non_loopback_listen_needs_tls_or_allow_plaintext(tmp_path):
    import subprocess

    d = small_daemon(tmp_path)
    d.api = api_toml(f"0.0.0.0:{d.port}")
    d.write_config()
    proc = d.launch()
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"--run-scheduler did not refuse\n{d.log_tail()}") from None
    err = d.log_path.read_text()
    assert rc == 2, err
    assert "[api]" in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err

    d.api = api_toml(f"0.0.0.0:{d.port}", allow_plaintext=True)
    d.write_config()
    d.create_key("watcher", "viewer")
    d.start()  # polls http://127.0.0.1:PORT/health
    try:
        warned = [ln for ln in d.log().splitlines() if "level=warning" in ln
                  and re.search(r"plain|tls|clear", ln, re.I)]
        assert warned, d.log_tail()
        with d.client("watcher") as c:  # not loopback: /health needs a key now
            assert c.get("/health").status_code in (200, 503)
        with d.client() as c:
            assert c.get("/health").status_code == 401
    finally:
        assert d.stop() == 0, d.log_tail()


def test_failed_authentications_slow_down_then_429(tmp_path):
    """Its own daemon: after this, 127.0.0.1 is refused for the rest of the window."""
    d = small_daemon(tmp_path)
    d.write_config()
    d.create_key("watcher", "viewer")
    d.start()
    try:
        def bad(i: int) -> httpx.Response:
            with d.client(f"btk_{i:08x}_" + "B" * 43, timeout=120) as c:
                return c.get(api("status"))

        with ThreadPoolExecutor(25) as pool:  # concurrent: the delays overlap
            statuses = [r.status_code for r in pool.map(bad, range(25))]
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(401) >= 20, statuses
        with d.client("watcher") as c:  # refused without checking the key, good or not
            r = c.get(api("status"))
            assert r.status_code == 429, r.text
            retry = int(r.headers["retry-after"])
            assert 0 < retry <= 600, retry
            r = c.post(api("trigger"), json={"source": "src"})
            assert r.status_code == 429, r.text
    finally:
        assert d.stop() == 0, d.log_tail()
