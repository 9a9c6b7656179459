"""The cluster kind: base backups with pg_basebackup against a real PostgreSQL cluster.

The module starts its own cluster (the session one is shared with tests that add
databases as they go), with a ~50 MB table for the incremental figures.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from engine.errors import ConfigError, EngineError, UsageError
from engine.events import CancelToken
from engine.sandbox import PgCluster, free_port, reachable_tempdir
from engine.sources import basebackup
from engine.sources.cluster import restore_base

SCHEMA = """
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
INSERT INTO items (name, price) SELECT 'item ' || g, (g * 7 % 1000) / 10.0
  FROM generate_series(1, 5000) g;
CREATE TABLE big (id int, v text);
INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
  FROM generate_series(1, 360000) g;
"""


@pytest.fixture(scope="module")
def pgc():
    cluster = PgCluster.create()
    try:
        cluster.createdb("shop")
        cluster.psql(SCHEMA, "shop")
        cluster.psql("VACUUM (FREEZE, ANALYZE)", "shop")
        yield cluster
    finally:
        cluster.destroy()


def configure(sandbox, pgc, **keys) -> None:
    lines = ['[[cluster]]', 'name = "main"', f'dsn = "{keys.pop("dsn", pgc.dsn())}"',
             f'pgdata = "{pgc.data_dir}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    sandbox.extra = "\n".join(lines) + "\n"
    sandbox.write_config()


def fingerprint(cluster, db: str = "shop") -> dict:
    out = {}
    for table in ("items", "big"):
        out[table] = cluster.psql(
            f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) "
            f"FROM {table} t", db).strip()
    return out


def one_line(proc) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------- backup, list, dump
def test_backup_via_cli_lists_dumps_and_verifies(sandbox, pgc):
    configure(sandbox, pgc)
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "cluster", "main", "--json")
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert made["kind"] == "cluster" and made["source"] == "main" and made["added"] > 0

    listed = json.loads(sandbox.cli("list", "--kind", "cluster", "--json", check=True).stdout)
    assert [(s["id"], s["kind"], s["source"]) for s in listed] == [
        (made["id"], "cluster", "main")]
    assert listed[0]["size"] > 40 * 1024 * 1024  # the data directory as sent

    snap = json.loads(sandbox.cli("show", made["id"][:12], "--json", check=True).stdout)
    pg = snap["postgres"]
    sysid = pgc.psql("SELECT system_identifier FROM pg_control_system()").strip()
    assert pg["system_identifier"] == sysid
    assert pg["server_major"] == pgc.version and pg["server_version"] // 10000 == pgc.version
    assert pg["timeline"] == 1 and pg["wal_segment_size"] == 16 * 1024 * 1024
    start, stop = basebackup.parse_lsn(pg["start_lsn"]), basebackup.parse_lsn(pg["stop_lsn"])
    assert 0 < start < stop
    assert pg["start_wal"] == basebackup.wal_file_name(1, start // (16 << 20), 16 << 20)
    assert pg["stop_wal"] >= pg["start_wal"] and len(pg["stop_wal"]) == 24
    assert pg["backup_label"].startswith(f"START WAL LOCATION: {pg['start_lsn']} (file "
                                         f"{pg['start_wal']})")
    assert pg["start_time"] <= pg["stop_time"] <= snap["time"]
    assert snap["block_size"] == 16 * 1024 and isinstance(snap["tree"], str)

    dump = sandbox.cli("dump", made["id"][:12])
    assert dump.returncode == 0, dump.stderr
    names = subprocess.run(["tar", "-t"], input=dump.stdout, capture_output=True,
                           check=True).stdout.decode().split()
    assert {"PG_VERSION", "backup_label", "backup_manifest", "global/pg_control"} <= set(names)
    assert any(n.startswith("pg_wal/" + pg["start_wal"]) for n in names)
    with tarfile.open(fileobj=io.BytesIO(dump.stdout)) as tf:
        assert tf.extractfile("PG_VERSION").read().strip() == str(pgc.version).encode()
        assert tf.extractfile("backup_label").read().decode() == pg["backup_label"]

    verify = sandbox.cli("verify", "--read-data", "--json")
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"], report
    assert any("base backup of PostgreSQL" in n for n in report["notes"])

    status = json.loads(sandbox.cli("status", "--json", check=True).stdout)
    [mine] = [s for s in status["sources"] if s["kind"] == "cluster"]
    assert mine["name"] == "main" and mine["snapshots"] == 1
    assert mine["pgdata"] == str(pgc.data_dir) and "password" not in json.dumps(mine)
    assert mine["connection"]["where"] == f"127.0.0.1:{pgc.port}/postgres"

    wrong = sandbox.cli("restore", "files", made["id"][:12], "--target",
                        str(sandbox.root / "out"))
    assert wrong.returncode == 2 and "restore pitr --cluster main" in one_line(wrong)


# ---------------------------------------------------------------------- restore_base
def test_restore_base_starts_with_the_same_rows(sandbox, pgc):
    configure(sandbox, pgc)
    eng = sandbox.engine(init=True)
    pgc.psql("INSERT INTO items (name, price) VALUES ('restored marker', 1.5)", "shop")
    want = fingerprint(pgc)
    res = eng.backup("cluster", "main")
    pgc.psql("DELETE FROM items WHERE name = 'restored marker'", "shop")  # after: not restored
    snap = eng.snapshot(res.id)
    base = reachable_tempdir("restored-")
    restored = PgCluster(base, port=free_port())
    try:
        events = []
        out = restore_base(eng.repo(), snap, base / "data", "job", events.append, CancelToken())
        assert out["files"] == snap["stats"]["files"] and out["bytes"] == snap["stats"]["size"]
        assert events and events[-1].final
        data = base / "data"
        assert (data.stat().st_mode & 0o777) == 0o700
        modes = {p.stat().st_mode & 0o777 for p in data.rglob("*") if not p.is_symlink()}
        assert modes == {0o700, 0o600}
        if os.geteuid() == 0:
            import pwd

            uid = pwd.getpwnam("postgres").pw_uid
            assert {p.lstat().st_uid for p in [data, *data.rglob("*")]} == {uid}
        with pytest.raises(UsageError, match="not empty"):
            restore_base(eng.repo(), snap, data, "job", events.append, CancelToken())
        (base / "sock").mkdir(mode=0o755)
        (base / "postgres.log").touch()
        restored.chown_to_owner(base / "sock")
        restored.chown_to_owner(base / "postgres.log")
        restored.start()
        assert fingerprint(restored) == want
        assert "restored marker" in restored.psql("SELECT name FROM items WHERE price = 1.5",
                                                  "shop")
    finally:
        restored.destroy()


# ------------------------------------------------------------------ incremental figures
@pytest.mark.parametrize("block_kib", [8, 16, 64])
def test_second_backup_after_scattered_updates_adds_little(sandbox_factory, pgc, block_kib):
    sandbox = sandbox_factory()
    configure(sandbox, pgc, block_kib=block_kib)
    eng = sandbox.engine(init=True)
    pgc.psql("VACUUM (FREEZE) big; CHECKPOINT", "shop")
    table = int(pgc.psql("SELECT pg_relation_size('big')", "shop"))
    assert table > 45 * 1024 * 1024
    first = eng.backup("cluster", "main")
    pages = random.Random(block_kib).sample(range(table // 8192), 200)
    changed = pgc.psql(
        "WITH one AS (SELECT min(ctid) AS t FROM big WHERE (ctid::text::point)[0] = ANY("
        f"ARRAY{pages}) GROUP BY (ctid::text::point)[0]) "
        "UPDATE big SET v = md5(v) WHERE ctid IN (SELECT t FROM one) RETURNING 1", "shop")
    assert len(changed.split()) == 200
    pgc.psql("CHECKPOINT")
    second = eng.backup("cluster", "main")
    added = second.added
    print(f"\nblock_kib={block_kib}: table {table} bytes, cluster {second.size} bytes; "
          f"first backup added {first.added}, second added {added} "
          f"({100 * added / table:.1f}% of the table)")
    assert 0 < added < 0.25 * table
    assert eng.snapshot(second.id)["parent"] == first.id


# ------------------------------------------------------------------------ failures
def test_unreachable_server_and_bad_credentials_fail_in_one_line(sandbox, pgc):
    configure(sandbox, pgc, dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "cluster", "main")
    assert proc.returncode == 1 and "unreachable" in one_line(proc)
    assert "cluster 'main'" in proc.stderr.decode()

    configure(sandbox, pgc, dsn=pgc.dsn(user=pgc.app_user))  # a password role, none given
    proc = sandbox.cli("backup", "cluster", "main")
    assert proc.returncode == 1 and "authentication failed" in one_line(proc)

    pgc.psql("DO $$ BEGIN CREATE ROLE norepl LOGIN; EXCEPTION WHEN duplicate_object THEN "
             "NULL; END $$")
    configure(sandbox, pgc, dsn=pgc.dsn(user="norepl"))
    proc = sandbox.cli("backup", "cluster", "main")
    assert proc.returncode == 1 and "REPLICATION" in one_line(proc)
    assert json.loads(sandbox.cli("list", "--json", check=True).stdout) == []


def test_password_in_dsn_and_bad_block_size_are_config_errors(sandbox, pgc):
    from engine.config import load_config

    configure(sandbox, pgc, block_kib=12)
    with pytest.raises(ConfigError, match="block_kib must be a multiple of 8"):
        load_config(sandbox.config_path)
    configure(sandbox, pgc, dsn="postgresql://u:secret@127.0.0.1:5432/postgres")
    sandbox.engine(init=True)
    proc = sandbox.cli("backup", "cluster", "main")
    assert proc.returncode == 2 and "password" in one_line(proc)


def _children(pid: int, comm: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and name == comm:
            try:  # the streaming run, not the '--version' probe that picks the binary
                if b"-Ft" in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _start_slow_backup(sandbox) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
           "backup", "cluster", "main"]
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_TUI_PASSWORD"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = _children(proc.pid, "pg_basebackup")
        if kids:
            time.sleep(1.0)  # well into the stream
            assert proc.poll() is None, proc.communicate()
            return proc, kids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("pg_basebackup never started")


def test_killed_mid_stream_leaves_no_snapshot_and_the_next_backup_works(sandbox, pgc):
    configure(sandbox, pgc, max_rate="4M")  # ~15 s for the cluster: time to kill it
    eng = sandbox.engine(init=True)
    proc, child = _start_slow_backup(sandbox)
    os.kill(child, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    text = err.decode()
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert "killed by signal 9" in text and "no snapshot was written" in text
    assert eng.snapshots(kind="cluster") == []

    # the CLI itself killed: its pg_basebackup ends on the broken pipe, nothing committed
    proc, child = _start_slow_backup(sandbox)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    for _ in range(200):
        if not Path(f"/proc/{child}").exists():
            break
        time.sleep(0.1)
    assert eng.snapshots(kind="cluster") == []

    configure(sandbox, pgc)
    res = sandbox.engine().backup("cluster", "main")
    assert [s.id for s in sandbox.engine().snapshots(kind="cluster")] == [res.id]
    assert sandbox.engine().verify(read_data=True).ok


def test_cancel_kills_pg_basebackup(sandbox, pgc):
    configure(sandbox, pgc, max_rate="4M")
    eng = sandbox.engine(init=True)
    cancel = CancelToken()
    seen = []

    def on_event(ev):
        seen.append(ev)
        if ev.phase == "backup" and ev.bytes_done > 1024 * 1024:
            cancel.cancel()

    start = time.monotonic()
    with pytest.raises(EngineError, match="cancel"):
        eng.backup("cluster", "main", on_event=on_event, cancel=cancel)
    assert time.monotonic() - start < 10
    assert eng.snapshots(kind="cluster") == []
    assert _children(os.getpid(), "pg_basebackup") == []


# -------------------------------------------------------------------------- pieces
def test_relation_files_and_wal_names():
    rel = basebackup.is_relation
    assert rel(b"base/16384/16385") and rel(b"base/1/2608_fsm") and rel(b"base/5/1249_vm")
    assert rel(b"base/16384/16385.1") and rel(b"global/1262") and rel(b"base/5/17_init.3")
    assert rel(b"pg_tblspc/16400/PG_15_202209061/16384/16401")
    assert not rel(b"base/16384/pg_filenode.map") and not rel(b"global/pg_control")
    assert not rel(b"pg_wal/000000010000000000000002") and not rel(b"base/16384")
    assert not rel(b"pg_xact/0000") and not rel(b"base/16384/PG_VERSION")
    assert basebackup.parse_lsn("0/2000028") == 0x2000028
    assert basebackup.format_lsn(basebackup.parse_lsn("1A/FF000000")) == "1A/FF000000"
    assert basebackup.wal_file_name(1, basebackup.parse_lsn("1A/FF000000") // (16 << 20),
                                    16 << 20) == "000000010000001A000000FF"
    assert basebackup.block_size_for(16384, 10 * 1024**3) == 32768
    assert basebackup.block_size_for(16384, 1024**3) == 16384
    assert basebackup.label_time("2024-05-01 12:00:00 UTC") == "2024-05-01T12:00:00+00:00"
    assert basebackup.label_time("2024-05-01 14:00:00 CEST") is None
    with pytest.raises(EngineError):
        basebackup.parse_lsn("nonsense")


def test_a_truncated_tar_stream_is_an_error():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("base/1/1259")
        info.size = 16384
        tf.addfile(info, io.BytesIO(b"x" * 16384))
    whole = raw.getvalue()
    stream = basebackup.TarStream(io.BufferedReader(io.BytesIO(whole)))
    m = stream.next()
    assert m is not None and m.name == b"base/1/1259" and m.size == 16384
    assert bytes(stream.read_block(bytearray(8192))) == b"x" * 8192
    assert stream.next() is None and stream.ended
    cut = basebackup.TarStream(io.BufferedReader(io.BytesIO(whole[:512 + 9000])))
    cut.next()
    with pytest.raises(EngineError, match="ended in the middle"):
        while cut.read_block(bytearray(8192)):
            pass
    cut = basebackup.TarStream(io.BufferedReader(io.BytesIO(whole[:512 + 16384])))
    cut.next()
    with pytest.raises(EngineError, match="before its end marker"):
        cut.next()


def test_a_cluster_with_a_tablespace_is_refused_clearly(sandbox):
    """pg_basebackup cannot stream more than one tablespace as tar to a pipe: the backup
    fails in one line that names the reason, and writes no snapshot."""
    import pwd
    import shutil

    own = PgCluster.create()
    space = reachable_tempdir("btui-tblspc-")  # made here: handed to the server's OS user
    try:
        if own.os_owner:
            ent = pwd.getpwnam(own.os_owner)
            os.chown(space, ent.pw_uid, ent.pw_gid)
        own.psql(f"CREATE TABLESPACE extra LOCATION '{space}'")
        own.psql("CREATE TABLE on_extra (id int) TABLESPACE extra")
        configure(sandbox, own)
        sandbox.engine(init=True)
        proc = sandbox.cli("backup", "cluster", "main")
        err = one_line(proc)
        assert proc.returncode == 1 and "tablespaces" in err and "no snapshot" in err, err
        assert json.loads(sandbox.cli("list", "--json", check=True).stdout) == []
    finally:
        own.destroy()
        shutil.rmtree(space, ignore_errors=True)
