"""Smoke tests for the test harness itself: real PostgreSQL and real S3 protocol."""

from __future__ import annotations

import psycopg2
import pytest


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
