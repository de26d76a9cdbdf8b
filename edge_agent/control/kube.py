"""The agent's Kubernetes client is the product's one client, ``edgemodel.kube`` (this module only re-exports it)."""

from edgemodel.kube import (
    ApiError,
    ApiUnavailable,
    Credentials,
    KubeClient,
    in_cluster_credentials,
    load_kubeconfig,
    resource_path,
)

__all__ = ["ApiError", "ApiUnavailable", "Credentials", "KubeClient", "in_cluster_credentials", "load_kubeconfig",
           "resource_path"]
