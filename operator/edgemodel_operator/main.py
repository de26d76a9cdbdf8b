"""kopf wiring: the handler registry, kopf settings on startup, login, and ``run``.

Only decorators live here; every body is a call into ``handlers``. The registry is built per
process from the settings (the admission webhook is registered only when it has a port).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from edgemodel.api import GROUP
from edgemodel_operator import continual, federated_handlers, handlers
from edgemodel_operator.constants import EDGEMODELS, FINALIZER, LABEL_MANAGED_BY, MANAGER
from edgemodel_operator.kube import KubeClient, operator_client
from edgemodel_operator.metrics import OperatorMetrics
from edgemodel_operator.runtime import Runtime
from edgemodel_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    """Finalizer and progress under edgemodel.io, watch timeouts, peering, events, webhook."""
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.networking.request_timeout = 60
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.name = settings.peering
    kopf_settings.peering.standalone = settings.standalone
    kopf_settings.peering.mandatory = not settings.standalone
    kopf_settings.peering.priority = settings.priority
    kopf_settings.peering.lifetime = settings.peering_lifetime_seconds
    kopf_settings.peering.clusterwide = not settings.namespaces
    kopf_settings.background.instant_exit_timeout = 0.5
    if settings.webhook_port:
        kopf_settings.admission.server = kopf.WebhookServer(
            addr=settings.bind_address, port=settings.webhook_port, path="/validate",
            certfile=str(settings.webhook_cert) if settings.webhook_cert else None,
            pkeyfile=str(settings.webhook_key) if settings.webhook_key else None,
            insecure=settings.webhook_cert is None,
        )


def connection_info(client: KubeClient) -> kopf.ConnectionInfo:
    """kopf's credentials: the same ones (and the same current token) the operator's own client uses."""
    creds = client.credentials
    token = client.current_token()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=str(creds.ca_file) if creds.ca_file else None,
        ca_data=None if creds.ca_file else creds.ca_data,
        insecure=creds.insecure,
        certificate_path=str(creds.client_cert) if creds.client_cert else None,
        private_key_path=str(creds.client_key) if creds.client_key else None,
        scheme="Bearer" if token else None,
        token=token,
        default_namespace=creds.namespace,
    )


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """All handlers of the operator, bound to ``runtime``."""
    registry = kopf.OperatorRegistry()
    settings = runtime.settings

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, runtime.settings)
        runtime.start_followers()
        log.info("Started the edgemodel operator (namespaces: %s, Prometheus: %s)",
                 ", ".join(runtime.settings.namespaces) or "all", runtime.settings.prometheus_url or "off")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.close()

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(runtime.client)

    @kopf.on.probe(id="agents", registry=registry)
    def probe_agents(**_: Any) -> int:
        return len(runtime.fleet)

    @kopf.on.probe(id="leases", registry=registry)
    def probe_leases(**_: Any) -> dict[str, int]:
        return {"fresh": len(runtime.liveness) - len(runtime.liveness.stale), "stale": len(runtime.liveness.stale)}

    @kopf.on.event("batch", "v1", "jobs", id="jobs", labels={LABEL_MANAGED_BY: MANAGER}, registry=registry)
    def job_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        handlers.job_event(runtime, namespace, labels)

    @kopf.on.resume(*EDGEMODELS, id="reconcile", registry=registry)
    @kopf.on.create(*EDGEMODELS, id="reconcile", registry=registry)
    @kopf.on.update(*EDGEMODELS, id="reconcile", registry=registry)
    async def reconcile(namespace: str | None, name: str, **_: Any) -> None:
        await handlers.reconcile_once(runtime, namespace or "default", name)

    @kopf.daemon(*EDGEMODELS, id="resync", registry=registry, cancellation_timeout=10.0)
    async def resync(namespace: str | None, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await handlers.reconcile_loop(runtime, namespace or "default", name, stopped)

    @kopf.on.delete(*EDGEMODELS, id="unassign", registry=registry)
    async def unassign(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> None:
        await handlers.unassign_on_delete(runtime, namespace or "default", name, status)

    continual.register(registry, runtime)  # continual learning (docs/continual.md)
    federated_handlers.register(registry, runtime)  # federated training (docs/federated.md)

    if settings.webhook_port:
        @kopf.on.validate(*EDGEMODELS, id="validate", registry=registry, operations=["CREATE", "UPDATE"])
        def validate(body: kopf.Body, **_: Any) -> None:
            handlers.admission_check(body)

    return registry


def build_runtime(settings: OperatorSettings) -> Runtime:
    metrics = OperatorMetrics()
    client = operator_client(settings.kubeconfig, metrics, settings.max_parallel_writes)
    return Runtime(settings=settings, client=client, metrics=metrics)


async def operate(settings: OperatorSettings, stop_flag: asyncio.Event | None = None,
                  ready_flag: asyncio.Event | None = None) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT or ``stop_flag``)."""
    runtime = build_runtime(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.bind_address, registry=runtime.metrics.registry)
        log.info("Serving /metrics on %s:%d", settings.bind_address, settings.metrics_port)
    liveness = f"http://{settings.bind_address}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    await kopf.operator(
        registry=build_registry(runtime),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.standalone,
        priority=settings.priority,
        peering_name=None if settings.standalone else settings.peering,
        liveness_endpoint=liveness,
        memo=kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def quiet_framework_logs() -> None:
    """kopf logs every handler success per object (each agent status write): keep those for -v only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run(settings: OperatorSettings) -> None:
    """Blocking entry point of ``edgemodel operator``."""
    quiet_framework_logs()
    asyncio.run(operate(settings))
