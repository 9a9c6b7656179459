"""Test harness: real services on loopback for the test-suite.

* :mod:`harness.pg` -- a throwaway PostgreSQL cluster (initdb + pg_ctl on a free
  port, private socket dir; run as the ``postgres`` OS user when root).
* :mod:`harness.s3` -- a ``moto_server`` process speaking the S3 protocol on a
  free loopback port, with buckets in two regions.

Only 127.0.0.1 / ::1 are ever contacted. The pytest fixtures wrapping these live
in ``tests/conftest.py``.
"""

from harness.net import free_port
from harness.pg import PgCluster, PgError
from harness.s3 import BucketPair, S3Server

__all__ = ["BucketPair", "PgCluster", "PgError", "S3Server", "free_port"]
