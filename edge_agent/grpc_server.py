"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on ``--grpc-port``.

A ``grpc.aio`` server on the agent's event loop, beside the REST server and sharing everything
with it: the data plane (repository, batching, inline runs, metrics), the bearer token (gRPC
metadata ``authorization: Bearer <token>``), the TLS certificate and the request limits
(``--max-body-bytes`` bounds a received message, ``--max-elements`` the tensors it may claim).

Errors map in one place (:data:`GRPC_CODES`): bad input is INVALID_ARGUMENT, an unknown model
NOT_FOUND, a missing token UNAUTHENTICATED, a claim beyond the limits RESOURCE_EXHAUSTED, a model
still loading UNAVAILABLE; anything unexpected is logged with its traceback and answered INTERNAL.
Requests are counted in ``edgemodel_requests_total`` with the HTTP status REST would have given,
so one error-rate query covers both protocols. Only this module imports grpcio: without
``--grpc-port`` the agent never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from edge_agent.body import RequestLimits
from edge_agent.codec import InferRequest, TensorSpec
from edge_agent.dataplane import DataPlane
from edge_agent.errors import AgentError, InvalidInput, Unauthorized
from edge_agent.grpc_codec import decode_infer_request, encode_infer_response
from edge_agent.grpc_proto import predict_v2_pb2 as pb
from edge_agent.grpc_proto import predict_v2_pb2_grpc as pb_grpc
from edge_agent.model import PLATFORM
from edge_agent.repository import ModelVersion
from edgemodel.auth import bearer_matches
from edgemodel.errors import UserError

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
Msg = TypeVar("Msg", bound=Message)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = aio.ServicerContext

GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""HTTP status of an ``AgentError`` -> gRPC status code (anything else is INTERNAL)."""

INLINE_DECODE_BYTES = 1 << 20
"""Requests whose tensors hold up to this many bytes are converted on the event loop; larger ones in the
REST API's decode thread, one at a time (as REST does with large bodies)."""
MAX_CONCURRENT_STREAMS = 128
"""RPCs one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)."""


def grpc_code(status: int) -> grpc.StatusCode:
    return GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)


def _tensor_bytes(request: pb.ModelInferRequest) -> int:
    """About how many bytes the request's tensors hold (raw contents exactly, typed ones at 8 per value)."""
    if request.raw_input_contents:
        return sum(len(r) for r in request.raw_input_contents)
    total = 0
    for tensor in request.inputs:
        c = tensor.contents
        total += 8 * (len(c.fp32_contents) + len(c.fp64_contents) + len(c.int_contents) + len(c.int64_contents)
                      + len(c.uint_contents) + len(c.uint64_contents) + len(c.bool_contents))  # fmt: skip
        total += sum(len(b) + 64 for b in c.bytes_contents)
    return total


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the protocol, each a thin shell around the data plane."""

    def __init__(
        self,
        dataplane: DataPlane,
        limits: RequestLimits,
        token: str | None = None,
        decode: Callable[[Callable[[], InferRequest]], Awaitable[InferRequest]] | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.limits = limits
        self.decode_limits = limits.decode
        self._token = token.encode() if token else None
        self._decode_off_loop = decode
        self.observer: Callable[[Any, InferRequest, Any], None] | None = None
        """Sees each answered request (continual learning's capture, like ``RestApi.observer``)."""

    # -- helpers -----------------------------------------------------------------------------
    def _authorize(self, context: Context[Req, Resp]) -> None:
        if self._token is None:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
                if bearer_matches(header, self._token):
                    return
                break
        raise Unauthorized("missing or wrong bearer token; send the metadata authorization: Bearer <token>")

    @staticmethod
    def _parsed(request: object) -> None:
        if isinstance(request, Malformed):
            raise InvalidInput(request.message)

    async def _call(self, request: object, context: Context[Req, Resp], answer: Callable[[], Resp]) -> Resp:
        """Answer a health or metadata RPC; an AgentError aborts the call with its gRPC code."""
        try:
            self._parsed(request)
            return answer()
        except AgentError as exc:
            await context.abort(grpc_code(exc.status), exc.message)
            raise  # unreachable: abort() raises

    # -- health and metadata -----------------------------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context[pb.ServerLiveRequest, pb.ServerLiveResponse]
    ) -> pb.ServerLiveResponse:
        return await self._call(request, context, lambda: pb.ServerLiveResponse(live=self.dataplane.live))

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context[pb.ServerReadyRequest, pb.ServerReadyResponse]
    ) -> pb.ServerReadyResponse:
        return await self._call(
            request, context, lambda: pb.ServerReadyResponse(ready=self.dataplane.ready())
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context[pb.ModelReadyRequest, pb.ModelReadyResponse]
    ) -> pb.ModelReadyResponse:
        def answer() -> pb.ModelReadyResponse:
            self._authorize(context)
            return pb.ModelReadyResponse(
                ready=self.dataplane.model_ready(request.name, request.version or None)
            )

        return await self._call(request, context, answer)

    async def ServerMetadata(
        self,
        request: pb.ServerMetadataRequest,
        context: Context[pb.ServerMetadataRequest, pb.ServerMetadataResponse],
    ) -> pb.ServerMetadataResponse:
        def answer() -> pb.ServerMetadataResponse:
            self._authorize(context)
            meta = self.dataplane.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._call(request, context, answer)

    async def ModelMetadata(
        self,
        request: pb.ModelMetadataRequest,
        context: Context[pb.ModelMetadataRequest, pb.ModelMetadataResponse],
    ) -> pb.ModelMetadataResponse:
        def answer() -> pb.ModelMetadataResponse:
            self._authorize(context)
            mv = self.dataplane.repository.resolve(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=mv.name,
                versions=[v.version for v in self.dataplane.repository.versions(mv.name)],
                platform=PLATFORM,
                inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.model.inputs],
                outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.model.outputs],
            )

        return await self._call(request, context, answer)

    # -- inference ---------------------------------------------------------------------------
    async def _decode(
        self, request: pb.ModelInferRequest, model_inputs: dict[str, TensorSpec]
    ) -> InferRequest:
        def decode() -> InferRequest:
            return decode_infer_request(request, self.decode_limits, model_inputs)

        if self._decode_off_loop is None or _tensor_bytes(request) <= INLINE_DECODE_BYTES:
            return decode()
        return await self._decode_off_loop(decode)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context[pb.ModelInferRequest, pb.ModelInferResponse]
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        mv: ModelVersion | None = None
        status = 500
        code: grpc.StatusCode
        try:
            self._parsed(request)
            self._authorize(context)
            mv = self.dataplane.repository.resolve(request.model_name, request.model_version or None)
            mv.acquire()
            try:
                infer_request = await self._decode(request, mv.model.input_by_name)  # type: ignore[arg-type]
                outputs = await self.dataplane.infer(mv, infer_request)
                if self.observer is not None:
                    self.observer(mv, infer_request, outputs)
                response = encode_infer_response(mv.name, mv.version, infer_request.id, outputs)
            finally:
                mv.release()
            status = 200
            return response
        except AgentError as exc:
            status = exc.status
            code, message = grpc_code(status), exc.message
            if status >= 500:
                log.error(
                    "gRPC inference on model %r failed: %s",
                    str(getattr(request, "model_name", ""))[:200],
                    message,
                )
        except asyncio.CancelledError:
            status = 499  # the client cancelled or the deadline passed
            raise
        except Exception as exc:
            log.exception(
                "gRPC inference on model %r failed unexpectedly",
                str(getattr(request, "model_name", ""))[:200],
            )
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:500]
        finally:
            if mv is not None:
                mv.record(status, time.perf_counter() - started)
            else:
                self.dataplane.record_unattributed(status)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort() raises")


