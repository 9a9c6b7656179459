"""The sandbox itself (engine/sandbox/): real PostgreSQL, real S3 protocol, loopback
ports, and folders whose mode only the sandbox's own are given."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import psycopg2
import pytest

from engine.sandbox import (
    PgCluster,
    PgError,
    S3Server,
    free_port,
    loopback_aws_env,
    make_dirs,
    port_free,
    port_open,
    reachable_tempdir,
)


def test_pg_cluster_answers_version(pg_cluster):
    conn = psycopg2.connect(
        host="127.0.0.1", port=pg_cluster.port, user=pg_cluster.superuser, dbname="postgres"
    )
    try:
        with conn.cursor() as cur:
            cur.execute("select version()")
            (version,) = cur.fetchone()
    finally:
        conn.close()
    assert version.startswith("PostgreSQL ")
    assert pg_cluster.port != 5432


def test_pg_cluster_helpers(pg_cluster):
    assert pg_cluster.psql("select 1 + 1") == "2\n"
    name = pg_cluster.createdb("harness_smoke")
    assert pg_cluster.psql("select current_database()", db=name).strip() == name
    conn = psycopg2.connect(pg_cluster.dsn(name))
    conn.close()
    env = pg_cluster.env()
    assert env["PGHOST"] == "127.0.0.1" and env["PGPORT"] == str(pg_cluster.port)
    assert pg_cluster.socket_dir.is_dir()


def test_pg_password_login(pg_cluster):
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=pg_cluster.port,
        user="app_user",
        password="secret",
        dbname="postgres",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == ("app_user",)
    finally:
        conn.close()

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1",
            port=pg_cluster.port,
            user="app_user",
            password="wrong",
            dbname="postgres",
        )


def test_pg_stop_start(pg_cluster):
    pg_cluster.stop()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg_cluster.dsn(), connect_timeout=2)
    pg_cluster.start()
    assert pg_cluster.psql("select 42") == "42\n"


@pytest.mark.parametrize(
    ("attr", "region"), [("bucket_use1", "us-east-1"), ("bucket_euw1", "eu-west-1")]
)
def test_s3_put_get_and_location(s3_server, attr, region):
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    bucket = getattr(s3_server, attr)
    s3 = s3_server.client(region)
    s3.put_object(Bucket=bucket, Key="smoke/hello.txt", Body=b"hello " + region.encode())
    body = s3.get_object(Bucket=bucket, Key="smoke/hello.txt")["Body"].read()
    assert body == b"hello " + region.encode()
    location = s3.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    # S3 reports us-east-1 as an empty location constraint.
    assert (location or "us-east-1") == region
    assert s3_server.bucket_region(bucket) == region


def test_s3_buckets_are_fresh_per_test(s3_server, s3_buckets):
    use1, euw1 = s3_buckets
    assert use1 != s3_server.bucket_use1 and euw1 != s3_server.bucket_euw1
    assert s3_server.bucket_region(use1) == "us-east-1"
    assert s3_server.bucket_region(euw1) == "eu-west-1"
    assert s3_server.client("eu-west-1").list_objects_v2(Bucket=euw1)["KeyCount"] == 0


def test_ports_are_loopback_only():
    port = free_port()
    assert port_free(port) and not port_open(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        assert port_open(port) and not port_free(port)
    for call in (free_port, lambda h: port_open(80, h), lambda h: port_free(80, h)):
        with pytest.raises(ValueError, match="loopback only"):
            call("192.0.2.1")


def test_make_dirs_sets_the_mode_of_its_own_folders_only(tmp_path):
    mine = tmp_path / "theirs"
    mine.mkdir(mode=0o700)
    created = make_dirs(mine / "a" / "b")
    assert created == [mine / "a", mine / "a" / "b"]
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700  # not made here: left alone
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in created)
    assert make_dirs(mine) == []
    t = reachable_tempdir("sandbox-test-")
    try:
        assert stat.S_IMODE(t.stat().st_mode) == 0o755
    finally:
        t.rmdir()


def test_loopback_aws_env():
    env = {"AWS_PROFILE": "prod", "AWS_ENDPOINT_URL": "https://example.com",
           "NO_PROXY": "internal"}
    loopback_aws_env(env, "k", "s")
    assert "AWS_PROFILE" not in env and "AWS_ENDPOINT_URL" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "k" and env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["NO_PROXY"] == "internal,127.0.0.1,localhost,::1"
    assert env["no_proxy"] == "127.0.0.1,localhost,::1"


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres OS user matters only under root")
def test_pg_cluster_refuses_an_unreachable_folder_and_leaves_its_mode(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="sandbox-test-"))  # 0700: closed to postgres
    try:
        cluster = PgCluster(base / "pg")
        with pytest.raises(PgError, match="cannot reach"):
            cluster.init()
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
        cluster.destroy()
        assert base.exists()
    finally:
        shutil.rmtree(base)


def test_pg_cluster_in_a_folder_of_the_caller_outlives_its_object():
    base = reachable_tempdir("sandbox-test-")
    try:
        (base / "keep.txt").write_text("mine")
        with pytest.raises(PgError, match="new or empty folder"):
            PgCluster(base).init()
        assert (base / "keep.txt").exists()
        cluster = PgCluster.create(base / "pg", app_user=False)
        assert cluster.answers() and cluster.socket_dir.is_dir()
        cluster.psql("ALTER SYSTEM SET work_mem = '8MB'; CREATE DATABASE two")
        cluster.stop()
        again = PgCluster(base / "pg", port=cluster.port)  # as another process names it
        assert not again.running() and not again.answers()
        again.start()
        assert again.psql("SHOW work_mem", "two") == "8MB\n"
        again.destroy()
        assert not (base / "pg").exists() and not cluster.running()
    finally:
        shutil.rmtree(base)


def test_s3_server_moves_off_a_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = S3Server(port=port, log_path=tmp_path / "s3.log")
        try:
            server.start()
            assert server.port != port and server.running()
            name = server.make_bucket("moved", "eu-west-1")
            server.client("eu-west-1").put_object(Bucket=name, Key="k", Body=b"v")
            server.remove_bucket(name)
            assert "moved" not in [b["Name"] for b in server.client().list_buckets()["Buckets"]]
        finally:
            server.stop()
    assert not server.running() and (tmp_path / "s3.log").exists()
