"""``restore db --replace`` killed at any moment leaves the application its database.

The CLI runs as a subprocess and dies by SIGKILL at each named point of
engine/ops/restore_db.py (``BACKUP_TUI_FAULT_POINT``: before the temporary
database exists, just after, during pg_restore, during the property phase,
inside the swap transaction after each rename, after its commit) and at seeded
moments from outside. After each kill: the application's role connects to its
database under its name (``datallowconn`` never changed), and finds its rows --
the ones it had, or, once the swap committed, the snapshot's. Then the next
restore, or ``backup-tui doctor --fix``, leaves no ``__restoring_`` database
of this tool behind; one the tool did not record is left alone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import psycopg2
import pytest

from engine.ops.restore_db import FAULT_POINTS

ROWS = "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {} t"


@pytest.fixture
def app_db(sandbox, pg_cluster):
    """A database owned by the application's login role (password auth), with data; the
    tool connects as the superuser."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.psql(f"CREATE DATABASE {name} OWNER {pg_cluster.app_user}")
    app = f"postgresql://{pg_cluster.app_user}:{pg_cluster.app_password}@{pg_cluster.host}:" \
          f"{pg_cluster.port}/{name}"
    with psycopg2.connect(app) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                    "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
    conn.close()
    sandbox.extra = f'[[database]]\nname = "app"\ndsn = "{pg_cluster.dsn(name)}"\n'
    sandbox.write_config()
    sandbox.db, sandbox.app_dsn = name, app
    sandbox.engine(init=True)
    return sandbox


