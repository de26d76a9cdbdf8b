"""A minimal Kubernetes API client on aiohttp: get, create, merge-patch, watch (no ``kubernetes`` package).

Credentials come from a kubeconfig file (bearer token, token file or client certificate; CA
file or inline data) or from the pod's service account (token re-read every minute, since
projected tokens rotate). Errors, TLS and the session come from ``edgemodel.kubeapi``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yaml

from edgemodel.errors import UserError
from edgemodel.kubeapi import (
    MERGE_PATCH,
    SERVICE_ACCOUNT,
    ApiError,
    ApiUnavailable,
    SessionOwner,
    bearer,
    request_headers,
    tls_context,
)

log = logging.getLogger(__name__)


@dataclass
class Credentials:
    """Where the API server is and how to authenticate."""

    server: str
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS settings for aiohttp (True = system defaults)."""
        if not self.server.startswith("https"):
            return True
        return tls_context(verify=not self.insecure, ca_file=self.ca_file, ca_data=self.ca_data,
                           cert_file=self.client_cert, key_file=self.client_key)


def _data_file(data: str, suffix: str, folder: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    os.chmod(name, 0o600)
    return Path(name)


def load_kubeconfig(path: Path, context: str | None = None, scratch: Path | None = None) -> Credentials:
    """Credentials of the current (or given) context of a kubeconfig file."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--kubeconfig {path}: cannot read it as YAML ({exc})") from exc
    name = context or config.get("current-context")

    def pick(section: str, wanted: str | None) -> dict[str, Any]:
        for item in config.get(section) or []:
            if item.get("name") == wanted:
                return dict(item.get(section[:-1]) or {})
        raise UserError(f"--kubeconfig {path}: no {section[:-1]} named {wanted!r}; check current-context")

    ctx = pick("contexts", name)
    cluster = pick("clusters", ctx.get("cluster"))
    user = pick("users", ctx.get("user")) if ctx.get("user") else {}
    base = path.parent

    def rel(value: str | None) -> Path | None:
        return (base / value) if value and not os.path.isabs(value) else (Path(value) if value else None)

    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise UserError(f"--kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server URL")
    cert = rel(user.get("client-certificate"))
    key = rel(user.get("client-key"))
    if user.get("client-certificate-data") or user.get("client-key-data"):  # ssl wants files
        folder = scratch or Path(tempfile.mkdtemp(prefix="edgemodel-kubeconfig-"))
        if user.get("client-certificate-data"):
            cert = _data_file(user["client-certificate-data"], ".crt", folder)
        if user.get("client-key-data"):
            key = _data_file(user["client-key-data"], ".key", folder)
    return Credentials(
        server=server,
        token=user.get("token"),
        token_file=rel(user.get("tokenFile")),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=base64.b64decode(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None,
        client_cert=cert,
        client_key=key,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def in_cluster_credentials(account: Path = SERVICE_ACCOUNT) -> Credentials:
    """Credentials of the pod's service account."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise UserError("--in-cluster: KUBERNETES_SERVICE_HOST is not set; run inside a pod or pass --kubeconfig")
    if not (account / "token").is_file():
        raise UserError(f"--in-cluster: {account / 'token'} is missing; mount the service account token")
    host = f"[{host}]" if ":" in host else host
    return Credentials(server=f"https://{host}:{port}", token_file=account / "token", ca_file=account / "ca.crt")


class KubeClient(SessionOwner):
    """JSON requests to the API server with authentication and typed errors."""

    def __init__(self, credentials: Credentials, request_timeout_s: float = 15.0) -> None:
        self.credentials = credentials
        self.request_timeout_s = request_timeout_s
        self._token: str | None = credentials.token
        self._token_read_at: float | None = None

    def _current_token(self) -> str | None:
        creds = self.credentials
        if creds.token_file and (self._token_read_at is None or time.monotonic() - self._token_read_at > 60):
            try:
                self._token = creds.token_file.read_text().strip()
                self._token_read_at = time.monotonic()
            except OSError as exc:
                log.warning("Could not read the API token file %s: %s", creds.token_file, exc)
        return self._token

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=8)
        return aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode())

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request; ApiError for error statuses, ApiUnavailable when the server cannot be reached."""
        client = self._open()
        headers = request_headers(self._current_token(), content_type if body is not None else None)
        data = None if body is None else orjson.dumps(body)
        try:
            async with client.request(
                method, self.credentials.server + path, data=data, headers=headers, params=params,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            ) as resp:  # fmt: skip
                raw = await resp.read()
                if resp.status >= 400:
                    raise _api_error(resp.status, raw)
                return orjson.loads(raw) if raw else {}
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace an object (optimistic concurrency on its metadata.resourceVersion)."""
        return await self.request("PUT", path, body)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def watch(
        self, path: str, params: dict[str, str], timeout_s: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events of a watch until the server ends it or ``timeout_s`` passes."""
        client = self._open()
        query = {**params, "watch": "true", "timeoutSeconds": str(int(timeout_s))}
        try:
            async with client.get(
                self.credentials.server + path, params=query, headers=bearer(self._current_token()),
                timeout=aiohttp.ClientTimeout(total=timeout_s + 30, sock_connect=self.request_timeout_s),
            ) as resp:  # fmt: skip
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.read())
                buffer = b""
                async for chunk in resp.content.iter_any():  # events are JSON lines of any length
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = orjson.loads(line)
                            yield str(event.get("type", "")), event.get("object") or {}
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise ApiUnavailable(f"watch {path}: {type(exc).__name__}: {exc}") from exc


def _api_error(status: int, raw: bytes) -> ApiError:
    """``ApiError`` worded ``"<status> <reason>: <message>"`` from a Status body (or the raw text)."""
    try:
        body = orjson.loads(raw)
        reason, message = str(body.get("reason", "")), str(body.get("message", raw[:300]))
    except (orjson.JSONDecodeError, AttributeError):
        reason, message = "", raw[:300].decode(errors="replace")
    return ApiError(status, message, f"{status} {reason}: {message}", reason)


def resource_path(group: str, version: str, plural: str, name: str | None = None, subresource: str | None = None) -> str:
    """Path of a cluster-scoped resource (core group when ``group`` is empty)."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


async def sleep_backoff(attempt: int, first: float, cap: float = 60.0) -> None:
    """Exponential backoff: first, 2*first, ... capped."""
    await asyncio.sleep(min(cap, first * (2 ** max(0, attempt))))
