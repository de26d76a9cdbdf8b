"""Fixtures of the Kubernetes API emulator tests (the shared ones come from edgemodel.dev.testing)."""

from edgemodel.dev.testing import (  # noqa: F401
    kube_cluster,
    kube_cluster_auth,
    kubectl_path,
    module_kube_cluster,
)
