"""The Open Inference Protocol v2 REST router (aiohttp): HTTP in, data plane calls, HTTP out.

Every ``AgentError`` becomes ``{"error": message}`` with its status here and nowhere else;
anything unexpected is logged with a traceback and answered with 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from edge_agent.body import RequestLimits, decompress, encoding_of, read_body
from edge_agent.codec import InferRequest, TensorSpec, decode_request, encode_response
from edge_agent.dataplane import DataPlane
from edge_agent.errors import AgentError, InvalidInput, PayloadTooLarge, Unauthorized
from edge_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_agent.repository import ModelVersion
from edgemodel.auth import bearer_matches

log = logging.getLogger(__name__)
T = TypeVar("T")

JSON_HEADERS = {"Content-Type": "application/json"}
HEADER_LENGTH = "Inference-Header-Content-Length"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INLINE_DECODE_BYTES = 1 << 20
"""Plain bodies up to this size are decoded on the event loop; larger or compressed ones in the decode
thread, one at a time (measured: 4 clients sending 3 MiB JSON stalled others 1-1.6 s when parsed on
the loop, 0.2-0.4 s from the thread, on a loaded 2-core machine)."""


def decode_body(
    body: bytes | bytearray, encoding: str, header_length: int | None, limits: RequestLimits, model_inputs: Mapping[str, TensorSpec]
) -> InferRequest:
    """Decompress and decode a raw body under ``limits`` (runs on any thread).

    A refusal is raised without its traceback and without a reference cycle: either would keep the
    body (and a half-parsed one) alive while the next request is read.
    """
    try:
        return _decode_body(body, encoding, header_length, limits, model_inputs)
    except AgentError as exc:
        error = type(exc)(exc.message)
    try:
        raise error
    finally:
        del error  # else error -> traceback -> this frame -> error: a cycle that keeps the body until a GC pass


def _decode_body(
    body: bytes | bytearray, encoding: str, header_length: int | None, limits: RequestLimits, model_inputs: Mapping[str, TensorSpec]
) -> InferRequest:
    data = decompress(body, encoding, limits.max_decompressed_bytes)
    json_length = header_length if header_length is not None else len(data)
    if 0 < json_length <= len(data) and json_length > limits.max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part of the request is {json_length} bytes, above the limit of {limits.max_json_bytes} "
            "(--max-json-bytes); send large tensors with the binary tensor extension (binary_data_size)"
        )
    return decode_request(data, header_length, limits.decode, model_inputs)


def error_body(message: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The ``{"error": message}`` body and its headers."""
    message = message.encode("utf-8", "replace").decode()  # header bytes echoed in a message may be surrogates
    return orjson.dumps({"error": message}), {**JSON_HEADERS, **(headers or {})}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body, all_headers = error_body(message, headers)
    return web.Response(status=status, body=body, headers=all_headers)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What an inference request's answer depends on besides its body and its model."""

    path: str
    authorization: str
    header_length: str | None
    """The Inference-Header-Content-Length header (binary tensor extension), if any."""
    content_encoding: str


