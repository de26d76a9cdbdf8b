"""The store client's download: resume with Range, sha256 verification, retryable vs final errors."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgemodel.store import HttpStore, StoreError, download, open_store
from tests.store.running import running_store

TOKEN = "t"


@pytest.fixture
def served_blob(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    blob = os.urandom(2_500_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    with running_store(tmp_path / "root", TOKEN) as url:
        HttpStore(url, TOKEN, retries=0).put_file("models/blob.bin", path)
        yield f"{url}/models/blob.bin", blob


def test_download_verifies_sha256(served_blob: tuple[str, bytes], tmp_path: Path) -> None:
    url, blob = served_blob
    digest = download(url, tmp_path / "out.bin", sha256=hashlib.sha256(blob).hexdigest(), retries=0)
    assert digest == hashlib.sha256(blob).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == blob


def test_download_resumes_a_partial_file(served_blob: tuple[str, bytes], tmp_path: Path) -> None:
    url, blob = served_blob
    dest = tmp_path / "resumed.bin"
    (tmp_path / "resumed.bin.part").write_bytes(blob[:2_000_000])
    seen: list[int] = []
    download(url, dest, sha256=hashlib.sha256(blob).hexdigest(), retries=0, on_bytes=lambda done, _t: seen.append(done))
    assert dest.read_bytes() == blob
    # Only the missing 500 kB came over the wire (one read); a full re-download would report 1 MiB blocks from 0.
    assert seen == [len(blob)]
    assert not (tmp_path / "resumed.bin.part").exists()


def test_download_with_wrong_sha256_fails_and_leaves_nothing(served_blob: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = served_blob
    with pytest.raises(StoreError, match="differs from the expected") as info:
        download(url, tmp_path / "bad.bin", sha256="0" * 64, retries=0)
    assert not info.value.retryable
    assert not (tmp_path / "bad.bin").exists()
    assert not (tmp_path / "bad.bin.part").exists()


def test_missing_object_is_a_final_error(served_blob: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = served_blob
    with pytest.raises(StoreError) as info:
        download(url.replace("blob.bin", "nope.bin"), tmp_path / "x", retries=2, backoff_s=0.01)
    assert info.value.status == 404
    assert not info.value.retryable


def test_unreachable_store_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError, match="cannot connect") as info:
        HttpStore(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01).health()
    assert info.value.retryable


def test_open_store_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        open_store("ftp://example/x")


class _Scripted:
    """A tiny HTTP server answering each request with the next status of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        import http.server
        import threading

        self.statuses, self.seen = statuses, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                status = outer.statuses[min(outer.seen, len(outer.statuses) - 1)]
                outer.seen += 1
                body = b"ok" if status < 400 else b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("statuses", "calls"), [([503, 200], 2), ([429, 502, 200], 3), ([500, 504, 200], 3)])
def test_5xx_and_429_are_retried_with_the_one_policy(statuses: list[int], calls: int) -> None:
    server = _Scripted(statuses)
    try:
        assert HttpStore(server.url, retries=3, backoff_s=0.01).get_bytes("a/b") == b"ok"
        assert server.seen == calls
    finally:
        server.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_other_4xx_are_not_retried(status: int) -> None:
    server = _Scripted([status, 200])
    try:
        with pytest.raises(StoreError, match=f"HTTP {status} scripted") as info:
            HttpStore(server.url, retries=3, backoff_s=0.01).delete("a/b")
        assert server.seen == 1
        assert info.value.status == status
        assert not info.value.retryable
    finally:
        server.close()


def test_a_zero_backoff_still_retries() -> None:
    server = _Scripted([503, 200])
    try:
        assert HttpStore(server.url, retries=1, backoff_s=0).get_bytes("a/b") == b"ok"
        assert server.seen == 2
    finally:
        server.close()
