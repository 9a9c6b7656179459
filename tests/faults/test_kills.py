"""SIGKILL at seeded points across every operation that writes (tests/faults/).

Each case runs the real CLI as a subprocess and kills it after a seeded fraction of
the time the same operation took when it last ran to completion (so kills land in
start-up, lock, walk, pack writes, commit, swap ... in proportion to their length).
After each kill: ``verify --read-data`` is clean, complete snapshots restore
identical to the source as it was when each was taken (those the killed run may
have made, the newest, one more chosen by the seed; all of them at the end of the
case), no lock is left that blocks, and the same operation then runs to completion.
"""

from __future__ import annotations

import json
import subprocess
import traceback
import uuid

import psycopg2
import pytest
from campaign import (
    check_files_repo,
    describe,
    diff_manifests,
    fill,
    kill_after,
    live_locks,
    manifest,
    mutate,
    popen_cli,
    snapshot_ids,
    timed_cli,
)

CLS = "sigkill"
KIB = 1024


class Rounds:
    """Bookkeeping of one case: figures to the report; the case fails at the end (after
    all its rounds ran) when any round did not survive."""

    def __init__(self, report, what: str):
        self.report, self.what = report, what
        self.problems: list[str] = []
        self.hits = 0

    def outcome(self, lost: str, failed: str, hit: bool) -> None:
        if not hit:
            return  # the operation ended before the kill: no fault was injected
        self.hits += 1
        if lost:
            self.report.record(CLS, "lost", f"{self.what}: {lost}")
            self.problems.append(f"lost: {lost}")
        elif failed:
            self.report.record(CLS, "failed", f"{self.what}: {failed}")
            self.problems.append(f"failed: {failed}")
        else:
            self.report.record(CLS, "survived", self.what)

    def stop_early(self) -> bool:
        return len(self.problems) >= 3  # state is broken: later rounds would only repeat it

    def assert_survived(self) -> None:
        assert not self.problems, f"{self.what}: " + "\n".join(self.problems)


def no_blocking_lock(sb) -> str:
    left = live_locks(sb.repo)
    return f"locks left after a completed run: {left}" if left else ""


def backup_json(sb, *args) -> tuple[str | None, str, float]:
    proc, secs = timed_cli(sb, "backup", *args, "--json")
    if proc.returncode != 0:
        return None, f"next backup failed: {describe(proc)}", secs
    return json.loads(proc.stdout)["id"], "", secs


def pick_checks(rng, expected: dict, new: set) -> list[str]:
    ids = sorted(expected)
    chosen = set(new) | {max(ids, key=lambda s: expected[s]["_order"])} if ids else set(new)
    if ids:
        chosen.add(rng.choice(ids))
    return sorted(chosen)


def strip(expected: dict) -> dict:
    return {k: {p: v for p, v in m.items() if p != "_order"} for k, m in expected.items()}


# --------------------------------------------------------------- files backup
def test_sigkill_files_backup(sandbox, tmp_path, fault_budget, fault_report):
    rng = fault_budget.rng()
    fill(sandbox.src, rng, 16, 512 * KIB)
    sandbox.engine(init=True)
    rounds = Rounds(fault_report, "backup files")
    expected: dict[str, dict] = {}
    order = 0

    def remember(sid, m):
        nonlocal order
        order += 1
        expected[sid] = {**m, "_order": order}

    m = manifest(sandbox.src)
    sid, err, dur = backup_json(sandbox, "files", "src")
    assert sid, err
    remember(sid, m)
    for n in range(fault_budget.pick(14, 60)):
        mutate(sandbox.src, rng, n)
        m = manifest(sandbox.src)
        before = set(snapshot_ids(sandbox))
        proc = popen_cli(sandbox, "backup", "files", "src", "--json")
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        new = set(snapshot_ids(sandbox)) - before
        for s in new:  # the kill came after the commit point
            remember(s, m)
        lost = check_files_repo(sandbox, strip(expected), tmp_path,
                                only=pick_checks(rng, expected, new))
        failed = ""
        if not lost:
            sid, failed, dur = backup_json(sandbox, "files", "src")
            if sid:
                remember(sid, m)
                failed = no_blocking_lock(sandbox)
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    if not rounds.problems:
        lost = check_files_repo(sandbox, strip(expected), tmp_path)
        assert not lost, lost
    rounds.assert_survived()
    assert rounds.hits >= fault_budget.pick(8, 40), "too few kills landed"


