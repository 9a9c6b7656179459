"""PostgreSQL logical backups and restores against a real server (the pg_cluster fixture)."""

from __future__ import annotations

import json
import subprocess
import uuid

import psycopg2
import pytest

from engine.errors import EngineError, NotFound, UsageError

SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, created timestamptz
  DEFAULT now());
CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users(id), total numeric(10,2),
  note text);
CREATE INDEX orders_user ON orders(user_id);
INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO orders (user_id, total, note)
  SELECT 1 + (g % 2000), (g * 7 % 1000) / 10.0, repeat('x', g % 50)
  FROM generate_series(1, 5000) g;
"""


def fingerprint(cluster, db: str) -> dict:
    out = {}
    for table in ("users", "orders"):
        row = cluster.psql(
            f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) "
            f"FROM {table} t",
            db,
        )
        out[table] = row.strip()
    return out


@pytest.fixture
def shop(pg_cluster):
    """A fresh application-like database on the test cluster."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA, name)
    return name


@pytest.fixture
def db_sandbox(sandbox, pg_cluster, shop):
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(shop)}"\n'
    sandbox.write_config()
    sandbox.db = shop
    return sandbox


def new_db_name() -> str:
    return f"restored_{uuid.uuid4().hex[:8]}"


def test_backup_and_restore_roundtrip(db_sandbox, pg_cluster):
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    snap = eng.snapshot(res.id)
    assert snap["kind"] == "db" and snap["postgres"]["server_major"] == pg_cluster.version
    assert snap["postgres"]["pg_dump"].startswith("pg_dump")
    assert snap["postgres"]["database_size"] > 0 and snap["globals"]
    assert eng.verify(read_data=True).ok
    target = new_db_name()
    result = eng.restore(eng.plan_restore(res.id, target_db=target))
    assert result.target_db == target and result.old_db is None
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, db_sandbox.db)


def test_second_backup_dedups_unchanged_data(db_sandbox, pg_cluster):
    # text bodies that are not periodic (a repeated pattern has no cut points at all)
    pg_cluster.psql("CREATE TABLE docs AS SELECT g AS id, (SELECT string_agg(md5((g * 100 + i)"
                    "::text), ' ') FROM generate_series(1, 20) i) AS body "
                    "FROM generate_series(1, 60000) g", db_sandbox.db)
    eng = db_sandbox.engine(init=True)
    first = eng.backup("db", "shop")
    assert first.size > 35 << 20
    pg_cluster.psql("INSERT INTO users (email) VALUES ('new@example.com')", db_sandbox.db)
    second = eng.backup("db", "shop")
    # Only the chunks around the changes are new: the one holding the new row and the
    # archive's table of contents (the sequence value moved), each with a neighbour at
    # worst, and a chunk is at most 4 MiB. Without dedup all ~40 MiB would be new.
    added = eng.snapshot(second.id)["stats"]["added_raw"]
    assert added <= 12 << 20 and added < first.size / 3


def test_dump_pipes_into_pg_restore(db_sandbox, pg_cluster):
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    target = new_db_name()
    pg_cluster.createdb(target)
    dump = db_sandbox.cli("dump", res.id[:12])
    assert dump.returncode == 0, dump.stderr
    env = pg_cluster.client_environ(target)
    restore = subprocess.run(
        [str(pg_cluster.bin_dir / "pg_restore"), "--exit-on-error", "-d", target],
        input=dump.stdout, capture_output=True, env=env,
    )
    assert restore.returncode == 0, restore.stderr
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, db_sandbox.db)


def test_replace_swaps_and_keeps_the_old_database(db_sandbox, pg_cluster):
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    before = fingerprint(pg_cluster, db_sandbox.db)
    pg_cluster.psql("DELETE FROM orders WHERE id > 100", db_sandbox.db)  # the accident
    proc = db_sandbox.cli("restore", "db", res.id, "--target-db", db_sandbox.db, "--replace",
                          "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert fingerprint(pg_cluster, db_sandbox.db) == before
    assert out["old_db"].startswith(db_sandbox.db + "__old_")
    assert pg_cluster.psql("SELECT count(*) FROM orders", out["old_db"]).strip() == "100"


def test_replace_needs_yes_and_existing_target_needs_replace(db_sandbox):
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    proc = db_sandbox.cli("restore", "db", res.id, "--target-db", db_sandbox.db)
    assert proc.returncode == 2 and b"already exists" in proc.stderr
    proc = db_sandbox.cli("restore", "db", res.id, "--target-db", db_sandbox.db, "--replace")
    assert proc.returncode == 2 and b"--yes" in proc.stderr


def test_failed_replace_leaves_the_original_serving(db_sandbox, pg_cluster):
    """A restore a missing role would break is refused before anything is written (the
    roles are checked against the archive's table of contents first; a failure after the
    data: tests/test_db_fidelity.py), and changes nothing."""
    role = f"owner_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql(f"CREATE ROLE {role}; ALTER TABLE orders OWNER TO {role}", db_sandbox.db)
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    before = fingerprint(pg_cluster, db_sandbox.db)
    pg_cluster.psql(f"ALTER TABLE orders OWNER TO postgres; DROP ROLE {role}", db_sandbox.db)
    plan = eng.plan_restore(res.id, target_db=db_sandbox.db, replace=True)
    with pytest.raises(EngineError) as e:
        eng.restore(plan)
    assert role in str(e.value) and "--no-owner" in str(e.value)
    assert fingerprint(pg_cluster, db_sandbox.db) == before
    leftovers = pg_cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE "
                                f"'{db_sandbox.db}__%'")
    assert leftovers.strip() == ""
    # and --no-owner gets it through
    ok = eng.restore(eng.plan_restore(res.id, target_db=new_db_name(), no_owner=True))
    assert fingerprint(pg_cluster, ok.target_db) == before


