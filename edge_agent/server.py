"""The serving half of the agent: thread pool, repository, data plane and the HTTP server.

``AgentServer`` is what tests and the CLI start; the control plane (``edge_agent.control``) drives
it through ``load_version`` / ``load_head`` / ``repository.swap`` / ``repository.remove``, and
``load_tail`` / ``tails`` for split tails, which the tail server (``--split-port``) serves.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from edge_agent.body import RequestLimits
from edge_agent.capture_worker import attach_continual
from edge_agent.cgroup import available_cpus, thread_count
from edge_agent.dataplane import DataPlane
from edge_agent.errors import LoadError, first_line
from edge_agent.hotpath import HotPathHandler
from edge_agent.metrics import AgentMetrics
from edge_agent.model import ModelOptions, OnnxModel, SessionFactory, TensorMeta
from edge_agent.pool import InferencePool
from edge_agent.repository import BatchingConfig, ModelRepository, ModelVersion, version_key
from edge_agent.rest import RestApi, build_app, hot_route
from edge_agent.settings import AgentSettings, LocalModel
from edge_agent.split import SplitModelVersion, TailPart
from edgemodel import __version__
from edgemodel.errors import UserError
from edgemodel.http_runner import JsonErrorAppRunner
from edgemodel.split.remote import (
    FallbackPolicy,
    RemoteTail,
    RunningServer,
    TailRegistry,
    TlsFiles,
    make_tail_app,
    start_tail_server,
)

if TYPE_CHECKING:
    from edge_agent.grpc_server import GrpcServer

log = logging.getLogger(__name__)


def read_token(path: Path) -> str:
    """The bearer token in a file (e.g. a mounted Secret), without surrounding whitespace."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"--token-file {path}: cannot read it ({exc.strerror}); mount the Secret or fix the path") from exc
    if not token:
        raise UserError(f"--token-file {path}: the file is empty; put the bearer token in it")
    return token


def request_limits(settings: AgentSettings) -> RequestLimits:
    """The bounds every inference request is held to (flags --max-body-bytes ... --body-read-timeout)."""
    return RequestLimits(
        max_body_bytes=settings.max_body_bytes,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        max_json_bytes=settings.max_json_bytes,
        max_elements=settings.max_elements,
        body_read_timeout_s=settings.body_read_timeout_s,
    )


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--tls-cert {cert} / --tls-key {key}: cannot load them as a PEM certificate and key ({exc})") from exc
    return context


def split_tls_files(settings: AgentSettings) -> TlsFiles | None:
    """The split link's mTLS files, checked by building the contexts they are used for; None without them."""
    if not settings.split_tls:
        return None
    files = TlsFiles(settings.split_tls_ca, settings.split_tls_cert, settings.split_tls_key)
    flags = f"--split-tls-ca {files.ca_file} / --split-tls-cert {files.cert_file} / --split-tls-key {files.key_file}"
    try:
        files.client_context()
        if settings.split_port is not None:
            files.server_context(require_client_cert=True)
    except (ValueError, OSError, ssl.SSLError) as exc:
        raise UserError(f"{flags}: cannot load them as a PEM CA, certificate and key ({exc})") from exc
    return files


