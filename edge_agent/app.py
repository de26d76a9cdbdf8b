"""Assemble and run the whole agent: serving, and the control plane when given a cluster."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.control.cache import ArtifactCache
from edge_agent.control.capabilities import probe
from edge_agent.control.plane import ControlPlane, default_endpoint, grpc_endpoint
from edge_agent.control.reconciler import Reconciler
from edge_agent.heap import return_large_buffers
from edge_agent.server import AgentServer, read_token
from edge_agent.settings import AgentSettings, LocalModel
from edgemodel.errors import UserError
from edgemodel.kube import Credentials, KubeClient, in_cluster_credentials, load_kubeconfig
from edgemodel.signing import SignatureError, load_public_key

log = logging.getLogger(__name__)


def load_fleet_key(path: Path | None) -> Ed25519PublicKey:
    """The fleet's ed25519 public key; required with a cluster."""
    if path is None:
        raise UserError("--public-key is required with a cluster: the agent verifies every artifact's signature with it")
    try:
        return load_public_key(path.read_bytes())
    except OSError as exc:
        raise UserError(f"--public-key {path}: cannot read it ({exc.strerror})") from exc
    except (ValueError, SignatureError) as exc:
        raise UserError(f"--public-key {path}: not an ed25519 public key in PEM form ({exc})") from exc


def credentials(settings: AgentSettings) -> Credentials:
    if settings.kubeconfig is not None:
        return load_kubeconfig(settings.kubeconfig)
    return in_cluster_credentials()


class Agent:
    """The serving half plus, in a cluster, the control plane."""

    def __init__(self, settings: AgentSettings, server: AgentServer | None = None) -> None:
        self.settings = settings
        self.server = server or AgentServer(settings)
        self.control: ControlPlane | None = None
        if settings.cluster_mode:
            if not settings.node_name:
                raise UserError("--node-name (or NODE_NAME from the downward API) is required with a cluster")
            self._key = load_fleet_key(settings.public_key)
            self._credentials = credentials(settings)
            try:
                self._cache = ArtifactCache(settings.cache_dir, settings.cache_max_bytes)
            except OSError as exc:
                raise UserError(f"--cache-dir {settings.cache_dir}: cannot create it ({exc.strerror}); mount a writable volume") from exc

    async def start(self, local_models: list[LocalModel] | None = None) -> None:
        s = self.settings
        await self.server.start()
        if local_models:
            await self.server.load_local(local_models)
        if s.cluster_mode:
            store_headers = {}
            if s.store_token_file is not None:
                store_headers["Authorization"] = f"Bearer {read_token(s.store_token_file)}"
            reconciler = Reconciler(self.server, self._cache, self._key, s, store_headers=store_headers)
            capabilities = await asyncio.to_thread(probe)
            self.control = ControlPlane(
                node_name=s.node_name,
                client=KubeClient(self._credentials),
                reconciler=reconciler,
                capabilities=capabilities,
                endpoint=s.endpoint or default_endpoint(self.server.scheme, s.host, self.server.port),
                split_endpoint=(
                    default_endpoint(self.server.split_scheme, s.host, self.server.split_port)
                    if self.server.split_port is not None else ""
                ),
                grpc=(
                    grpc_endpoint(s.endpoint, s.host, self.server.grpc_port, tls=self.server.scheme == "https")
                    if self.server.grpc_port is not None else None
                ),
                labels=s.labels,
                heartbeat_interval_s=s.heartbeat_interval_s,
                status_min_interval_s=s.status_min_interval_s,
                stats_interval_s=s.stats_interval_s,
                lease_namespace=s.lease_namespace,
                lease_duration_s=s.lease_duration_s,
                resync_interval_s=s.resync_interval_s,
                retry_backoff_s=s.retry_backoff_s,
            )
            self.control.restore()
            self.control.start()
        self.server.dataplane.started = True

    async def stop(self) -> None:
        self.server.dataplane.started = False
        if self.control is not None:
            await self.control.stop()
        await self.server.stop()


async def serve_forever(settings: AgentSettings, local_models: list[LocalModel]) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit."""
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await agent.start(local_models)
    log.info("Agent ready on %s with %d model(s)", agent.server.url, len(agent.server.repository.names()))
    await stop.wait()
    log.info("Stopping: draining in-flight requests")
    await agent.stop()


def run(settings: AgentSettings, local_models: list[LocalModel]) -> None:
    """Run the agent on uvloop when it is installed (lower per-request overhead), else asyncio."""
    return_large_buffers()  # request bodies are freed back to the OS, not kept in the heap
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the agent extra
        asyncio.run(serve_forever(settings, local_models))
        return
    uvloop.run(serve_forever(settings, local_models))