def test_restore_by_time_picks_newest_before(db_sandbox, pg_cluster):
    eng = db_sandbox.engine(init=True)
    first = eng.backup("db", "shop")
    second = eng.backup("db", "shop")
    t2 = eng.snapshot(second.id)["time"]
    snap, before = eng.snapshot_at("shop", eng.parse_time(t2))
    assert snap["id"] == second.id and before == 0
    t1 = eng.parse_time(eng.snapshot(first.id)["time"])
    proc = db_sandbox.cli("restore", "db", "--source", "shop", "--at", t1.isoformat(),
                          "--target-db", new_db_name())
    assert proc.returncode == 0, proc.stderr
    assert first.id[:8].encode() in proc.stderr
    proc = db_sandbox.cli("restore", "db", "--source", "shop", "--at", "2001-01-01T00:00",
                          "--target-db", new_db_name())
    assert proc.returncode == 1 and b"first one was taken" in proc.stderr
    proc = db_sandbox.cli("restore", "db", "--source", "shop", "--at", "yesterday noon",
                          "--target-db", new_db_name())
    assert proc.returncode == 2 and b"ISO 8601" in proc.stderr
    with pytest.raises(NotFound):
        eng.snapshot_at("nope", eng.parse_time("2030-01-01"))


@pytest.mark.parametrize(
    "dsn_kind, expect",
    [
        ("wrong_port", "unreachable"),
        ("no_db", "does not exist"),
        ("bad_password", "authentication failed"),
    ],
)
def test_connection_failures_are_clear(sandbox, pg_cluster, dsn_kind, expect):
    from engine.sandbox import free_port

    dsn = {
        "wrong_port": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "no_db": pg_cluster.dsn("no_such_db_here"),
        "bad_password": f"postgresql://app_user@127.0.0.1:{pg_cluster.port}/postgres",
    }[dsn_kind]
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{dsn}"\n'
    sandbox.write_config()
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "db", "shop", env={"PGPASSWORD": "wrong"})
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert expect in err and "database 'shop'" in err and len(err.strip().splitlines()) == 1
    assert "wrong" not in err.replace("wrong port", "")  # the password is never echoed
    assert sandbox.cli("list", "--json").stdout.strip() == b"[]"


def test_password_in_config_dsn_is_refused(sandbox, pg_cluster):
    sandbox.extra = ('[[database]]\nname = "shop"\n'
                     f'dsn = "postgresql://app_user:secret@127.0.0.1:{pg_cluster.port}/postgres"\n')
    sandbox.write_config()
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "db", "shop")
    assert proc.returncode == 2 and b"pgpass" in proc.stderr and b"secret" not in proc.stderr