class _AgentRunner(JsonErrorAppRunner):
    """The HTTP runner whose server sends inference requests straight to the REST API (``rest.hot_route``)."""

    def __init__(self, app: web.Application, api: RestApi, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._api = api

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = hot_route(self._api, server.request_handler)
        server.__class__ = _HotPathServer
        cast(_HotPathServer, server).api = self._api
        return server


class _HotPathServer(web.Server):
    """Connections get ``HotPathHandler``: plain inference requests skip aiohttp's request objects."""

    api: RestApi

    def __call__(self) -> HotPathHandler:
        return HotPathHandler(self, loop=self._loop, api=self.api, **self._kwargs)


class AgentServer:
    """Everything that answers requests; start() binds the port, stop() drains and closes."""

    def __init__(
        self,
        settings: AgentSettings,
        metrics: AgentMetrics | None = None,
        session_factory: SessionFactory | None = None,
        available_providers: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.cpus = available_cpus()
        threads = thread_count(self.cpus)
        self.intra_op_threads = settings.intra_op_threads or threads
        self.pool = InferencePool(settings.inference_workers or threads)
        self.repository = ModelRepository(drain_timeout_s=settings.drain_timeout_s)
        self.dataplane = DataPlane(self.repository, self.metrics, __version__)
        self.session_factory = session_factory
        self.available_providers = available_providers
        token = read_token(settings.token_file) if settings.token_file else None
        self.token = token
        self.api = RestApi(
            self.dataplane,
            self.metrics.exposition,
            token=token,
            metrics_require_token=settings.metrics_require_token,
            limits=request_limits(settings),
        )
        self.app = build_app(self.api, client_max_size=settings.max_body_bytes)
        self.continual = attach_continual(self)  # drift, feedback, capture (docs/continual.md)
        self._ssl = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
        self._runner: web.AppRunner | None = None
        self.port = settings.port
        self.split_tls = split_tls_files(settings)
        """mTLS files of the split link: the tail server's identity, and the heads' client identity."""
        self.tails = TailRegistry()
        """Split tails served on the split port (cloud side), by model name, revision and cut."""
        self.split_port = settings.split_port
        """Port of the tail server once started (None: no tail server)."""
        self._tail_server: RunningServer | None = None
        self.grpc_port = settings.grpc_port
        """Port of the gRPC server once started (None: no gRPC server)."""
        self._grpc: GrpcServer | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._ssl else "http"

    @property
    def host(self) -> str:
        """The address clients on this machine reach the agent at (127.0.0.1 when bound to every address)."""
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC server ('' without one), as gRPC clients take it."""
        return "" if self.grpc_port is None else f"{self.host}:{self.grpc_port}"

    @property
    def split_scheme(self) -> str:
        return "https" if self.split_tls else "http"

    @property
    def split_url(self) -> str:
        """Base URL of the tail server ('' without one)."""
        if self.split_port is None:
            return ""
        return f"{self.split_scheme}://{self.host}:{self.split_port}"

    async def start(self) -> None:
        """Bind the HTTP(S) port (models may still be loading: /v2/health/ready says when)."""
        self._runner = _AgentRunner(
            self.app, self.api, access_log=None, handle_signals=False, shutdown_timeout=self.settings.drain_timeout_s,
            auto_decompress=False,  # bodies are decompressed under --max-decompressed-bytes (edge_agent.body)
        )
        await self._runner.setup()
        self.continual.start()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=self._ssl, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info(
            "Serving the Open Inference Protocol on %s (%s inference workers, %d ONNX Runtime threads each, %.2g CPUs)",
            self.url,
            self.pool.workers,
            self.intra_op_threads,
            self.cpus,
        )
        if self.settings.grpc_port is not None:
            await self._start_grpc_server()
        if self.settings.split_port is not None:
            await self._start_tail_server()

    async def _start_grpc_server(self) -> None:
        from edge_agent import grpc_server  # grpcio is loaded only when the gRPC port is asked for

        s = self.settings
        servicer = grpc_server.InferenceServicer(self.dataplane, request_limits(s), self.token, decode=self.api.decode_off_loop)
        servicer.observer = self.api.observer  # the same capture as REST (docs/continual.md)
        credentials = grpc_server.server_credentials(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
        self._grpc = grpc_server.GrpcServer(servicer, s.host, s.grpc_port or 0, s.max_body_bytes, credentials)
        await self._grpc.start()
        self.grpc_port = self._grpc.port
        log.info("Serving the Open Inference Protocol over gRPC on %s (%s)", self.grpc_target, "TLS" if credentials else "plaintext")

    async def _start_tail_server(self) -> None:
        s = self.settings
        app = make_tail_app(self.tails, max_request_bytes=s.max_body_bytes, executor=self.pool.executor)
        context = self.split_tls.server_context(require_client_cert=True) if self.split_tls else None
        self._tail_server = await start_tail_server(app, s.host, s.split_port or 0, context)
        self.split_port = self._tail_server.port
        if context is None:
            log.warning("Serving split tails on %s without TLS: features travel in plaintext and any client may "
                        "send them; pass --split-tls-ca/--split-tls-cert/--split-tls-key for mTLS", self.split_url)
        else:
            log.info("Serving split tails on %s (mTLS: clients need a certificate signed by %s)", self.split_url,
                     self.split_tls.ca_file if self.split_tls else "")

    async def _load_model(
        self, name: str, version: str, source: Path, sha256: str, accelerator: str | None, gpu_fallback_to_cpu: bool | None,
        namespace: str = "",
    ) -> OnnxModel:
        """Create and warm up an ONNX Runtime session in a background thread; LoadError when it cannot."""
        s = self.settings
        options = ModelOptions(
            accelerator=accelerator or s.accelerator,
            gpu_fallback_to_cpu=s.gpu_fallback_to_cpu if gpu_fallback_to_cpu is None else gpu_fallback_to_cpu,
            intra_op_threads=self.intra_op_threads,
            warmup_runs=s.warmup_runs,
            plan_runs=not s.intra_op_threads and not s.inference_workers,
            plan_batch_rows=s.max_batch_size,
        )
        model = OnnxModel(
            name, version, source, options, sha256=sha256,
            session_factory=self.session_factory, available_providers=self.available_providers,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            await asyncio.to_thread(model.load)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError("LoadFailed", f"ONNX Runtime cannot load {source.name}: {first_line(exc)}") from exc
        self.metrics.model_load_duration.labels(namespace, name, version).observe(time.perf_counter() - started)
        return model

    async def load_version(
        self,
        name: str,
        version: str,
        source: Path,
        sha256: str = "",
        accelerator: str | None = None,
        gpu_fallback_to_cpu: bool | None = None,
        batching: BatchingConfig | None = None,
        namespace: str = "",
    ) -> ModelVersion:
        """Load and warm up a version in a background thread; it is not serving until added or swapped in.

        ``namespace`` is the EdgeModel's: every metric of the version carries it.
        """
        s = self.settings
        model = await self._load_model(name, version, source, sha256, accelerator, gpu_fallback_to_cpu, namespace)
        if batching is None:
            batching = BatchingConfig(s.batching, s.max_batch_size, s.max_queue_delay_ms)
        return ModelVersion(
            model, self.pool, self.metrics, batching=batching,
            allow_non_finite=s.allow_non_finite, stats_window_s=s.stats_window_s, inline_max_ms=s.inline_max_ms,
            namespace=namespace,
        )  # fmt: skip

    async def load_head(
        self,
        name: str,
        version: str,
        head_source: Path,
        head_sha256: str,
        remote: RemoteTail,
        policy: FallbackPolicy,
        full_source: Path | None = None,
        full_sha256: str = "",
        outputs: list[TensorMeta] | None = None,
        accelerator: str | None = None,
        gpu_fallback_to_cpu: bool | None = None,
        namespace: str = "",
    ) -> SplitModelVersion:
        """Load a split head (and the whole model for a local fallback) as one version; not serving until swapped in.

        The v2 outputs are the whole model's: ``outputs`` (from the manifest) or, when loaded, the whole model's own.
        """
        full = head = None
        try:
            if full_source is not None:
                full = await self._load_model(name, version, full_source, full_sha256, accelerator, gpu_fallback_to_cpu,
                                              namespace)
            head = await self._load_model(name, version, head_source, head_sha256, accelerator, gpu_fallback_to_cpu, namespace)
            if full is not None:
                if [t.name for t in head.inputs] != [t.name for t in full.inputs]:
                    raise LoadError("LoadFailed", f"{head_source.name} takes inputs {[t.name for t in head.inputs]} but "
                                    f"the whole model {full_source.name if full_source else ''} takes "
                                    f"{[t.name for t in full.inputs]}; they are not parts of one model")
                outputs = full.outputs
            if not outputs:
                raise LoadError("ManifestInvalid", "the signed manifest lists no outputs and no whole model is assigned: "
                                "the agent cannot describe the split model's outputs; re-run the conversion")
        except BaseException:  # nothing half-loaded stays behind
            for model in (head, full):
                if model is not None:
                    model.unload()
            raise
        s = self.settings
        return SplitModelVersion(head, full, outputs, remote, policy, self.pool, self.metrics,
                                 allow_non_finite=s.allow_non_finite, stats_window_s=s.stats_window_s,
                                 namespace=namespace)  # fmt: skip

    async def load_tail(
        self, name: str, version: str, namespace: str, source: Path, sha256: str, cut: str,
        accelerator: str | None = None, gpu_fallback_to_cpu: bool | None = None,
    ) -> TailPart:  # fmt: skip
        """Load and warm up a split tail; the caller registers it in ``tails``."""
        model = await self._load_model(name, version, source, sha256, accelerator, gpu_fallback_to_cpu, namespace)
        if cut not in model.input_by_name:
            model.unload()
            raise LoadError("LoadFailed", f"{source.name} takes {[t.name for t in model.inputs]}, not the cut {cut!r} "
                            "of the assignment: it is not the tail of this split")
        return TailPart(model, namespace, cut, stats_window_s=self.settings.stats_window_s, metrics=self.metrics.split)

    async def load_local(self, models: Sequence[LocalModel]) -> None:
        """Load standalone ``--model`` files; the highest version of each name answers unversioned requests."""
        from edgemodel.signing import sha256_file

        for local in models:
            self.repository.set_waiting(local.name, "loading")
        highest: dict[str, str] = {}
        for local in models:
            if local.name not in highest or version_key(local.version) > version_key(highest[local.name]):
                highest[local.name] = local.version
        for local in models:
            log.info("Loading model %s version %s from %s", local.name, local.version, local.path)
            try:
                mv = await self.load_version(local.name, local.version, local.path, sha256=sha256_file(local.path))
            except LoadError as exc:
                raise UserError(f"--model {local.name}={local.path}: {exc.message}") from exc
            self.repository.add(mv, make_default=highest[local.name] == local.version)

    async def stop(self) -> None:
        """Stop accepting connections, let in-flight requests finish, unload models."""
        self.dataplane.live = False
        if self._grpc is not None:
            await self._grpc.stop(self.settings.drain_timeout_s)
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tail_server is not None:
            await self._tail_server.close()
            self._tail_server = None
        await self.repository.close()
        self.continual.stop()
        self.api.close()
        self.pool.shutdown()
