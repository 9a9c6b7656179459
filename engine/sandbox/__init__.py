"""Throwaway servers on loopback, for the demo, bench/ and the tests alike.

One class per concern, so that the demo, the benchmarks and the test-suite run
the very same servers (docs/ARCHITECTURE.md, section 6):

* :mod:`engine.sandbox.pg` -- ``PgCluster``, a PostgreSQL scratch cluster
  (initdb + pg_ctl on a free port, a private socket folder; as the ``postgres``
  OS user when we are root);
* :mod:`engine.sandbox.s3` -- ``S3Server``, a ``moto_server`` process speaking
  the S3 protocol on a free port, with buckets in two regions, reached through
  boto3 and ``endpoint_url``;
* :mod:`engine.sandbox.proxy` -- ``FaultProxy``, a TCP proxy that drops,
  denies or goes away on request;
* :mod:`engine.sandbox.common` -- free ports and loopback checks, folders
  another OS user can reach, ``SandboxError``;
* :mod:`engine.sandbox.python` -- ``server_python``, a python the server's OS
  user can run backup-tui with (archive_command, restore_command; the demo).

Only 127.0.0.1 / ::1 are ever contacted; the mode and owner of a folder are
changed only when the sandbox made that folder. Nothing here imports the
console (textual, rich, backup_tui), and runtime code may use it: it never
imports tests/. The pytest fixtures wrapping it live in ``tests/conftest.py``.
"""

from engine.sandbox.common import (
    LOOPBACK,
    SandboxError,
    free_port,
    make_dirs,
    port_free,
    port_open,
    reachable_tempdir,
)
from engine.sandbox.pg import PgCluster, PgError, find_bin_dir
from engine.sandbox.proxy import FaultProxy
from engine.sandbox.s3 import (
    REGION_EUW1,
    REGION_USE1,
    BucketPair,
    S3Server,
    S3ServerError,
    loopback_aws_env,
    moto_installed,
    unique_bucket_name,
)

__all__ = [
    "LOOPBACK",
    "REGION_EUW1",
    "REGION_USE1",
    "BucketPair",
    "FaultProxy",
    "PgCluster",
    "PgError",
    "S3Server",
    "S3ServerError",
    "SandboxError",
    "find_bin_dir",
    "free_port",
    "loopback_aws_env",
    "make_dirs",
    "moto_installed",
    "port_free",
    "port_open",
    "reachable_tempdir",
    "unique_bucket_name",
]