class Malformed:
    """What a request that does not parse becomes; the servicer answers it INVALID_ARGUMENT."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def tolerant(message: type[Msg]) -> Callable[[bytes], Msg]:
    """``message.FromString`` that turns undecodable bytes into a ``Malformed`` (grpc would answer UNKNOWN)."""
    parse = message.FromString
    name = message.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Msg:
        try:
            return parse(data)
        except DecodeError as exc:
            malformed = Malformed(
                f"the request is not a valid {name} message ({exc}); send the protocol's message"
            )
            return cast(Msg, malformed)  # the servicer checks for it first (_parsed)

    return deserialize


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The service's handlers as the generated add_..._to_server builds them, with tolerant request parsing."""
    rpcs: list[tuple[str, Callable[..., Any], type[Message], type[Message]]] = [
        ("ServerLive", servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        ("ServerReady", servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        ("ModelReady", servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        ("ServerMetadata", servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        ("ModelMetadata", servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        ("ModelInfer", servicer.ModelInfer, pb.ModelInferRequest, pb.ModelInferResponse),
    ]
    return {
        name: grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=tolerant(request), response_serializer=response.SerializeToString
        )
        for name, method, request, response in rpcs
    }


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """TLS credentials from the same PEM files as HTTPS."""
    try:
        return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    except OSError as exc:
        raise UserError(f"--tls-cert {cert} / --tls-key {key}: cannot read them ({exc.strerror})") from exc


class GrpcServer:
    """The gRPC listener: start() binds the port (0 picks one), stop() lets in-flight calls finish."""

    def __init__(
        self,
        servicer: InferenceServicer,
        host: str,
        port: int,
        max_message_bytes: int,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.servicer = servicer
        self.host = host
        self.port = port
        self.credentials = credentials
        self._server = aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
                ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it
            ],
        )
        handlers = method_handlers(servicer)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self._server.add_registered_method_handlers(SERVICE, handlers)

    async def start(self) -> None:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.credentials is not None:
                bound = self._server.add_secure_port(address, self.credentials)
            else:
                bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise UserError(
                f"--grpc-port {self.port}: cannot listen on {address} ({exc}); pick a free port"
            ) from exc
        if not bound:
            raise UserError(
                f"--grpc-port {self.port}: cannot listen on {address} (in use?); pick a free port"
            )
        self.port = bound
        await self._server.start()

    async def stop(self, grace_s: float) -> None:
        await self._server.stop(grace_s)
