"""A real S3-protocol server for tests: ``moto_server`` on a free loopback port.

Tests reach it through boto3 exactly as they would reach AWS (not moto's
in-process decorators). One server serves every region; a bucket's region is
the one it was created in.

Credentials are dummies ("testing") handed to each client explicitly; nothing
is put into the global environment.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

from harness.net import LOOPBACK, bypass_proxies_for_loopback, free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION_USE1 = "us-east-1"
REGION_EUW1 = "eu-west-1"


class BucketPair(NamedTuple):
    """Names of two buckets: one in us-east-1, one in eu-west-1."""

    use1: str
    euw1: str


class S3ServerError(RuntimeError):
    """moto_server could not be started."""


def _server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.is_file():
        return [str(script), "-H", LOOPBACK, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]


def unique_bucket_name(tag: str) -> str:
    """A fresh, valid bucket name such as ``t-1a2b3c4d5e6f-use1``."""
    return f"t-{uuid.uuid4().hex[:12]}-{tag}"


class S3Server:
    """A running ``moto_server``. Use :meth:`start` (or the ``s3_server`` fixture).

    Attributes: ``host``, ``port``, ``endpoint_url``, ``access_key``,
    ``secret_key``, ``bucket_use1`` / ``bucket_euw1`` (buckets created at start
    in us-east-1 / eu-west-1), ``log_path``.
    """

    host = LOOPBACK
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    bucket_use1 = "harness-use1"
    bucket_euw1 = "harness-euw1"

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.work_dir = Path(tempfile.mkdtemp(prefix="s3harness-"))
        self.log_path = self.work_dir / "moto_server.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, timeout: float = 60.0) -> S3Server:
        """Start moto_server, wait until it answers HTTP, create the two buckets."""
        bypass_proxies_for_loopback()
        server = cls()
        atexit.register(server.stop)
        try:
            server._spawn(timeout)
            server.make_bucket(server.bucket_use1, REGION_USE1)
            server.make_bucket(server.bucket_euw1, REGION_EUW1)
        except BaseException:
            server.stop()
            raise
        return server

    def _spawn(self, timeout: float, attempts: int = 3) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        for attempt in range(attempts):
            self.port = free_port()
            env["MOTO_PORT"] = str(self.port)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    _server_command(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.work_dir,
                    start_new_session=True,  # Ctrl-C in the terminal is ours to handle
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # died: port taken meanwhile, or broken install
                if self._answers_http():
                    return
                time.sleep(0.1)
            self._terminate()
            if attempt == attempts - 1:
                raise S3ServerError(
                    f"moto_server did not come up on {self.endpoint_url}:\n"
                    f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                )

    def _answers_http(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint_url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Terminate the server and remove its work dir (idempotent)."""
        self._terminate()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    # --------------------------------------------------------------- client side

    def client_kwargs(self, region: str = REGION_USE1) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)`` against this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": region,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
        }

    def client(self, region: str = REGION_USE1):
        """A boto3 S3 client for ``region``, path-style, with dummy credentials."""
        import boto3
        from botocore.config import Config

        kwargs = self.client_kwargs(region)
        session = boto3.session.Session(
            aws_access_key_id=kwargs.pop("aws_access_key_id"),
            aws_secret_access_key=kwargs.pop("aws_secret_access_key"),
            region_name=region,
        )
        return session.client(
            "s3",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            **kwargs,
        )

    def make_bucket(self, name: str, region: str = REGION_USE1) -> str:
        """Create bucket ``name`` in ``region``; return its name."""
        params: dict = {"Bucket": name}
        if region != REGION_USE1:
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self.client(region).create_bucket(**params)
        return name

    def bucket_region(self, name: str) -> str:
        """Region of bucket ``name`` (GetBucketLocation's None means us-east-1)."""
        loc = self.client(REGION_USE1).get_bucket_location(Bucket=name)
        return loc.get("LocationConstraint") or REGION_USE1

    def make_bucket_pair(self) -> BucketPair:
        """Fresh uniquely-named buckets: (us-east-1 bucket, eu-west-1 bucket)."""
        return BucketPair(
            self.make_bucket(unique_bucket_name("use1"), REGION_USE1),
            self.make_bucket(unique_bucket_name("euw1"), REGION_EUW1),
        )

    def __repr__(self) -> str:
        return f"<S3Server {self.endpoint_url} running={self.proc is not None}>"