def test_password_from_environment_reaches_pg_dump(sandbox, pg_cluster):
    """PGPASSWORD (environment), never argv: the app_user role needs a password."""
    pg_cluster.psql("GRANT pg_read_all_data TO app_user")
    sandbox.extra = ('[[database]]\nname = "shop"\n'
                     f'dsn = "postgresql://app_user@127.0.0.1:{pg_cluster.port}/postgres"\n')
    sandbox.write_config()
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "db", "shop", "--json", env={"PGPASSWORD": "secret"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kind"] == "db"


def test_dsn_from_database_url(sandbox, pg_cluster, shop):
    sandbox.extra = '[[database]]\nname = "shop"\n'
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    import os

    os.environ["DATABASE_URL"] = pg_cluster.dsn(shop)
    try:
        [info] = [dict(s.details) for s in eng.sources() if s.name == "shop"]
        assert info["from"] == "DATABASE_URL" and info["connection"].endswith(f"/{shop}")
        assert eng.backup("db", "shop").kind == "db"
    finally:
        del os.environ["DATABASE_URL"]


def test_pg_dump_killed_mid_stream_records_nothing(db_sandbox, pg_cluster, tmp_path):
    """A pg_dump that dies mid-stream: no snapshot, and the repository verifies clean."""
    fake = tmp_path / "pg_dump"
    real = pg_cluster.bin_dir / "pg_dump"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then exec {real} --version; fi\n'
                    f'{real} "$@" | head -c 20000\nkill -9 $$\n')
    fake.chmod(0o755)
    eng = db_sandbox.engine(init=True)
    import os

    os.environ["BACKUP_TUI_PG_DUMP"] = str(fake)
    try:
        with pytest.raises(EngineError, match="pg_dump was killed|pg_dump exited"):
            eng.backup("db", "shop")
    finally:
        del os.environ["BACKUP_TUI_PG_DUMP"]
    assert eng.snapshots() == []
    assert eng.verify(read_data=True).ok
    assert eng.backup("db", "shop").kind == "db"


def test_old_pg_dump_is_refused_naming_both_versions(db_sandbox, tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 12.9"\n')
    fake.chmod(0o755)
    eng = db_sandbox.engine(init=True)
    import os

    os.environ["BACKUP_TUI_PG_DUMP"] = str(fake)
    try:
        with pytest.raises(EngineError) as e:
            eng.backup("db", "shop")
    finally:
        del os.environ["BACKUP_TUI_PG_DUMP"]
    assert "version 12" in str(e.value) and "version 15" in str(e.value)


def test_missing_pg_dump_is_clear(db_sandbox, tmp_path):
    eng = db_sandbox.engine(init=True)
    import os

    os.environ["BACKUP_TUI_PG_DUMP"] = str(tmp_path / "nope")
    try:
        with pytest.raises(EngineError, match="cannot run"):
            eng.backup("db", "shop")
    finally:
        del os.environ["BACKUP_TUI_PG_DUMP"]


def test_verify_read_data_checks_the_archive(db_sandbox):
    eng = db_sandbox.engine(init=True)
    eng.backup("db", "shop")
    report = eng.verify(read_data=True)
    assert report.ok and report.archives_checked == 1


def test_unknown_database_name(db_sandbox):
    eng = db_sandbox.engine(init=True)
    with pytest.raises(UsageError, match="no \\[\\[database\\]\\] named"):
        eng.backup("db", "other")


def test_psycopg2_is_real(pg_cluster):
    conn = psycopg2.connect(host="127.0.0.1", port=pg_cluster.port, user="postgres",
                            dbname="postgres")
    conn.close()


def test_directory_format_parallel_roundtrip(sandbox, pg_cluster, shop, tmp_path):
    """format = "directory", jobs = 2: stored as a tree, restored with pg_restore -j."""
    sandbox.extra = (f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(shop)}"\n'
                     'format = "directory"\njobs = 2\n')
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    snap = eng.snapshot(res.id)
    assert snap["postgres"]["format"] == "directory" and "tree" in snap
    scratch = sandbox.state / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []  # nothing staged is left
    report = eng.verify(read_data=True)
    assert report.ok and report.archives_checked == 1
    target = new_db_name()
    eng.restore(eng.plan_restore(res.id, target_db=target))
    assert fingerprint(pg_cluster, target) == fingerprint(pg_cluster, shop)
    # dump gives a tar of the directory that pg_restore reads
    dump = sandbox.cli("dump", res.id)
    out = tmp_path / "dir"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=dump.stdout, check=True)
    assert (out / "toc.dat").exists()


def test_status_says_where_each_database_connects(db_sandbox):
    eng = db_sandbox.engine(init=True)
    eng.backup("db", "shop")
    proc = db_sandbox.cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    src = {s["name"]: s for s in json.loads(proc.stdout)["sources"]}
    assert src["shop"]["connection"]["from"] == "config"
    assert src["shop"]["last_good"] and src["shop"]["snapshots"] == 1
    assert src["src"]["last_good"] is None


def test_with_globals_recreates_missing_roles(db_sandbox, pg_cluster):
    role = f"owner_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql(f"CREATE ROLE {role}; ALTER TABLE users OWNER TO {role}", db_sandbox.db)
    eng = db_sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    pg_cluster.psql(f"DROP DATABASE {db_sandbox.db} WITH (FORCE)")
    pg_cluster.psql(f"DROP ROLE {role}")
    target = new_db_name()
    eng.restore(eng.plan_restore(res.id, target_db=target, with_globals=True))
    owner = pg_cluster.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'users'", target)
    assert owner.strip() == role
