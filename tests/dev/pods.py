"""Pod helpers of the kubelet tests: a fresh namespace and waiting for a pod's phase."""

from __future__ import annotations

import uuid
from typing import Any

from edgemodel_dev.cluster import LocalCluster


def fresh_namespace(cluster: LocalCluster, prefix: str) -> str:
    """Create a namespace with a random name starting with ``prefix``."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def wait_phase(cluster: LocalCluster, ns: str, name: str, phases: tuple[str, ...] = ("Succeeded", "Failed"),
               timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    """The pod once it reaches one of ``phases`` (by default: finished)."""

    def done() -> dict[str, Any] | None:
        obj = cluster.get("v1", "pods", name, ns)
        return obj if obj and (obj.get("status") or {}).get("phase") in phases else None

    return cluster.wait_for(done, timeout=timeout, what=f"pod {name} to reach {phases}")
