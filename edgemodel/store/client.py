"""A small synchronous client of the HTTP artifact store (stdlib only), used by the converter.

Also :func:`download`: fetch any http(s) URL to a file with resume (``Range``) and sha256
verification, bounded retries with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemodel.retry import Backoff, retry_sync
from edgemodel.store.layout import RevisionRef

log = logging.getLogger(__name__)

CHECKSUM_HEADER = "X-Checksum-Sha256"
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class StoreError(Exception):
    """A store request failed; ``retryable`` says whether trying again later may help."""

    def __init__(self, message: str, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class RevisionExists(StoreError):
    """The revision is already committed (revisions are immutable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, status=409)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _body_error(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read() or b"{}")
        return str(data.get("error") or exc.reason)
    except (ValueError, OSError):
        return str(exc.reason)


def _store_error(what: str, exc: BaseException) -> StoreError:
    """The StoreError of a failed attempt (409 means the revision exists; 5xx, 429 and connection errors may pass)."""
    if isinstance(exc, urllib.error.HTTPError):
        message = f"{what}: HTTP {exc.code} {_body_error(exc)}"
        if exc.code == 409:
            return RevisionExists(message)
        return StoreError(message, retryable=exc.code in RETRYABLE_STATUS, status=exc.code)
    reason = getattr(exc, "reason", exc)
    return StoreError(f"{what}: cannot connect ({reason})", retryable=True)


def _with_retries(what: str, attempt: Callable[[], Any], retries: int, backoff_s: float) -> Any:
    """Run ``attempt``; retry connection errors and 5xx/429 up to ``retries`` times (the one retry policy,
    :mod:`edgemodel.retry`); raise StoreError (RevisionExists on 409) when it still fails."""

    def once() -> Any:
        try:
            return attempt()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:  # HTTPError is a URLError
            raise _store_error(what, exc) from exc

    backoff = Backoff(first=max(backoff_s, 0.001), cap=max(backoff_s, 30.0))  # 0 s was allowed before: keep it
    return retry_sync(once, what=what, attempts=retries + 1, backoff=backoff,
                      retry_on=lambda exc: isinstance(exc, StoreError) and exc.retryable)


class HttpStore:
    """Client of :mod:`edgemodel.store.server` at ``base_url`` (e.g. http://edgemodel-store:8080)."""

    def __init__(self, base_url: str, token: str = "", timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def url(self, key: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(key.lstrip('/'))}"

    def _request(self, method: str, url: str, data: Any = None, headers: dict[str, str] | None = None) -> bytes:
        all_headers = dict(headers or {})
        if self.token and method in {"PUT", "POST", "DELETE"}:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return bytes(response.read())

    def health(self) -> None:
        """Raise StoreError (retryable) unless ``/healthz`` answers."""
        _with_retries(f"GET {self.base_url}/healthz", lambda: self._request("GET", f"{self.base_url}/healthz"),
                      self.retries, self.backoff_s)

    def exists(self, key: str) -> bool:
        url = self.url(key)

        def head() -> bool:
            try:
                self._request("HEAD", url)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return False
                raise
            return True

        return bool(_with_retries(f"HEAD {url}", head, self.retries, self.backoff_s))

    def get_bytes(self, key: str) -> bytes:
        url = self.url(key)
        return bytes(_with_retries(f"GET {url}", lambda: self._request("GET", url), self.retries, self.backoff_s))

    def put_file(self, key: str, path: Path, upload_id: str = "") -> str:
        """Upload one file (sha256 checked by the server); return its URL."""
        url = self.url(key) + (f"?upload={upload_id}" if upload_id else "")
        headers = {CHECKSUM_HEADER: _sha256(path), "Content-Type": "application/octet-stream",
                   "Content-Length": str(path.stat().st_size)}

        def put() -> None:
            with path.open("rb") as fh:
                self._request("PUT", url, data=fh, headers=headers)

        _with_retries(f"PUT {self.url(key)}", put, self.retries, self.backoff_s)
        return self.url(key)

    def put_revision(self, ref: RevisionRef, files: dict[str, Path],
                     on_file: Callable[[str], None] | None = None) -> dict[str, str]:
        """Upload a revision's files to staging and commit them in one step; return name -> URL.

        Nothing is readable before the commit; on failure the staged upload is aborted.
        Raises RevisionExists when the revision is already committed.
        """
        upload_id = uuid.uuid4().hex
        urls: dict[str, str] = {}
        try:
            for name, path in files.items():
                urls[name] = self.put_file(ref.key(name), path, upload_id)
                if on_file:
                    on_file(name)
            commit = f"{self.base_url}/_commit/{ref.prefix}?upload={upload_id}"
            _with_retries(f"POST {commit}", lambda: self._request("POST", commit, data=b""), self.retries,
                          self.backoff_s)
        except StoreError:
            self.abort(ref, upload_id)
            raise
        log.info("Committed revision %s to %s (%d files)", ref.prefix, self.base_url, len(files))
        return urls

    def abort(self, ref: RevisionRef, upload_id: str) -> None:
        """Best-effort removal of a staged upload."""
        try:
            self._request("DELETE", f"{self.base_url}/_staging/{ref.prefix}?upload={upload_id}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            log.warning("Could not abort staged upload %s of %s: %s", upload_id, ref.prefix, exc)

    def delete(self, key: str) -> None:
        url = self.url(key)
        _with_retries(f"DELETE {url}", lambda: self._request("DELETE", url), self.retries, self.backoff_s)


def download(url: str, dest: Path, sha256: str | None = None, headers: dict[str, str] | None = None,
             timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
             on_bytes: Callable[[int, int | None], None] | None = None) -> str:
    """Download ``url`` to ``dest`` with resume; verify ``sha256`` when given; return the file's sha256.

    A partial ``dest.part`` left by an interrupted attempt is continued with ``Range``. Raises
    StoreError (404/403 are not retryable; connection errors and 5xx are, after the retries).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def attempt() -> None:
        have = part.stat().st_size if part.exists() else 0
        request_headers = dict(headers or {})
        if have:
            request_headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=request_headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # already complete
                return
            raise
        with response:
            resumed = response.status == 206
            length = response.headers.get("Content-Length")
            total = (int(length) + (have if resumed else 0)) if length else None
            with part.open("ab" if resumed else "wb") as fh:
                done = have if resumed else 0
                while block := response.read(1 << 20):
                    fh.write(block)
                    done += len(block)
                    if on_bytes:
                        on_bytes(done, total)
        if total is not None and part.stat().st_size != total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")

    _with_retries(f"GET {url}", attempt, retries, backoff_s)
    actual = _sha256(part)
    if sha256 and actual != sha256:
        part.unlink(missing_ok=True)
        raise StoreError(f"GET {url}: sha256 {actual} differs from the expected {sha256}", retryable=False)
    part.replace(dest)
    return actual
