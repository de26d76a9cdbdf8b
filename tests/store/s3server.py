"""A real S3-compatible server for tests: moto's ThreadedMotoServer on 127.0.0.1 (no mock objects)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def moto_s3(monkeypatch: pytest.MonkeyPatch, bucket: str = "models") -> Iterator[str]:
    """Start moto's S3 server on a free port, point the AWS environment at it, create ``bucket``; yield the endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        from edgemodel.store.s3 import s3_client

        s3_client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