def files_sandbox_with_snapshots(sb, rng, count: int, size: int = 512 * KIB
                                 ) -> dict[str, dict]:
    """An initialised sandbox with ``count`` files snapshots of a changing tree."""
    fill(sb.src, rng, 12, size)
    eng = sb.engine(init=True)
    expected = {}
    for n in range(count):
        if n:
            mutate(sb.src, rng, n)
        m = manifest(sb.src)
        expected[eng.backup("files", "src", replicate=False).id] = m
    return expected


# -------------------------------------------------------------- files restore
def test_sigkill_files_restore(sandbox, tmp_path, fault_budget, fault_report):
    """A killed restore, then the same restore again into the same target with --force:
    the result is identical to the source as it was backed up."""
    rng = fault_budget.rng()
    expected = files_sandbox_with_snapshots(sandbox, rng, 3)
    rounds = Rounds(fault_report, "restore files")
    sid = sorted(expected)[0]
    _, dur = timed_cli(sandbox, "restore", "files", sid, "--target", str(tmp_path / "first"))
    for n in range(fault_budget.pick(8, 40)):
        sid = rng.choice(sorted(expected))
        target = tmp_path / f"target{n}"
        proc = popen_cli(sandbox, "restore", "files", sid, "--target", str(target))
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        lost = check_files_repo(sandbox, expected, tmp_path, only=[])
        failed = ""
        if not lost:
            proc, dur = timed_cli(sandbox, "restore", "files", sid, "--target", str(target),
                                  "--force")
            if proc.returncode != 0:
                failed = f"restore again with --force: {describe(proc)}"
            else:
                bad = diff_manifests(expected[sid], manifest(target / str(sandbox.src)
                                                             .lstrip("/")))
                failed = f"restore after a killed one differs: {bad}" if bad else \
                    no_blocking_lock(sandbox)
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    rounds.assert_survived()


# ----------------------------------------------------------------------- dump
def test_sigkill_dump(sandbox, tmp_path, fault_budget, fault_report):
    """A killed dump, then a dump to completion that GNU tar extracts identical."""
    rng = fault_budget.rng()
    expected = files_sandbox_with_snapshots(sandbox, rng, 2)
    rounds = Rounds(fault_report, "dump")
    sid = sorted(expected)[0]
    _, dur = timed_cli(sandbox, "dump", sid)
    for n in range(fault_budget.pick(6, 30)):
        sid = rng.choice(sorted(expected))
        with open(tmp_path / f"killed{n}.tar", "wb") as out:
            proc = popen_cli(sandbox, "dump", sid, stdout=out)
            hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        lost = check_files_repo(sandbox, expected, tmp_path, only=[])
        failed = ""
        if not lost:
            tar = tmp_path / f"dump{n}.tar"
            with open(tar, "wb") as out:
                p = popen_cli(sandbox, "dump", sid, stdout=out)
                _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                failed = f"dump again: exit {p.returncode}: {err[-800:]!r}"
            else:
                x = tmp_path / f"x{n}"
                x.mkdir()
                t = subprocess.run(["tar", "-xpf", str(tar), "-C", str(x)], capture_output=True)
                got = manifest(x / str(sandbox.src).lstrip("/"))
                bad = t.stderr.decode() if t.returncode else diff_manifests(expected[sid], got)
                failed = f"dump after a killed one: {bad}" if bad else no_blocking_lock(sandbox)
                tar.unlink()
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    rounds.assert_survived()


# -------------------------------------------------------------------- cleanup
RETENTION = ("[retention]\nkeep_last = 2\nkeep_hourly = 0\nkeep_daily = 0\nkeep_weekly = 0\n"
             "keep_monthly = 0\nkeep_yearly = 0\nkeep_within_days = 0\n")


