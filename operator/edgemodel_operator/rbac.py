"""The Kubernetes API permissions the operator uses, and why (the end-to-end tests run the operator
with exactly these; the Helm chart's ``files/rbac.yaml`` must grant them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Permission:
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    scope: str = "workload"
    """cluster (ClusterRole), workload (where EdgeModels are), peering (kopf, per the mode) or release (the
    product's namespace, where the agents' Leases are)."""


PERMISSIONS: tuple[Permission, ...] = (
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"),
               "kopf discovers the edgemodel.io resources", "cluster"),
    Permission("", "namespaces", ("list", "watch"),
               "kopf follows the watched namespaces (only with --namespace)", "cluster"),
    Permission("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch"),
               "kopf peering of the replicas when watching all namespaces", "peering"),
    Permission("kopf.dev", "kopfpeerings", ("list", "watch", "patch"),
               "kopf peering of the replicas when watching some namespaces", "peering"),
    Permission("edgemodel.io", "edgeagents", ("get", "list", "watch", "patch"),
               "the fleet index (watch), spec.models assignments (JSON patch), a fresh read after a conflict, "
               "the list of holders on deletion", "cluster"),
    Permission("", "nodes", ("list", "watch"),
               "spec.selector and the cloud tier select on Node labels (an admin's, which no agent can change)",
               "cluster"),
    Permission("coordination.k8s.io", "leases", ("list", "watch"),
               "node liveness from the agents' heartbeat Leases (one list + watch, no handler per renewal)", "release"),
    Permission("edgemodel.io", "edgemodels", ("get", "list", "watch", "patch"),
               "reconcile reads the object fresh; kopf watches and patches finalizer and progress annotations"),
    Permission("edgemodel.io", "edgemodels/status", ("patch",), "phase, conditions, revisions, rollout progress"),
    Permission("batch", "jobs", ("get", "list", "watch", "create", "delete"),
               "the conversion Job: created once, followed (watch), replaced when built from another spec"),
    Permission("", "pods", ("list",), "the conversion Pod's termination message holds the ConversionResult"),
    Permission("", "events", ("create",), "Events about EdgeModels (kopf posts them)"),
    Permission("edgemodel.io", "federatedtrainings", ("get", "list", "watch", "patch"),
               "FederatedTraining: kopf follows them (daemon), the reconcile reads each fresh"),
    Permission("edgemodel.io", "federatedtrainings/status", ("patch",), "rounds, accuracy, conditions of a training"),
    Permission("", "services", ("create", "delete"), "the aggregation server's Service, deleted when training ends"),
    Permission("", "secrets", ("create", "delete"),
               "a training's throwaway CA and server certificate (created at start, deleted at the end)"),
)
