"""The light core shared by the agent's and the operator's Kubernetes API clients.

Errors, TLS settings, request headers and the lazily opened aiohttp session; stdlib and aiohttp
only, so the edge agent can use it (never the ``kubernetes`` package or kopf). How each client
finds its credentials, retries and words its errors stays with that client.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error status; ``text`` is the whole one-line description."""

    def __init__(self, status: int, message: str, text: str, reason: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.message = message


class ApiUnavailable(Exception):
    """The API server could not be reached (connection refused, timeout, TLS failure...; after the retries, if any)."""


def tls_context(
    *, verify: bool = True, ca_file: str | Path | None = None, ca_data: bytes | None = None,
    cert_file: str | Path | None = None, key_file: str | Path | None = None,
) -> ssl.SSLContext:  # fmt: skip
    """TLS client settings: the given CA (else the system's) or no verification, and a client certificate."""
    if verify:
        ctx = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None, cadata=ca_data.decode() if ca_data else None
        )
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header of a bearer token (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def request_headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
    """Headers of a JSON request: Accept, Content-Type (when there is a body) and the bearer token."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return {**headers, **bearer(token)}


class SessionOwner:
    """Holds one aiohttp session to the API server, opened on first use and again after ``close``."""

    _session: aiohttp.ClientSession | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        """A new session with the client's connector (TLS, connection limit) and defaults."""
        raise NotImplementedError

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
