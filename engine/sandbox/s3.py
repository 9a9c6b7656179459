"""A real S3-protocol server: ``moto_server`` on a free loopback port, all in memory.

The tests, the demo's replicas and the S3 benchmark reach it through boto3 with
``endpoint_url``, exactly as they would reach AWS (not moto's in-process
decorators). One server serves every region; a bucket's region is the one it
was created in, and ``S3Server.create`` makes one bucket in us-east-1 and one
in eu-west-1. A new server starts empty, and what it held is gone once stopped.

Credentials are dummies: each client gets them explicitly, the server process
gets them and none of the caller's AWS variables. ``loopback_aws_env`` prepares
an environment (this process's or a child's) so that boto3 there uses dummy
credentials, no profile, no instance metadata and no proxy for loopback.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import NamedTuple

from engine.sandbox.common import LOOPBACK, LOOPBACK_NAMES, SandboxError, free_port, port_free

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION_USE1 = "us-east-1"
REGION_EUW1 = "eu-west-1"
# AWS variables that could send boto3 elsewhere or to real credentials.
AWS_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class BucketPair(NamedTuple):
    """Names of two buckets: one in us-east-1, one in eu-west-1."""

    use1: str
    euw1: str


class S3ServerError(SandboxError):
    """moto_server did not start, or would not take a bucket."""


def moto_installed() -> bool:
    """Whether moto (``pip install 'moto[server]'``) is there to run the server."""
    return importlib.util.find_spec("moto") is not None


def unique_bucket_name(tag: str) -> str:
    """A fresh, valid bucket name such as ``t-1a2b3c4d5e6f-use1``."""
    return f"t-{uuid.uuid4().hex[:12]}-{tag}"


def loopback_aws_env(environ: MutableMapping[str, str], access_key: str = ACCESS_KEY,
                     secret_key: str = SECRET_KEY) -> MutableMapping[str, str]:
    """Set ``environ`` (``os.environ`` or a child's copy) up for a loopback S3 server
    only: dummy credentials; no profile, AWS configuration, endpoint override or
    instance-metadata look-up; loopback never through a proxy. Returns ``environ``."""
    for var in AWS_CLEARED:
        environ.pop(var, None)
    environ.update({
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    })
    for var in ("NO_PROXY", "no_proxy"):
        entries = [e.strip() for e in environ.get(var, "").split(",") if e.strip()]
        environ[var] = ",".join([*entries, *(n for n in LOOPBACK_NAMES if n not in entries)])
    return environ


class S3Server:
    """``moto_server`` on 127.0.0.1: ``S3Server.create()`` starts one with two buckets.

    Step by step: ``launch`` starts the process and returns at once (it takes a
    moment to import), ``start`` waits until it answers HTTP (launching it first
    if need be, and again on another port should it die); ``stop`` ends it.
    ``port`` 0 (or a taken one) means a free port. Its output goes to
    ``log_path``, by default in a temporary folder of its own that ``stop``
    removes.

    Attributes: ``host``, ``port``, ``endpoint_url``, ``access_key``,
    ``secret_key``, ``bucket_use1`` / ``bucket_euw1`` (the buckets ``create``
    makes in us-east-1 / eu-west-1), ``log_path``, ``proc``.
    """

    host = LOOPBACK
    bucket_use1 = "sandbox-use1"
    bucket_euw1 = "sandbox-euw1"

    def __init__(self, *, port: int = 0, log_path: str | os.PathLike[str] | None = None,
                 access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.proc: subprocess.Popen[bytes] | None = None
        self._work_dir: Path | None = None  # our own folder for the log, removed by stop
        if log_path is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="s3sandbox-"))
            log_path = self._work_dir / "moto_server.log"
        self.log_path = Path(log_path)
        self._at_exit = False

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, *, timeout: float = 60.0, **kwargs) -> S3Server:
        """A started server with ``bucket_use1`` and ``bucket_euw1``; stopped again if a
        step fails. ``kwargs`` go to the constructor."""
        server = cls(**kwargs)
        try:
            server.start(timeout)
            server.make_bucket(server.bucket_use1, REGION_USE1)
            server.make_bucket(server.bucket_euw1, REGION_EUW1)
        except BaseException:
            server.stop()
            raise
        return server

    def launch(self) -> S3Server:
        """Start the process on ``port`` (a free one if 0 or taken); return at once."""
        if self.running():
            return self
        if not self.port or not port_free(self.port):
            self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "MOTO_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",  # request lines reach the log at once
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.log_path.parent,
                start_new_session=True,  # Ctrl-C in the terminal is the caller's to handle
            )
        if not self._at_exit:  # the last resort, should the caller die without a stop
            self._at_exit = True
            atexit.register(self.stop)
        return self

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the launched server answers HTTP; S3ServerError (and the process
        ended) if it dies or does not answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._answers_http():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                self._terminate()
                raise S3ServerError(f"moto_server exited ({code}) on {self.endpoint_url}\n"
                                    f"--- tail of {self.log_path} ---\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._terminate()
                raise S3ServerError(f"moto_server did not answer on {self.endpoint_url} in "
                                    f"{timeout:.0f} s\n--- tail of {self.log_path} ---\n"
                                    f"{self.log_tail()}")
            time.sleep(0.05)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> S3Server:
        """Launch (unless launched) and wait until it answers; should it die (its port
        taken meanwhile, most likely), again on another port, ``attempts`` times."""
        for attempt in range(attempts):
            if not self.running():
                self.launch()
            try:
                self.wait(timeout)
                return self
            except S3ServerError:
                if attempt == attempts - 1:
                    raise
                self.port = 0
        raise AssertionError("unreachable")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        """End the server (idempotent; what it held is gone) and remove its own folder."""
        self._terminate()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

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
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def client(self, region: str = REGION_USE1):
        """A boto3 S3 client for ``region``: path-style, dummy credentials, 3 attempts."""
        import boto3
        from botocore.config import Config

        kwargs = self.client_kwargs(region)
        session = boto3.session.Session(
            aws_access_key_id=kwargs.pop("aws_access_key_id"),
            aws_secret_access_key=kwargs.pop("aws_secret_access_key"),
            region_name=region,
        )
        return session.client(
            "s3", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            **kwargs)

    def make_bucket(self, name: str, region: str = REGION_USE1) -> str:
        """Create bucket ``name`` in ``region``; return its name."""
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict = {"Bucket": name}
        if region != REGION_USE1:
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client(region).create_bucket(**params)
        except (BotoCoreError, ClientError) as e:
            raise S3ServerError(f"cannot create bucket {name} in {region} on "
                                f"{self.endpoint_url}: {e}") from e
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete every object of bucket ``name``, then the bucket."""
        client = self.client(self.bucket_region(name))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)

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
        return f"<S3Server {self.endpoint_url} running={self.running()}>"