def app_rows(sb, timeout: float = 30.0) -> str:
    """The application's view of its data, as its own role; raises if it cannot connect
    (a rename's lock, held until a dead client's transaction is rolled back, may make a
    connection wait a few seconds: that is not an outage)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg2.connect(sb.app_dsn, connect_timeout=10)
            break
        except psycopg2.OperationalError as e:
            if "does not exist" in str(e) or time.monotonic() > deadline:
                raise AssertionError(f"the application cannot connect to {sb.db}: {e}") \
                    from None
            time.sleep(0.3)
    try:
        with conn.cursor() as cur:
            cur.execute(ROWS.format("orders"))
            return cur.fetchone()[0]
    finally:
        conn.close()


def databases(cluster, like: str) -> list[str]:
    out = cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{like}' ORDER BY 1")
    return [r for r in out.split() if r]


def allow_conn(cluster, db: str) -> str:
    return cluster.psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{db}'").strip()


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("BACKUP_TUI_FAULT_POINT", None)
    env.update(extra)
    return env


def drop_old(cluster, db: str) -> None:
    for old in databases(cluster, f"{db}\\_\\_old\\_%"):
        cluster.psql(f'DROP DATABASE IF EXISTS "{old}"')


def test_kill_at_every_point_of_restore_replace(app_db, pg_cluster):
    sb = app_db
    snap_rows = app_rows(sb)
    sid = json.loads(sb.cli("backup", "db", "app", "--json", check=True).stdout)["id"]
    args = ("restore", "db", sid, "--target-db", sb.db, "--replace", "--yes")
    rng = random.Random(20261130)
    # every named point, then seeded moments from outside (the duration of a full run is
    # measured first)
    t0 = time.monotonic()
    proc = sb.cli(*args)
    full = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr.decode()
    drop_old(pg_cluster, sb.db)
    rounds = [(p, None) for p in FAULT_POINTS] + \
        [(None, rng.uniform(0.2, 1.0) * full) for _ in range(4)]
    killed = 0
    for n, (point, after) in enumerate(rounds):
        pg_cluster.psql(f"DELETE FROM orders WHERE id % {n + 5} = 0", sb.db)  # the accident
        before = app_rows(sb)
        assert before != snap_rows
        cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args]
        env = cli_env(**({"BACKUP_TUI_FAULT_POINT": point} if point else {}))
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if point:
            out, err = p.communicate(timeout=300)
            assert p.returncode == -signal.SIGKILL, (point, p.returncode, err.decode())
            killed += 1
        else:
            try:
                p.wait(timeout=after)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                killed += 1
            p.communicate()
        what = point or f"SIGKILL after {after:.2f}s"
        # the application's database: under its name, open, with its rows or the snapshot's
        now = app_rows(sb)
        assert allow_conn(pg_cluster, sb.db) == "t", what
        if point == "swapped":
            assert now == snap_rows, what
        elif point:
            assert now == before, what
        else:
            assert now in (before, snap_rows), what
        # then alternately the next restore, or doctor --fix, cleans up
        if n % 2:
            doc = sb.cli("doctor", "--json")
            report = json.loads(doc.stdout)
            left = databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%")
            if left:  # what doctor would drop is named, with the way to do it
                assert any(left[0] in line for line in report["to_fix"]), (what, report)
                assert doc.returncode == 1
            fixed = sb.cli("doctor", "--fix", "--json")
            assert json.loads(fixed.stdout)["ok"], (what, fixed.stdout.decode())
            assert databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%") == [], what
            assert app_rows(sb) == now, what
            again = sb.cli("doctor", "--json")
            assert again.returncode == 0 and json.loads(again.stdout)["to_fix"] == [], what
        else:
            proc = sb.cli(*args)
            assert proc.returncode == 0, (what, proc.stderr.decode())
            assert app_rows(sb) == snap_rows, what
        assert databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%") == [], what
        assert not os.listdir(sb.state / "restore-db"), what
        drop_old(pg_cluster, sb.db)
    assert killed >= 10


def test_doctor_leaves_what_it_did_not_record(app_db, pg_cluster):
    """A ``__restoring_`` database no journal entry names, and a database closed to
    connections, are reported, never dropped or changed; a journal entry of a live run is
    left alone."""
    sb = app_db
    foreign = f"{sb.db}__restoring_20990101000000"
    closed = f"closed_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql(f'CREATE DATABASE "{foreign}"')
    pg_cluster.psql(f"CREATE DATABASE {closed}")
    pg_cluster.psql(f"ALTER DATABASE {closed} ALLOW_CONNECTIONS false")
    live = sb.state / "restore-db"
    live.mkdir(parents=True, exist_ok=True)
    from engine.repo import locks as host

    entry = {"version": 1, "job": "live", "host": host.hostname(), "boot": host.boot_id(),
             "pid": os.getpid(), "pid_start": host.pid_start(os.getpid()), "kind": "db",
             "source": "app", "where": "x", "target_db": sb.db,
             "temp_db": f"{sb.db}__restoring_20990101000001", "temp_oid": None,
             "old_db": None, "drop_old": False, "staged": None, "phase": "restoring"}
    pg_cluster.psql(f'CREATE DATABASE "{entry["temp_db"]}"')
    (live / "live.json").write_text(json.dumps(entry))
    try:
        doc = sb.cli("doctor", "--fix", "--json")
        report = json.loads(doc.stdout)
        assert doc.returncode == 0, doc.stderr.decode()
        assert any(foreign in n and "left alone" in n for n in report["notes"])
        assert any(closed in n and "ALLOW_CONNECTIONS true" in n for n in report["notes"])
        assert any("still running" in r for r in report["running"])
        assert databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%") == sorted(
            [foreign, entry["temp_db"]])
        assert allow_conn(pg_cluster, closed) == "f"
        assert (live / "live.json").exists()
        human = sb.cli("doctor")
        assert human.returncode == 0 and b"still running" in human.stdout
    finally:
        for db in (foreign, entry["temp_db"], closed):
            pg_cluster.psql(f'DROP DATABASE IF EXISTS "{db}"')


def test_swap_terminates_sessions_and_commits_in_one_transaction(app_db, pg_cluster):
    """An open application session does not stop the swap; afterwards the old database
    is open under its dated name and the new one under the target's."""
    sb = app_db
    sid = json.loads(sb.cli("backup", "db", "app", "--json", check=True).stdout)["id"]
    session = psycopg2.connect(sb.app_dsn)
    session.autocommit = True
    with session.cursor() as cur:
        cur.execute("DELETE FROM orders WHERE id > 10")
    out = sb.cli("restore", "db", sid, "--target-db", sb.db, "--replace", "--yes", "--json")
    assert out.returncode == 0, out.stderr.decode()
    old = json.loads(out.stdout)["old_db"]
    assert allow_conn(pg_cluster, old) == "t" and allow_conn(pg_cluster, sb.db) == "t"
    assert pg_cluster.psql("SELECT count(*) FROM orders", old).strip() == "10"
    assert app_rows(sb).startswith("3000:")
    with pytest.raises(psycopg2.Error):  # it was terminated
        with session.cursor() as cur:
            cur.execute("SELECT 1")
    pg_cluster.psql(f'DROP DATABASE "{old}"')


