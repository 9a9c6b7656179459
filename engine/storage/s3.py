"""S3Backend: a repository in an S3 bucket under a prefix (one replica per region).

Same contracts as every Backend (see engine.storage.base). S3 PUTs are atomic
by nature. Transient failures are retried twice over: botocore's own retries
(standard mode) for throttling, 5xx and connection errors, and our retry around
each whole-object operation for what botocore cannot retry (a connection that
drops while the body is being read). Uploads send a SHA-256 checksum; single-
part uploads are also checked against the ETag (MD5) the server returns, so a
corrupted upload never goes unnoticed. Credentials come from the AWS
credential chain or a named profile, never from our config file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from engine.errors import EngineError, NotFound, RepositoryError
from engine.storage.base import ObjectInfo

T = TypeVar("T")
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
ATTEMPTS = 5


class S3Error(RepositoryError):
    """S3 refused or failed a request; the message names the replica and the reason."""


class S3Backend:
    def __init__(
        self,
        bucket: str,
        region: str,
        prefix: str = "",
        endpoint_url: str = "",
        profile: str = "",
        storage_class: str = "STANDARD",
        object_lock_days: int = 0,
        object_lock_mode: str = "GOVERNANCE",
        name: str = "",
        client=None,
    ):
        import boto3
        import botocore.config

        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.storage_class = storage_class
        self.lock_days = object_lock_days
        self.lock_mode = object_lock_mode
        self.name = name or bucket
        self.location = f"s3://{bucket}/{self.prefix}" + (f" ({name})" if name else "")
        if client is None:
            session = boto3.session.Session(profile_name=profile or None, region_name=region)
            cfg = botocore.config.Config(
                region_name=region,
                retries={"max_attempts": 6, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=16,
                s3={"addressing_style": "path"} if endpoint_url else {},
                request_checksum_calculation="when_supported",
            )
            client = session.client("s3", endpoint_url=endpoint_url or None, config=cfg)
        self.client = client
        import botocore.exceptions

        self._client_error = botocore.exceptions.ClientError
        self._transient = (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ResponseStreamingError,
            ConnectionError,
            TimeoutError,
        )
        self._no_credentials = botocore.exceptions.NoCredentialsError
        # requests sent, by kind (bench/ and tests read them); several threads send at once
        self.requests = {"put": 0, "get": 0, "list": 0, "head": 0, "delete": 0}
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing
    def _count(self, kind: str) -> None:
        with self._count_lock:
            self.requests[kind] += 1

    def key(self, name: str) -> str:
        return self.prefix + name

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = 0.2
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn()
            except self._transient as e:
                if attempt == ATTEMPTS:
                    raise S3Error(f"{self.location}: {what}: connection failed after "
                                  f"{ATTEMPTS} attempts: {e}") from None
            except self._client_error as e:
                code = e.response.get("Error", {}).get("Code", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                    if attempt < ATTEMPTS:
                        time.sleep(delay)
                        delay *= 2
                        continue
                raise self._explain(what, e) from None
            except self._no_credentials:
                raise S3Error(
                    f"{self.location}: no AWS credentials found: configure the AWS credential "
                    "chain (environment, ~/.aws/credentials, instance role) or set the "
                    "replica's profile"
                ) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _explain(self, what: str, e) -> EngineError:
        err = e.response.get("Error", {})
        code = err.get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404", "NotFound") and "NoSuchBucket" not in code:
            return NotFound(f"{self.location}: {what}: not found")
        if code == "NoSuchBucket":
            return S3Error(f"{self.location}: bucket {self.bucket!r} does not exist")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return S3Error(f"{self.location}: {what}: access denied ({code}); check the "
                           "credentials and the bucket policy")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301",
                    "IllegalLocationConstraintException") or status == 301:
            return S3Error(f"{self.location}: bucket {self.bucket!r} is not in region "
                           f"{self.region!r} ({code}); fix the replica's region")
        return S3Error(f"{self.location}: {what}: {code or status} {err.get('Message', '')}")

    # ------------------------------------------------------------ contract
    def get(self, name: str) -> bytes:
        def op() -> bytes:
            self._count("get")
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            return resp["Body"].read()

        try:
            return self._retry(f"get {name}", op)
        except NotFound:
            raise NotFound(f"{self.location}: object {name} not found") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            self.stat(name)  # NotFound for a missing name, like every backend
            return b""

        def op() -> bytes:
            self._count("get")
            try:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=self.key(name),
                    Range=f"bytes={offset}-{offset + length - 1}",
                )
            except self._client_error as e:
                # 416: the object exists but starts no byte at offset; the contract says
                # a range past the end is clipped, so that is the empty end of it.
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            return resp["Body"].read()

        try:
            return self._retry(f"get {name}", op)
        except NotFound:
            raise NotFound(f"{self.location}: object {name} not found") from None

    def _lock_args(self, name: str = "") -> dict:
        # locks/ are the repository's own short-lived records: never under Object Lock
        if self.lock_days <= 0 or name.startswith("locks/"):
            return {}
        until = datetime.now(UTC) + timedelta(days=self.lock_days)
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}

    def put(self, name: str, data: bytes | memoryview) -> None:
        data = bytes(data)
        if len(data) >= MULTIPART_THRESHOLD:
            self._put_multipart(name, data)
            return
        digest = hashlib.md5(data).digest()
        md5 = digest.hex()
        content_md5 = base64.b64encode(digest).decode()
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()

        def op() -> None:
            self._count("put")
            resp = self.client.put_object(
                Bucket=self.bucket, Key=self.key(name), Body=data, ContentMD5=content_md5,
                ChecksumAlgorithm="SHA256", ChecksumSHA256=sha,
                StorageClass=self.storage_class, **self._lock_args(name),
            )
            etag = resp.get("ETag", "").strip('"')
            if etag and "-" not in etag and etag != md5:
                raise ConnectionError(f"upload of {name} arrived damaged (ETag {etag})")

        self._retry(f"put {name}", op)

    def _put_multipart(self, name: str, data: bytes) -> None:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                             multipart_chunksize=PART_SIZE, max_concurrency=4)
        extra = {"StorageClass": self.storage_class, "ChecksumAlgorithm": "SHA256",
                 **self._lock_args(name)}

        def op() -> None:
            self._count("put")
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.key(name),
                                       ExtraArgs=extra, Config=cfg)

        self._retry(f"put {name}", op)
        if self.stat(name).size != len(data):
            raise S3Error(f"{self.location}: upload of {name} has the wrong size")

    def stat(self, name: str) -> ObjectInfo:
        def op() -> ObjectInfo:
            self._count("head")
            resp = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            return ObjectInfo(name, int(resp["ContentLength"]))

        try:
            return self._retry(f"head {name}", op)
        except NotFound:
            raise NotFound(f"{self.location}: object {name} not found") from None

    def exists(self, name: str) -> bool:
        try:
            self.stat(name)
            return True
        except NotFound:
            return False

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": self.key(prefix), "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token

            def op(kwargs=kwargs):
                self._count("list")
                return self.client.list_objects_v2(**kwargs)

            resp = self._retry(f"list {prefix or '/'}", op)
            for obj in resp.get("Contents", []):
                name = obj["Key"][len(self.prefix):]
                yield ObjectInfo(name, int(obj["Size"]))
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def locked_until(self, name: str) -> datetime | None:
        """The Object Lock retain-until date of an object, if it is in the future.
        (Read from HEAD: GetObjectRetention is not served by every S3-compatible server.)"""
        def op():
            self._count("head")
            return self.client.head_object(Bucket=self.bucket, Key=self.key(name))

        try:
            head = self._retry(f"head {name}", op)
        except NotFound:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return until if until and until > datetime.now(UTC) else None

    def delete(self, name: str) -> None:
        if self.lock_days > 0 and not name.startswith("locks/"):
            # On a versioned, locked bucket a plain DELETE only hides the object behind a
            # delete marker; the locked version stays. Skip it, and say so, instead.
            until = self.locked_until(name)
            if until is not None:
                raise S3Error(f"{self.location}: {name} is locked ({self.lock_mode}) until "
                              f"{until.isoformat()}; not deleted")

        def op() -> None:
            self._count("delete")
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

        try:
            self._retry(f"delete {name}", op)
        except NotFound:
            pass

    def check_bucket(self) -> None:
        """Fail early and clearly when the bucket is missing, elsewhere, or closed to us."""
        def op() -> None:
            self._count("head")
            self.client.head_bucket(Bucket=self.bucket)

        try:
            self._retry("head bucket", op)
        except NotFound:
            raise S3Error(f"{self.location}: bucket {self.bucket!r} does not exist") from None

        def where() -> str:
            self._count("head")
            loc = self.client.get_bucket_location(Bucket=self.bucket)
            return loc.get("LocationConstraint") or "us-east-1"

        actual = self._retry("get bucket location", where)
        if actual != self.region:
            raise S3Error(f"{self.location}: bucket {self.bucket!r} is in region {actual!r}, "
                          f"not {self.region!r}: fix the replica's region")
