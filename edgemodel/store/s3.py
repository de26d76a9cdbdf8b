"""S3-compatible storage: ``s3://bucket/key`` sources and, optionally, an S3 artifact store.

Credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``
for MinIO, Ceph or moto, ``AWS_DEFAULT_REGION``), e.g. from a Secret via ``envFrom``.
boto3 is imported lazily.

S3 has no rename, so an S3 store commits a revision by ordering: the model files, report,
signature and manifest first, ``result.json`` last. Readers (the operator) treat a revision
as committed only when its ``result.json`` exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemodel.store.client import StoreError
from edgemodel.store.layout import RevisionRef

log = logging.getLogger(__name__)

COMMIT_MARKER = "result.json"


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; use s3://bucket/path/to/file")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (path-style addressing for custom endpoints)."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                    s3={"addressing_style": "path"} if endpoint else None)
    return boto3.client("s3", endpoint_url=endpoint or None, config=config,
                        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1")


def _classify(exc: Exception, what: str) -> StoreError:
    """Turn a botocore error into a StoreError that says whether retrying helps."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StoreError(f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(e.g. from a Secret)", retryable=False)
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = status >= 500 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}
        return StoreError(f"{what}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".strip(),
                          retryable=retryable, status=status or None)
    if isinstance(exc, BotoCoreError):
        return StoreError(f"{what}: {exc}", retryable=True)
    return StoreError(f"{what}: {exc}", retryable=True)


def download_s3(uri: str, dest: Path) -> None:
    """Download ``s3://bucket/key`` to ``dest`` (atomically: temp file, then rename)."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = S3Uri.parse(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        s3_client().download_file(location.bucket, location.key, str(part))
    except (BotoCoreError, ClientError) as exc:
        part.unlink(missing_ok=True)
        raise _classify(exc, f"GET {uri}") from exc
    part.replace(dest)


class S3Store:
    """Artifact store in an S3 bucket under ``prefix``; same key layout as the HTTP store."""

    def __init__(self, url: str) -> None:
        location = S3Uri.parse(url)
        self.bucket = location.bucket
        self.prefix = location.key.strip("/")
        self.client = s3_client()

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def health(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _classify(exc, f"HEAD s3://{self.bucket}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise _classify(exc, f"HEAD {self.url(key)}") from exc
        except BotoCoreError as exc:
            raise _classify(exc, f"HEAD {self.url(key)}") from exc
        return True

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except (BotoCoreError, ClientError) as exc:
            raise _classify(exc, f"GET {self.url(key)}") from exc

    def put_revision(self, ref: RevisionRef, files: dict[str, Path],
                     on_file: Callable[[str], None] | None = None) -> dict[str, str]:
        """Upload the files with ``result.json`` last (the commit marker); return name -> s3:// URI."""
        from botocore.exceptions import BotoCoreError, ClientError

        from edgemodel.store.client import RevisionExists

        if self.exists(ref.key(COMMIT_MARKER)):
            raise RevisionExists(f"revision {ref.prefix} is already committed in s3://{self.bucket}/{self.prefix}")
        ordered = sorted(files, key=lambda n: (n == COMMIT_MARKER, n == "manifest.json", n))
        urls: dict[str, str] = {}
        for name in ordered:
            key = self._key(ref.key(name))
            try:
                self.client.upload_file(str(files[name]), self.bucket, key)
            except (BotoCoreError, ClientError) as exc:
                raise _classify(exc, f"PUT s3://{self.bucket}/{key}") from exc
            urls[name] = f"s3://{self.bucket}/{key}"
            if on_file:
                on_file(name)
        log.info("Committed revision %s to s3://%s/%s (%d files, %s last)", ref.prefix, self.bucket, self.prefix,
                 len(files), COMMIT_MARKER)
        return urls
