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

CHEAP_KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


class Sandbox:
    """A config file, a source tree, a repository and a state dir under one tmp folder."""

    def __init__(self, root, password: str | None = "test-password"):
        import os

        self.root = root
        self.src = root / "src"
        self.src.mkdir()
        self.repo = root / "repo"
        self.state = root / "state"
        self.password = password
        self.config_path = root / "config.toml"
        self.filesets = {"src": [str(self.src)]}
        self.extra = ""
        if password:
            self.pwfile = root / "repo.pass"
            self.pwfile.write_text(password)
            os.chmod(self.pwfile, 0o600)
        self.write_config()

    def write_config(self) -> None:
        lines = ["[repository]", f'path = "{self.repo}"']
        if self.password:
            lines.append(f'password_file = "{self.pwfile}"')
        lines += ["[state]", f'dir = "{self.state}"']
        for name, paths in self.filesets.items():
            quoted = ", ".join(f'"{p}"' for p in paths)
            lines += ["[[fileset]]", f'name = "{name}"', f"paths = [{quoted}]"]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra)

    def engine(self, init: bool = False):
        from engine.config import load_config
        from engine.facade import Engine

        eng = Engine(load_config(self.config_path), kdf=CHEAP_KDF)
        if init:
            eng.init()
        return eng

    def cli(self, *args: str, input: bytes | None = None, check: bool = False, env=None):
        """Run the real CLI in a subprocess; returns CompletedProcess (bytes stdout)."""
        import os
        import subprocess
        import sys

        e = dict(os.environ)
        e.pop("BACKUP_TUI_PASSWORD", None)
        e.update(env or {})
        cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(self.config_path), *args]
        return subprocess.run(cmd, input=input, capture_output=True, check=check, env=e,
                              timeout=300)


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
