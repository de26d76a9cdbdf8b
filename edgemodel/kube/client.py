"""The one Kubernetes API client of the product (agent and operator): JSON over aiohttp, no ``kubernetes`` package.

get / list / watch / create / put / patch (JSON, merge and server-side apply) / delete, on any path
(``resource_path`` builds them). Every request carries the current bearer token (a token file is
re-read every minute: projected service-account tokens rotate). Transient failures (connection
errors, 429, 5xx) are retried with the one retry policy (:mod:`edgemodel.retry`); other error statuses
raise :class:`ApiError` at once, an unreachable server :class:`ApiUnavailable` after the attempts.
``on_response(verb, path, code)`` sees every attempt (the operator counts them in its metrics).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, overload

import aiohttp
import orjson

from edgemodel.kube.credentials import Credentials
from edgemodel.kube.errors import ApiError, ApiUnavailable, transient
from edgemodel.retry import Backoff, retry_async

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
"""Server-side apply; JSON is YAML, so the body is sent as JSON."""
TOKEN_REREAD_SECONDS = 60.0
DEFAULT_BACKOFF = Backoff(first=0.2, cap=2.0)
"""0.2 s, 0.4 s, 0.8 s ... between attempts, +-10%."""
MAX_LINE_BYTES = 64 * 1024 * 1024
"""A watch event longer than this ends the watch (ApiUnavailable): the stream is hostile input too."""


def request_headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
    """Headers of a JSON request: Accept, Content-Type (when there is a body) and the bearer token."""
    headers = {"Accept": JSON}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def api_error(method: str, path: str, status: int, raw: bytes) -> ApiError:
    """``ApiError`` worded ``"<VERB> <path>: HTTP <status> <reason>: <message>"`` from a Status body (or the text)."""
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict):
            raise TypeError
        reason, message = str(body.get("reason") or ""), str(body.get("message") or body)[:500]
    except (orjson.JSONDecodeError, TypeError):
        reason, message = "", raw[:300].decode(errors="replace")
    text = f"{method} {path}: HTTP {status}{' ' + reason if reason else ''}: {message}"
    return ApiError(status, message, text, reason)


class KubeClient:
    """JSON requests to the API server with authentication, bounded retries and typed errors."""

    def __init__(
        self, credentials: Credentials, *, attempts: int = 3, backoff: Backoff = DEFAULT_BACKOFF,
        request_timeout_s: float = 15.0, max_parallel: int = 4, field_manager: str | None = None,
        on_response: Callable[[str, str, str], None] | None = None,
    ) -> None:  # fmt: skip
        self.credentials = credentials
        self.attempts = attempts
        self.backoff = backoff
        self.request_timeout_s = request_timeout_s
        self.field_manager = field_manager
        self.on_response = on_response
        self._max_parallel = max_parallel
        self._limit = asyncio.Semaphore(max_parallel)
        self._token: str | None = credentials.token
        self._token_read_at: float | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def current_token(self) -> str | None:
        """The bearer token; a token file is re-read when its copy is a minute old."""
        creds = self.credentials
        stale = self._token_read_at is None or time.monotonic() - self._token_read_at > TOKEN_REREAD_SECONDS
        if creds.token_file and stale:
            try:
                self._token = creds.token_file.read_text().strip()
                self._token_read_at = time.monotonic()
            except OSError as exc:
                log.warning("Could not read the API token file %s: %s", creds.token_file, exc)
        return self._token

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=self._max_parallel + 4)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _count(self, method: str, path: str, code: str) -> None:
        if self.on_response is not None:
            self.on_response(method, path, code)

    def _write_params(self, params: dict[str, str] | None = None) -> dict[str, str] | None:
        if self.field_manager is None:
            return params
        return {**(params or {}), "fieldManager": self.field_manager}

    # -- requests ----------------------------------------------------------------------------
    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = JSON,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One API call, transient failures retried; ApiError for error statuses, ApiUnavailable when unreachable."""
        data = None if body is None else orjson.dumps(body)
        url = self.credentials.server + path

        async def once() -> dict[str, Any]:
            headers = request_headers(self.current_token(), content_type if body is not None else None)
            try:
                async with self._limit, self._open().request(
                    method, url, data=data, headers=headers, params=params,
                    timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                ) as resp:  # fmt: skip
                    self._count(method, path, str(resp.status))
                    raw = await resp.read()
                    if resp.status >= 400:
                        raise api_error(method, path, resp.status, raw)
                    parsed = orjson.loads(raw) if raw else {}
                    return parsed if isinstance(parsed, dict) else {"items": parsed}
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
                self._count(method, path, "error")
                raise ApiUnavailable(f"{method} {path}: API server {self.credentials.server} unreachable: "
                                     f"{type(exc).__name__}: {exc}") from exc

        return await retry_async(once, what=f"{method} {path}", attempts=self.attempts, backoff=self.backoff,
                                 retry_on=transient)

    @overload
    async def get(self, path: str, params: dict[str, str] | None = None, *,
                  missing_ok: Literal[False] = False) -> dict[str, Any]: ...
    @overload
    async def get(self, path: str, params: dict[str, str] | None = None, *,
                  missing_ok: Literal[True]) -> dict[str, Any] | None: ...
    async def get(self, path: str, params: dict[str, str] | None = None, *,
                  missing_ok: bool = False) -> dict[str, Any] | None:
        """The object; with ``missing_ok`` None when it does not exist (else ApiError 404)."""
        try:
            return await self.request("GET", path, params=params)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def list_object(self, path: str, label_selector: str | None = None) -> dict[str, Any]:
        """The whole list object (items and metadata.resourceVersion, to watch from)."""
        return await self.request("GET", path, params={"labelSelector": label_selector} if label_selector else None)

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """The items of a list."""
        return list((await self.list_object(path, label_selector)).get("items") or [])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body, params=self._write_params())

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace an object (optimistic concurrency on its metadata.resourceVersion)."""
        return await self.request("PUT", path, body, params=self._write_params())

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """A JSON patch (``JSON_PATCH``, a list of operations) or a merge patch (the default)."""
        return await self.request("PATCH", path, body, content_type=content_type, params=self._write_params())

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.patch(path, patch, MERGE_PATCH)

    async def apply(self, path: str, body: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Server-side apply of ``body`` (the fields this client's ``field_manager`` owns); needs a field manager."""
        if not self.field_manager:
            raise ValueError("server-side apply needs a field manager: KubeClient(..., field_manager=NAME)")
        params = self._write_params({"force": "true"} if force else None)
        return await self.request("PATCH", path, body, content_type=APPLY_PATCH, params=params)

    async def delete(self, path: str, propagation: str = "Background") -> None:
        """Delete an object (and its dependents, by ``propagation``); nothing when it is already gone."""
        try:
            await self.request("DELETE", path, {"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status != 404:
                raise

    # -- watching ----------------------------------------------------------------------------
    async def stream(self, path: str, params: dict[str, str], timeout_s: float | None = None) -> AsyncIterator[bytes]:
        """The lines of a streaming GET (a watch), unparsed, until the server ends it (or ``timeout_s`` + 30 s
        pass); ApiError / ApiUnavailable when it cannot start or breaks. Not retried: the caller lists again."""
        timeout = aiohttp.ClientTimeout(total=None if timeout_s is None else timeout_s + 30,
                                        sock_connect=self.request_timeout_s, sock_read=None if timeout_s else 120)
        try:
            async with self._open().get(self.credentials.server + path, params=params, timeout=timeout,
                                        headers=request_headers(self.current_token())) as resp:
                self._count("WATCH", path, str(resp.status))
                if resp.status >= 400:
                    raise api_error("WATCH", path, resp.status, await resp.read())
                buffer = b""
                async for chunk in resp.content.iter_any():  # events are JSON lines of any length
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > MAX_LINE_BYTES:
                        raise ApiUnavailable(f"WATCH {path}: an event longer than {MAX_LINE_BYTES} bytes")
                    for line in lines:
                        if line.strip():
                            yield line
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise ApiUnavailable(f"WATCH {path}: API server {self.credentials.server} unreachable: "
                                 f"{type(exc).__name__}: {exc}") from exc

    async def watch(self, path: str, params: dict[str, str],
                    timeout_s: float) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events of a watch until the server ends it or ``timeout_s`` passes."""
        query = {**params, "watch": "true", "timeoutSeconds": str(int(timeout_s))}
        async for line in self.stream(path, query, timeout_s):
            event = orjson.loads(line)
            yield str(event.get("type", "")), event.get("object") or {}