def test_sigkill_cleanup(sandbox, tmp_path, fault_budget, fault_report):
    """Cleanup (forget + prune) killed; the snapshots retention keeps are never touched,
    every snapshot still there restores identical, and the next cleanup completes."""
    rng = fault_budget.rng()
    sandbox.extra = RETENTION
    sandbox.write_config()
    expected = files_sandbox_with_snapshots(sandbox, rng, 4)
    order = sorted(expected, key=lambda s: sandbox.engine().snapshot(s)["time"])
    rounds = Rounds(fault_report, "cleanup")
    _, dur = timed_cli(sandbox, "cleanup")
    expected = {s: expected[s] for s in snapshot_ids(sandbox)}
    for n in range(fault_budget.pick(8, 40)):
        eng = sandbox.engine()
        for k in range(rng.randint(2, 3)):  # snapshots for retention to forget
            mutate(sandbox.src, rng, 100 * n + k)
            m = manifest(sandbox.src)
            sid = eng.backup("files", "src", replicate=False).id
            expected[sid] = m
            order.append(sid)
        keep = [s for s in order if s in expected][-2:]
        proc = popen_cli(sandbox, "cleanup")
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        present = set(snapshot_ids(sandbox))
        lost = "" if set(keep) <= present else f"kept snapshots deleted: {set(keep) - present}"
        expected = {s: m for s, m in expected.items() if s in present}
        lost = lost or check_files_repo(sandbox, expected, tmp_path)
        failed = ""
        if not lost:
            proc, dur = timed_cli(sandbox, "cleanup")
            present = set(snapshot_ids(sandbox))
            if proc.returncode != 0:
                failed = f"cleanup again: {describe(proc)}"
            elif present != set(keep):
                failed = f"after cleanup: {sorted(present)} but retention keeps {keep}"
            else:
                expected = {s: expected[s] for s in keep}
                failed = check_files_repo(sandbox, expected, tmp_path) or \
                    no_blocking_lock(sandbox)
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    rounds.assert_survived()


# ------------------------------------------------------------------ databases
@pytest.fixture
def shop_sandbox(sandbox, pg_cluster):
    from test_db import SCHEMA

    name = f"shop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA, name)
    pg_cluster.psql("CREATE TABLE docs AS SELECT g AS id, repeat(md5(g::text), 40) AS body "
                    "FROM generate_series(1, 20000) g", name)
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(name)}"\n'
    sandbox.write_config()
    sandbox.db = name
    sandbox.engine(init=True)
    return sandbox


def db_print(cluster, db: str) -> dict:
    from test_db import fingerprint

    out = fingerprint(cluster, db)
    out["docs"] = cluster.psql("SELECT count(*) || ':' || md5(string_agg(body, ',' ORDER BY id))"
                               " FROM docs", db).strip()
    return out


def restore_db_check(sb, cluster, expected: dict[str, dict], only) -> str:
    """verify --read-data, then each snapshot in ``only`` restored into a new database and
    compared with the fingerprint of the source when it was taken."""
    try:
        eng = sb.engine()
        report = eng.verify(read_data=True)
        if not report.ok:
            return "verify --read-data: " + "; ".join(p.message for p in report.problems[:5])
        for sid in only:
            target = f"chk_{uuid.uuid4().hex[:8]}"
            eng.restore(eng.plan_restore(sid, target_db=target))
            got = db_print(cluster, target)
            cluster.psql(f"DROP DATABASE {target}")
            if got != expected[sid]:
                return f"snapshot {sid[:12]} restores different: {got} != {expected[sid]}"
    except Exception:
        return "integrity check raised: " + traceback.format_exc()[-1500:]
    return ""


def test_sigkill_db_backup(shop_sandbox, pg_cluster, fault_budget, fault_report):
    sb, rng = shop_sandbox, fault_budget.rng()
    rounds = Rounds(fault_report, "backup db")
    expected: dict[str, dict] = {}
    fp = db_print(pg_cluster, sb.db)
    sid, err, dur = backup_json(sb, "db", "shop")
    assert sid, err
    expected[sid] = fp
    for n in range(fault_budget.pick(6, 30)):
        pg_cluster.psql(f"INSERT INTO docs SELECT 100000 * {n + 1} + g, md5(random()::text) "
                        f"FROM generate_series(1, {rng.randint(10, 500)}) g", sb.db)
        fp = db_print(pg_cluster, sb.db)
        before = set(snapshot_ids(sb))
        proc = popen_cli(sb, "backup", "db", "shop", "--json")
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        new = set(snapshot_ids(sb)) - before
        for s in new:
            expected[s] = fp
        lost = restore_db_check(sb, pg_cluster, expected, sorted(new))
        failed = ""
        if not lost:
            sid, failed, dur = backup_json(sb, "db", "shop")
            if sid:
                expected[sid] = fp
                failed = no_blocking_lock(sb)
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    if not rounds.problems:
        lost = restore_db_check(sb, pg_cluster, expected, sorted(expected))
        assert not lost, lost
    rounds.assert_survived()


