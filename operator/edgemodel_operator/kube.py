"""A small asyncio Kubernetes API client for the operator's own requests (Jobs, Pods, EdgeAgents).

kopf watches and patches through its own client; both log in from the same place (the
kubernetes package's kubeconfig / in-cluster loader). Every request is counted by verb,
resource and code (``edgemodel_operator_api_requests_total``); transient failures (connection
errors, 429, 5xx) are retried a bounded number of times with backoff. Errors, TLS and the
session come from ``edgemodel.kubeapi``, which the agent's client shares.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from edgemodel.kubeapi import (
    MERGE_PATCH,
    SERVICE_ACCOUNT,
    ApiError,
    ApiUnavailable,
    SessionOwner,
    request_headers,
    tls_context,
)
from edgemodel_operator.constants import MANAGER
from edgemodel_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)


@dataclass
class KubeConfig:
    """Where the API server is and how to authenticate; built by ``load_kube_config``."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    refresh: Any = None
    """The kubernetes client's Configuration, which refreshes expiring tokens (in-cluster, exec plugins)."""
    default_namespace: str | None = None

    def current_token(self) -> str | None:
        """The bearer token, refreshed first when the loader can (in-cluster files, exec plugins)."""
        if self.refresh is not None:
            if getattr(self.refresh, "refresh_api_key_hook", None):
                self.refresh.refresh_api_key_hook(self.refresh)
            return _bearer(self.refresh) or self.token
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        return tls_context(verify=self.verify, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


def load_kube_config(kubeconfig: Path | None) -> KubeConfig:
    """From a kubeconfig file (given, $KUBECONFIG or ~/.kube/config) or the in-cluster service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    in_cluster = False
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=cfg)
            in_cluster = True
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    token = _bearer(cfg)
    namespace = None
    ns_file = SERVICE_ACCOUNT / "namespace"
    if in_cluster and ns_file.is_file():
        namespace = ns_file.read_text().strip()
    return KubeConfig(
        server=cfg.host.rstrip("/"),
        token=token,
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        verify=bool(cfg.verify_ssl),
        refresh=cfg,
        default_namespace=namespace,
    )


def _bearer(cfg: Any) -> str | None:
    """The token of a kubernetes client Configuration (its key name differs between versions)."""
    for key in ("BearerToken", "authorization"):
        value = cfg.get_api_key_with_prefix(key)
        if value:
            return str(value).removeprefix("Bearer ").strip()
    return None


def resource_of(path: str) -> str:
    """The resource name of an API path, for metrics: /apis/batch/v1/namespaces/x/jobs/y -> jobs."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts:
        i = parts.index("namespaces")
        parts = parts[i + 2:] if len(parts) > i + 2 else ["namespaces"]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    if not parts:
        return "unknown"
    if len(parts) >= 3:
        return f"{parts[0]}/{parts[2]}"
    return parts[0]


class KubeClient(SessionOwner):
    """JSON over HTTP with the API server: get, list, create, patch, delete."""

    def __init__(self, config: KubeConfig, metrics: OperatorMetrics | None = None, max_parallel: int = 32,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.config = config
        self.retry_delays = retry_delays
        self.metrics = metrics
        self._limit = asyncio.Semaphore(max_parallel)
        self._max_parallel = max_parallel

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_parallel + 4, ssl=self.config.ssl_context())
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API call with bounded retries of transient failures; raises ApiError / ApiUnavailable."""
        url = self.config.server + path
        last: Exception | None = None
        for attempt, delay in enumerate((*self.retry_delays, None)):
            headers = request_headers(self.config.current_token(), content_type if body is not None else None)
            try:
                async with self._limit, self._open().request(
                    method, url, json=body, params=params, headers=headers
                ) as resp:
                    self._count(method, path, str(resp.status))
                    text = await resp.text()
                    if resp.status < 400:
                        return _json(text)
                    message = _message(text)
                    error = ApiError(resp.status, message, f"{method} {path}: HTTP {resp.status}: {message}")
                    if resp.status not in (429, 500, 502, 503, 504):
                        raise error
                    last = error
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._count(method, path, "error")
                last = exc
            if delay is None:
                break
            log.debug("Retrying %s %s after %s (attempt %d)", method, path, last, attempt + 1)
            await asyncio.sleep(delay)
        if isinstance(last, ApiError):
            raise last
        raise ApiUnavailable(f"{method} {path}: API server {self.config.server} unreachable: {last}")

    def _count(self, method: str, path: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.api_requests.labels(verb=method.lower(), resource=resource_of(path), code=code).inc()

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        return list((await self.request("GET", path, params=params)).get("items") or [])

    async def list_object(self, path: str, label_selector: str | None = None) -> dict[str, Any]:
        """The whole list object (items and metadata.resourceVersion, to watch from)."""
        return await self.request("GET", path, params={"labelSelector": label_selector} if label_selector else None)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body, params={"fieldManager": MANAGER})

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=content_type,
                                  params={"fieldManager": MANAGER})

    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[bytes]:
        """The lines of a streaming GET (a watch), unparsed; ApiError / ApiUnavailable when it cannot start."""
        headers = request_headers(self.config.current_token())
        try:
            async with self._open().get(self.config.server + path, params=params, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as resp:
                self._count("WATCH", path, str(resp.status))
                if resp.status >= 400:
                    text = await resp.text()
                    raise ApiError(resp.status, _message(text), f"WATCH {path}: HTTP {resp.status}: {_message(text)}")
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiUnavailable(f"WATCH {path}: API server {self.config.server} unreachable: {exc}") from exc

    async def delete(self, path: str, propagation: str = "Background") -> None:
        try:
            await self.request("DELETE", path, body={"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status != 404:
                raise


def _json(text: str) -> dict[str, Any]:
    import json

    if not text:
        return {}
    data = json.loads(text)
    return data if isinstance(data, dict) else {"items": data}


def _message(text: str) -> str:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    return str(data.get("message") or data)[:500] if isinstance(data, dict) else text[:300]


class Paths:
    """API paths of the objects the operator touches."""

    @staticmethod
    def edgemodel(namespace: str, name: str) -> str:
        return f"/apis/edgemodel.io/v1alpha1/namespaces/{namespace}/edgemodels/{quote(name)}"

    @staticmethod
    def edgemodel_status(namespace: str, name: str) -> str:
        return Paths.edgemodel(namespace, name) + "/status"

    @staticmethod
    def edgeagents() -> str:
        return "/apis/edgemodel.io/v1alpha1/edgeagents"

    @staticmethod
    def nodes() -> str:
        return "/api/v1/nodes"

    @staticmethod
    def edgeagent(name: str) -> str:
        return f"/apis/edgemodel.io/v1alpha1/edgeagents/{quote(name)}"

    @staticmethod
    def jobs(namespace: str) -> str:
        return f"/apis/batch/v1/namespaces/{namespace}/jobs"

    @staticmethod
    def job(namespace: str, name: str) -> str:
        return f"{Paths.jobs(namespace)}/{quote(name)}"

    @staticmethod
    def leases(namespace: str) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    @staticmethod
    def pods(namespace: str) -> str:
        return f"/api/v1/namespaces/{namespace}/pods"
