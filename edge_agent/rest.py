"""The Open Inference Protocol v2 REST router (aiohttp): HTTP in, data plane calls, HTTP out.

Every ``AgentError`` becomes ``{"error": message}`` with its status here and nowhere else;
anything unexpected is logged with a traceback and answered with 500.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from edge_agent.codec import decode_request, encode_response
from edge_agent.dataplane import DataPlane
from edge_agent.errors import AgentError, InvalidInput, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from edge_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_agent.repository import ModelVersion

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}
HEADER_LENGTH = "Inference-Header-Content-Length"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), headers={**JSON_HEADERS, **(headers or {})}
    )


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), headers=JSON_HEADERS)


class RestApi:
    """Route handlers bound to a data plane, with optional bearer-token auth."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics_exposition: Callable[[], bytes],
        token: str | None = None,
        metrics_require_token: bool = False,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.dataplane = dataplane
        self.metrics_exposition = metrics_exposition
        self._expected_auth = f"Bearer {token}".encode() if token else None
        self.metrics_require_token = metrics_require_token
        self.max_body_bytes = max_body_bytes

    # -- helpers -----------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> None:
        if self._expected_auth is None:
            return
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected_auth):
            raise Unauthorized("missing or wrong bearer token; send Authorization: Bearer <token>")

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("identity", "gzip", "deflate", ""):
            raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported; use gzip, deflate or none")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes") from exc

    @staticmethod
    def _version(request: web.Request) -> str | None:
        return request.match_info.get("version")

    # -- health and metadata -----------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.dataplane.live else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.dataplane.ready() else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return json_response(self.dataplane.server_metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        self._authorize(request)
        ready = self.dataplane.model_ready(request.match_info["name"], self._version(request))
        return web.Response(status=200 if ready else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = self.dataplane.model_metadata(request.match_info["name"], self._version(request))
        return web.Response(body=body, headers=JSON_HEADERS)

    async def model_config(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return json_response(self.dataplane.model_config(request.match_info["name"], self._version(request)))

    async def repository_index(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return json_response(self.dataplane.repository.index())

    async def metrics(self, request: web.Request) -> web.Response:
        if self.metrics_require_token:
            self._authorize(request)
        return web.Response(body=self.metrics_exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    # -- inference ---------------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        mv: ModelVersion | None = None
        status = 500
        try:
            self._authorize(request)
            mv = self.dataplane.repository.resolve(request.match_info["name"], self._version(request))
            mv.acquire()
            try:
                body = await self._body(request)
                header = request.headers.get(HEADER_LENGTH)
                header_length: int | None = None
                if header is not None:
                    try:
                        header_length = int(header)
                    except ValueError:
                        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header!r:.40}") from None
                infer_request = decode_request(body, header_length)
                outputs = await self.dataplane.infer(mv, infer_request)
                payload, json_length = encode_response(mv.name, mv.version, infer_request.id, outputs)
            finally:
                mv.release()
            status = 200
            if json_length is None:
                return web.Response(body=payload, headers=JSON_HEADERS)
            return web.Response(
                body=payload, headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(json_length)}
            )
        except AgentError as exc:
            status = exc.status
            if status >= 500:
                log.error("Inference on %s failed: %s", request.path, exc.message)
            return error_response(status, exc.message, {"Retry-After": "1"} if status == 503 else None)
        except Exception as exc:
            log.exception("Inference on %s failed unexpectedly", request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}"[:500])
        finally:
            if mv is not None:
                mv.record(status, time.perf_counter() - started)
            else:
                self.dataplane.record_unattributed(status)

    # -- wiring ------------------------------------------------------------------------------
    def routes(self) -> list[web.AbstractRouteDef]:
        m = "/v2/models/{name}"
        mv = "/v2/models/{name}/versions/{version}"
        return [  # inference first: the router tries routes in order
            web.post(f"{m}/infer", self.infer),
            web.post(f"{mv}/infer", self.infer),
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get(m, self.model_metadata),
            web.get(mv, self.model_metadata),
            web.get(f"{m}/ready", self.model_ready),
            web.get(f"{mv}/ready", self.model_ready),
            web.get(f"{m}/config", self.model_config),
            web.get(f"{mv}/config", self.model_config),
            web.post("/v2/repository/index", self.repository_index),
            web.get("/metrics", self.metrics),
        ]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn router and handler errors (unknown path, wrong method, AgentError) into JSON bodies."""
    try:
        return await handler(request)
    except AgentError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such endpoint {request.method} {request.path}; see the Open Inference Protocol v2 paths under /v2"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        else:
            message = exc.text or exc.reason
        return error_response(exc.status, message)


def build_app(api: RestApi, client_max_size: int) -> web.Application:
    """The aiohttp application serving the v2 protocol and /metrics."""
    app = web.Application(client_max_size=client_max_size, middlewares=[json_errors])
    app.add_routes(api.routes())
    return app