def test_doctor_names_what_it_cannot_settle(app_db, pg_cluster):
    """A dead run's entry whose [[database]] left the config, and an unreadable entry, are
    problems (exit 1) that name the file to remove once checked; nothing is dropped."""
    sb = app_db
    folder = sb.state / "restore-db"
    folder.mkdir(parents=True, exist_ok=True)
    temp = f"{sb.db}__restoring_20990101000002"
    pg_cluster.psql(f'CREATE DATABASE "{temp}"')
    entry = {"version": 1, "job": "gone", "host": "h", "boot": None, "pid": 0,
             "kind": "db", "source": "removed", "where": "x", "target_db": sb.db,
             "temp_db": temp, "temp_oid": None, "old_db": None, "drop_old": False,
             "staged": None, "phase": "restoring"}
    import socket

    entry["host"] = socket.gethostname()
    (folder / "gone.json").write_text(json.dumps(entry))
    (folder / "junk.json").write_text("{not json")
    try:
        doc = sb.cli("doctor", "--fix", "--json")
        assert doc.returncode == 1, doc.stderr.decode()
        problems = json.loads(doc.stdout)["problems"]
        assert any("'removed' is no longer in the config" in p and "gone.json" in p
                   for p in problems), problems
        assert any("junk.json" in p for p in problems), problems
        assert temp in databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%")
    finally:
        pg_cluster.psql(f'DROP DATABASE IF EXISTS "{temp}"')


