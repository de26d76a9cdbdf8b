"""The product's one Kubernetes API client (agent and operator): credentials, client, errors, paths.

stdlib, PyYAML, aiohttp and orjson only, so the edge agent can use it (never the ``kubernetes``
package or kopf); retries follow the one retry policy, :mod:`edgemodel.retry`.
"""

from edgemodel.kube.client import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, KubeClient
from edgemodel.kube.credentials import (
    SERVICE_ACCOUNT,
    Credentials,
    in_cluster_credentials,
    load_credentials,
    load_kubeconfig,
)
from edgemodel.kube.errors import ApiError, ApiUnavailable, transient
from edgemodel.kube.paths import resource_of, resource_path

__all__ = [
    "APPLY_PATCH",
    "JSON_PATCH",
    "MERGE_PATCH",
    "SERVICE_ACCOUNT",
    "ApiError",
    "ApiUnavailable",
    "Credentials",
    "KubeClient",
    "in_cluster_credentials",
    "load_credentials",
    "load_kubeconfig",
    "resource_of",
    "resource_path",
    "transient",
]
