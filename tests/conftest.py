"""Shared pytest fixtures for the backup-tui test-suite.

Real services only, on loopback, from engine/sandbox/ (docs/ARCHITECTURE.md, section 6):

* ``pg_cluster`` (session) -- a throwaway PostgreSQL cluster on a free port;
* ``s3_server``  (session) -- a moto_server S3 endpoint with buckets in
  us-east-1 and eu-west-1;
* ``s3_buckets`` (function) -- a fresh, uniquely named bucket pair per test;
* ``setup`` (function) -- a PostgreSQL cluster archiving its WAL through ``wal-push`` into a
  fresh repository the postgres OS user shares (tests/pitr_support.py); parametrize it
  indirectly with extra config text.

Add further fixtures below, grouped by topic.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from pitr_support import CLUSTER, Setup
from support import Sandbox, server_python

from engine.ops import pitr
from engine.sandbox import BucketPair, PgCluster, S3Server, loopback_aws_env
from engine.sandbox.common import reachable_tempdir

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


# --- point-in-time recovery -------------------------------------------------------


@pytest.fixture
def setup(request) -> Iterator[Setup]:
    """A cluster archiving through ``wal-push`` into a fresh shared repository, with a table
    ``t`` of 1,000 rows; ``request.param`` (indirect) is appended to the config."""
    if os.geteuid() != 0:
        pytest.fail("these tests run as root (PostgreSQL runs as the postgres OS user)")
    root = reachable_tempdir("pitr-test-")
    s = Setup(root, getattr(request, "param", ""))
    s.pg = PgCluster.create(root / "pg")
    try:
        s.write_config()
        s.share()
        s.engine().init()
        # the python restore pitr gives wal-fetch serves wal-push too (the postgres user
        # may not reach this venv's interpreter)
        server_python()  # $BACKUP_TUI_SERVER_PYTHON: what command_python finds
        python = " ".join(pitr.command_python("postgres"))
        push = (f"{python} -m backup_tui.cli --config {s.config_path} wal-push %p "
                f"--cluster {CLUSTER}")
        s.pg.psql("ALTER SYSTEM SET archive_mode = on")
        s.pg.psql(f"ALTER SYSTEM SET archive_command = '{push}'")
        s.pg.psql("ALTER SYSTEM SET wal_level = replica")
        s.pg.restart()
        s.pg.psql("CREATE TABLE t (id int primary key, note text)")
        s.pg.psql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g")
        yield s
    finally:
        s.pg.destroy()
        for extra in root.glob("*"):
            if extra.name != "pg":
                shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink()
        shutil.rmtree(root, ignore_errors=True)
