"""The operator's use of the product's one Kubernetes client (``edgemodel.kube``): its settings and paths.

kopf watches and patches through its own client; both log in with the same credentials
(``connection_info`` in main.py). Every request the operator's client makes is counted by verb,
resource and code (``edgemodel_operator_api_requests_total``); transient failures (connection
errors, 429, 5xx) are retried with the one retry policy.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from edgemodel.kube import (
    JSON_PATCH,
    MERGE_PATCH,
    ApiError,
    ApiUnavailable,
    Credentials,
    KubeClient,
    load_credentials,
    resource_of,
)
from edgemodel.retry import Backoff
from edgemodel_operator.constants import MANAGER
from edgemodel_operator.metrics import OperatorMetrics

__all__ = ["JSON_PATCH", "MERGE_PATCH", "ApiError", "ApiUnavailable", "Credentials", "KubeClient", "Paths",
           "operator_client", "resource_of"]

RETRY_ATTEMPTS = 5
RETRY_BACKOFF = Backoff(first=0.2, cap=2.0)
REQUEST_TIMEOUT_SECONDS = 30.0


def operator_client(credentials: Credentials | Path | None, metrics: OperatorMetrics | None = None,
                    max_parallel: int = 32, attempts: int = RETRY_ATTEMPTS,
                    backoff: Backoff = RETRY_BACKOFF) -> KubeClient:  # fmt: skip
    """The operator's client: given credentials or a kubeconfig (None: in-cluster, else $KUBECONFIG), field
    manager ``edgemodel-operator``, ``max_parallel`` requests at once, every attempt counted in ``metrics``."""
    if not isinstance(credentials, Credentials):
        credentials = load_credentials(credentials)

    def count(method: str, path: str, code: str) -> None:
        if metrics is not None:
            metrics.api_requests.labels(verb=method.lower(), resource=resource_of(path), code=code).inc()

    return KubeClient(credentials, attempts=attempts, backoff=backoff, request_timeout_s=REQUEST_TIMEOUT_SECONDS,
                      max_parallel=max_parallel, field_manager=MANAGER, on_response=count)


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
