"""Fixtures of the Kubernetes API emulator tests (the shared ones come from edgemodel_dev.testing)."""

from edgemodel_dev.testing import (  # noqa: F401
    kube_cluster,
    kube_cluster_auth,
    kubectl_path,
    module_kube_cluster,
)