BodyReader = Callable[[], Awaitable[bytes | bytearray]]


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
        limits: RequestLimits | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics_exposition = metrics_exposition
        self._token = token.encode() if token else None
        self.metrics_require_token = metrics_require_token
        self.limits = limits or RequestLimits()
        self.observer: Callable[[Any, InferRequest, list[tuple[str, Any, bool]]], None] | None = None
        """Sees every answered request (continual learning: edge_agent.capture_worker); must not block."""
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        """Large or compressed bodies are decoded here, one at a time: the event loop stays responsive and
        at most one large decode's memory is in use at once."""

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    async def decode_off_loop(self, decode: Callable[[], T]) -> T:
        """Run a large decode in the decode thread (one at a time), e.g. a large gRPC request's."""
        return await asyncio.get_running_loop().run_in_executor(self._decoder, decode)

    # -- helpers -----------------------------------------------------------------------------
    def _authorize(self, request: web.BaseRequest) -> None:
        if self._token is None:
            return
        if not bearer_matches(request.headers.get("Authorization", ""), self._token):
            raise Unauthorized("missing or wrong bearer token; send Authorization: Bearer <token>")

    async def _decode(
        self, head: RequestHead, body: bytes | bytearray | BodyReader, model_inputs: Mapping[str, TensorSpec]
    ) -> InferRequest:
        """Read, decompress and decode the body under the limits (large or compressed ones off the event loop)."""
        header = head.header_length
        header_length: int | None = None
        if header is not None:
            try:
                header_length = int(header)
            except ValueError:
                raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header!r:.40}") from None
        encoding = encoding_of(head.content_encoding)
        if not isinstance(body, (bytes, bytearray)):
            body = await body()
        if not encoding and len(body) <= INLINE_DECODE_BYTES:
            return decode_body(body, encoding, header_length, self.limits, model_inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, decode_body, body, encoding, header_length, self.limits, model_inputs)

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
        return await self.infer_model(request, request.match_info["name"], self._version(request))

    async def infer_model(self, request: web.BaseRequest, name: str, version: str | None) -> web.Response:
        """POST .../infer for the model ``name`` (``version``: None routes to its default version)."""
        h = request.headers
        head = RequestHead(request.path, h.get("Authorization", ""), h.get(HEADER_LENGTH), h.get("Content-Encoding", ""))
        status, payload, headers = await self.infer_bytes(head, lambda: read_body(request, self.limits), name, version)
        return web.Response(status=status, body=payload, headers=headers)

    def needs_no_task(self, name: str, version: str | None) -> bool:
        """True when ``infer_bytes`` for this model may start outside an asyncio task (``hotpath.run_eagerly``):
        a plain model without batching, or batching without queue delay (its waits are futures: executor,
        semaphore, its batch's result), or a refusal."""
        try:
            mv = self.dataplane.repository.resolve(name, version)
        except AgentError:
            return True
        return type(mv) is ModelVersion and (mv.batcher is None or mv.batcher.max_queue_delay_s == 0)

    async def infer_bytes(
        self, head: RequestHead, body: bytes | bytearray | BodyReader, name: str, version: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        """One inference request, HTTP-framing free: (status, body, headers) of the answer, errors included.

        ``body`` is the raw body, or a coroutine function reading it under the limits (aiohttp's path);
        the hot path (``edge_agent.hotpath``) and the aiohttp handler both answer through here.
        """
        started = time.perf_counter()
        mv: ModelVersion | None = None
        status = 500
        try:
            if self._token is not None and not bearer_matches(head.authorization, self._token):
                raise Unauthorized("missing or wrong bearer token; send Authorization: Bearer <token>")
            mv = self.dataplane.repository.resolve(name, version)
            mv.acquire()
            try:
                infer_request = await self._decode(head, body, mv.model.input_by_name)
                outputs = await self.dataplane.infer(mv, infer_request)
                if self.observer is not None:
                    self.observer(mv, infer_request, outputs)
                payload, json_length = encode_response(mv.name, mv.version, infer_request.id, outputs)
            finally:
                mv.release()
            status = 200
            if json_length is None:
                return 200, payload, JSON_HEADERS
            return 200, payload, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(json_length)}
        except AgentError as exc:
            status = exc.status
            if status >= 500:
                log.error("Inference on %s failed: %s", head.path, exc.message)
            return status, *error_body(exc.message, {"Retry-After": "1"} if status == 503 else None)
        except Exception as exc:
            log.exception("Inference on %s failed unexpectedly", head.path)
            return 500, *error_body(f"internal error: {type(exc).__name__}: {exc}"[:500])
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


INFER_PREFIX = "/v2/models/"
INFER_SUFFIX = "/infer"


def hot_route(api: RestApi, fallback: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> Callable[
    [web.BaseRequest], Awaitable[web.StreamResponse]
]:  # fmt: skip
    """The request handler of the HTTP server: inference requests go straight to ``api.infer_model``.

    A plain ``POST /v2/models/NAME[/versions/VERSION]/infer`` skips the router, the match info and the
    middleware chain (the handler answers every error itself); everything else, and any request with
    an ``Expect`` header (100-continue is answered by the application), takes the ``fallback``: the
    aiohttp application with its routes. Measured in docs/benchmarks.md ("REST hot path").
    """
    prefix, suffix = INFER_PREFIX, INFER_SUFFIX
    start, end = len(prefix), -len(suffix)
    infer = api.infer_model

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            path = request.path
            if path.startswith(prefix) and path.endswith(suffix) and "Expect" not in request.headers:
                parts = path[start:end].split("/")
                if len(parts) == 1 and parts[0]:
                    return await infer(request, parts[0], None)
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    return await infer(request, parts[0], parts[2])
        return await fallback(request)

    return handle


def build_app(api: RestApi, client_max_size: int) -> web.Application:
    """The aiohttp application serving the v2 protocol and /metrics."""
    app = web.Application(client_max_size=client_max_size, middlewares=[json_errors])
    app.add_routes(api.routes())
    return app
