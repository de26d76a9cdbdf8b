"""kopf registration of FederatedTraining: a daemon per object runs the reconcile loop until it is finished;
deletion cleans the children up (owner references would too, later)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from edgemodel_operator.federated import FEDERATEDTRAININGS, FederatedSettings
from edgemodel_operator.federated_controller import FederatedController
from edgemodel_operator.federated_metrics import FederatedMetrics
from edgemodel_operator.kube import ApiError, ApiUnavailable
from edgemodel_operator.runtime import Runtime

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Add the FederatedTraining handlers to ``registry``."""
    settings = FederatedSettings()
    controller = FederatedController(runtime, settings, FederatedMetrics(runtime.metrics.registry))

    @kopf.daemon(*FEDERATEDTRAININGS, id="federated", registry=registry, cancellation_timeout=10.0)
    async def train(namespace: str | None, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await run_loop(controller, namespace or "default", name, stopped, settings.poll_seconds)

    @kopf.on.delete(*FEDERATEDTRAININGS, id="federated-cleanup", registry=registry, optional=True)
    async def cleanup(namespace: str | None, name: str, **_: Any) -> None:
        await controller.cleanup(namespace or "default", name)


async def run_loop(
    controller: FederatedController,
    namespace: str,
    name: str,
    stopped: kopf.DaemonStopped,
    poll_seconds: float,
) -> None:
    """Reconcile every ``poll_seconds`` until the training is finished or the daemon is stopped."""
    backoff = poll_seconds
    while not stopped:
        try:
            if await controller.reconcile(namespace, name):
                return
            backoff = poll_seconds
        except (ApiError, ApiUnavailable, TimeoutError) as exc:
            backoff = min(backoff * 2, MAX_BACKOFF)
            log.warning(
                "Reconcile of FederatedTraining %s/%s failed (%s); retrying in %.0f s",
                namespace,
                name,
                exc,
                backoff,
            )
        except Exception:
            backoff = min(backoff * 2, MAX_BACKOFF)
            log.exception(
                "Reconcile of FederatedTraining %s/%s crashed; retrying in %.0f s", namespace, name, backoff
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=backoff)