def test_directory_format_kill_during_pg_restore_leaves_nothing_after_doctor(app_db, pg_cluster):
    """A directory-format dump is staged in the state dir for a parallel pg_restore; a kill
    then leaves the folder, a temporary database and possibly a pg_restore still running:
    doctor --fix drops the database (ending that session) and removes the folder."""
    sb = app_db
    sb.extra = sb.extra.replace('dsn = ', 'format = "directory"\njobs = 2\ndsn = ')
    sb.write_config()
    sid = json.loads(sb.cli("backup", "db", "app", "--json", check=True).stdout)["id"]
    before = app_rows(sb)
    cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), "restore",
           "db", sid, "--target-db", sb.db, "--replace", "--yes"]
    p = subprocess.run(cmd, env=cli_env(BACKUP_TUI_FAULT_POINT="pg_restore"),
                       capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    assert app_rows(sb) == before and allow_conn(pg_cluster, sb.db) == "t"
    staged = [d for d in os.listdir(sb.state / "tmp") if d.startswith("restore-")]
    assert staged and databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%")
    fixed = sb.cli("doctor", "--fix", "--json")
    assert json.loads(fixed.stdout)["ok"], fixed.stdout.decode()
    assert databases(pg_cluster, f"{sb.db}\\_\\_restoring\\_%") == []
    assert not [d for d in os.listdir(sb.state / "tmp") if d.startswith("restore-")]
    assert app_rows(sb) == before


@pytest.mark.parametrize("setgid", [False, True])
def test_journal_is_durable_and_shared_with_admins_when_the_state_dir_is(tmp_path, setgid):
    """The entry is complete on disk before the server is touched (atomic replace); in a
    setgid state directory (an admin group) the folder and entries are the group's, so
    another admin's next run or doctor can settle them."""
    from engine.ops.restore_db import DbRestorePlan, SwapJournal, journal_dir, journal_entries
    from engine.sources.pgconn import PgTarget

    state = tmp_path / "state"
    state.mkdir()
    if setgid:
        os.chmod(state, 0o2775)
    plan = DbRestorePlan({"id": "x" * 64, "kind": "db", "source": "app"},
                         PgTarget("app", {"host": "127.0.0.1"}, "config"), "app", True, True,
                         "app__restoring_1", "app__old_1")
    j = SwapJournal(journal_dir(state), plan, "job-1", None)
    j.write()
    j.write(temp_oid=42)
    entries, bad = journal_entries(state)
    assert not bad and [e.entry["temp_oid"] for e in entries] == [42]
    assert entries[0].alive()  # this very process
    folder = os.stat(journal_dir(state)).st_mode
    entry = os.stat(j.path).st_mode
    assert stat_mode(folder) == (0o2770 if setgid else 0o700)
    assert stat_mode(entry) == (0o660 if setgid else 0o600)
    assert os.listdir(journal_dir(state)) == ["job-1.json"]  # no temporary file left
    j.remove()
    assert journal_entries(state) == ([], [])


def stat_mode(mode: int) -> int:
    import stat

    return stat.S_IMODE(mode)


def test_dated_names_already_taken_are_not_reused(app_db, pg_cluster):
    """Two replaces within one second (a retry right after a kill that came after the
    commit) must not collide on the dated names: a taken one gets a suffix."""
    from datetime import UTC, datetime, timedelta

    sb = app_db
    sid = json.loads(sb.cli("backup", "db", "app", "--json", check=True).stdout)["id"]
    now = datetime.now(UTC)
    taken = [f"{sb.db}__old_{(now + timedelta(seconds=k)).strftime('%Y%m%d%H%M%S')}"
             for k in range(4)]
    for name in taken:
        pg_cluster.psql(f'CREATE DATABASE "{name}"')
    try:
        out = sb.cli("restore", "db", sid, "--target-db", sb.db, "--replace", "--yes",
                     "--json")
        assert out.returncode == 0, out.stderr.decode()
        old = json.loads(out.stdout)["old_db"]
        assert old not in taken and old.endswith("_1")
        assert app_rows(sb).startswith("3000:")
    finally:
        for name in databases(pg_cluster, f"{sb.db}\\_\\_old\\_%"):
            pg_cluster.psql(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_journal_file_killed_half_written_is_removed(tmp_path):
    """A kill inside the journal's write leaves ``<entry>.<pid>.tmp``, which no entry names:
    doctor lists it, doctor --fix (and the next restore, ``settle_dead_runs``) removes it
    once its process is gone; a live process's file is left alone."""
    from engine.config import parse_config
    from engine.ops.doctor import doctor
    from engine.ops.restore_db import journal_dir

    state = tmp_path / "state"
    folder = state / "restore-db"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = folder / f"restore-x.json.{dead.pid}.tmp"
    live = folder / f"restore-y.json.{os.getppid()}.tmp"  # our parent: alive
    left.write_text("{")
    live.write_text("{")
    config = parse_config({"repository": {"path": str(tmp_path / "repo")},
                           "state": {"dir": str(state)}})
    assert journal_dir(state) == str(folder)
    report = doctor(config, fix=False)
    assert report.to_fix == [f"would remove a half-written restore journal file {left}"]
    assert left.exists()
    report = doctor(config, fix=True)
    assert report.fixed == [f"removed a half-written restore journal file {left}"]
    assert sorted(os.listdir(folder)) == [live.name]
