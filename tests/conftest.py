"""Shared pytest fixtures for the backup-tui test-suite.

Real services only, on loopback, from engine/sandbox/ (docs/ARCHITECTURE.md, section 6):

* ``pg_cluster`` (session) -- a throwaway PostgreSQL cluster on a free port;
* ``s3_server``  (session) -- a moto_server S3 endpoint with buckets in
  us-east-1 and eu-west-1;
* ``s3_buckets`` (function) -- a fresh, uniquely named bucket pair per test.

Add further fixtures below, grouped by topic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support import Sandbox

from engine.sandbox import BucketPair, PgCluster, S3Server, loopback_aws_env

# Only loopback is ever contacted: no AWS instance-metadata look-ups, no profiles
# or credentials of the machine; S3 tests get dummy credentials for moto_server.
loopback_aws_env(os.environ)

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
    server = S3Server.create()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_buckets(s3_server: S3Server) -> BucketPair:
    """A fresh bucket pair for this test: ``.use1`` (us-east-1), ``.euw1`` (eu-west-1)."""
    return s3_server.make_bucket_pair()


# --- engine ---------------------------------------------------------------------

@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    """An un-initialised sandbox (encrypted, cheap KDF when made through .engine())."""
    return Sandbox(tmp_path)


@pytest.fixture
def sandbox_factory(tmp_path):
    """Make further independent sandboxes in the same test."""
    count = iter(range(1, 1000))

    def make(password: str | None = "test-password") -> Sandbox:
        root = tmp_path / f"sandbox{next(count)}"
        root.mkdir()
        return Sandbox(root, password)

    return make


@pytest.fixture
def engine(sandbox):
    """An Engine over an initialised, encrypted repository in the sandbox."""
    return sandbox.engine(init=True)