def databases_like(cluster, prefix: str) -> list[str]:
    rows = cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' "
                        "ORDER BY 1")
    return [r.strip() for r in rows.splitlines() if r.strip()]


def accepts_connections(cluster, db: str) -> str:
    try:
        psycopg2.connect(cluster.dsn(db), connect_timeout=5).close()
    except psycopg2.Error as e:
        return f"{db} does not accept connections: {str(e).strip()}"
    return ""


def test_sigkill_db_restore_replace(shop_sandbox, pg_cluster, fault_budget, fault_report):
    """``restore db --replace`` killed at any moment: the application's database still
    accepts connections and holds either its data before or the snapshot's; the next
    restore completes and leaves no temporary database behind."""
    sb, rng = shop_sandbox, fault_budget.rng()
    rounds = Rounds(fault_report, "restore db --replace")
    fp_snap = db_print(pg_cluster, sb.db)
    sid, err, _ = backup_json(sb, "db", "shop")
    assert sid, err
    args = ("restore", "db", sid, "--target-db", sb.db, "--replace", "--yes")
    proc, dur = timed_cli(sb, *args)
    assert proc.returncode == 0, describe(proc)
    for n in range(fault_budget.pick(6, 30)):
        pg_cluster.psql(f"DELETE FROM orders WHERE id % {n + 7} = 0", sb.db)  # the accident
        fp_before = db_print(pg_cluster, sb.db)
        proc = popen_cli(sb, *args)
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        lost = accepts_connections(pg_cluster, sb.db)
        if not lost:
            now = db_print(pg_cluster, sb.db)
            if now not in (fp_before, fp_snap):
                lost = f"{sb.db} holds neither its data nor the snapshot's: {now}"
        failed = ""
        if not lost:
            proc, dur = timed_cli(sb, *args)
            if proc.returncode != 0:
                failed = f"restore --replace again: {describe(proc)}"
            elif db_print(pg_cluster, sb.db) != fp_snap:
                failed = "restore --replace again: the database differs from the snapshot"
            else:
                left = databases_like(pg_cluster, f"{sb.db}__restoring")
                failed = f"temporary databases left: {left}" if left else \
                    no_blocking_lock(sb)
        for old in databases_like(pg_cluster, f"{sb.db}__old"):  # tidy: kept by design
            pg_cluster.psql(f"DROP DATABASE IF EXISTS {old}")
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    rounds.assert_survived()


# ------------------------------------------------------------------ replicate
def test_sigkill_replicate(sandbox, s3_server, s3_buckets, tmp_path, fault_budget,
                           fault_report):
    """replicate killed: the replica stays a consistent repository (verify --replica
    --read-data clean, what it lists restores identical) and the next run completes."""
    from test_s3 import replica_toml

    rng = fault_budget.rng()
    sandbox.extra = replica_toml("use1", s3_buckets.use1, "us-east-1", s3_server.endpoint_url,
                                 replicate_after_backup=False)
    sandbox.write_config()
    expected = files_sandbox_with_snapshots(sandbox, rng, 1, size=128 * KIB)
    rounds = Rounds(fault_report, "replicate")
    proc, dur = timed_cli(sandbox, "replicate")
    assert proc.returncode == 0, describe(proc)
    for n in range(fault_budget.pick(6, 30)):
        eng = sandbox.engine()
        mutate(sandbox.src, rng, n, files=6, size=512 * KIB)
        m = manifest(sandbox.src)
        sid = eng.backup("files", "src", replicate=False).id
        expected[sid] = m
        proc = popen_cli(sandbox, "replicate")
        hit = kill_after(proc, rng.uniform(0.05, 0.9) * dur)
        remote = sandbox.engine().for_replica("use1")
        there = {s.id for s in remote.snapshots()}
        lost = check_files_repo(sandbox, {s: expected[s] for s in there}, tmp_path,
                                only=[sid] if sid in there else [], engine=remote)
        failed = ""
        if not lost:
            proc, dur = timed_cli(sandbox, "replicate")
            remote = sandbox.engine().for_replica("use1")
            if proc.returncode != 0:
                failed = f"replicate again: {describe(proc)}"
            else:
                failed = check_files_repo(sandbox, expected, tmp_path, only=[sid],
                                          engine=remote) or no_blocking_lock(sandbox)
        rounds.outcome(lost, failed, hit)
        if rounds.stop_early():
            break
    rounds.assert_survived()
