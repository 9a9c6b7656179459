"""Shared pytest fixtures for the backup-tui test-suite.

Real services only, on loopback (see tests/harness/ and DESIGN.md section 10):

* ``pg_cluster`` (session) -- a throwaway PostgreSQL cluster on a free port;
* ``s3_server``  (session) -- a moto_server S3 endpoint with buckets in
  us-east-1 and eu-west-1;
* ``s3_buckets`` (function) -- a fresh, uniquely named bucket pair per test.

Add further fixtures below, grouped by topic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import BucketPair, PgCluster, S3Server

# --- services -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for the whole session, stopped and removed after."""
    cluster = PgCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto_server S3 endpoint for the whole session, terminated after."""
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_buckets(s3_server: S3Server) -> BucketPair:
    """A fresh bucket pair for this test: ``.use1`` (us-east-1), ``.euw1`` (eu-west-1)."""
    return s3_server.make_bucket_pair()
