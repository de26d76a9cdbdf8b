"""Admission of writes by a node's agent: the chart's ValidatingAdmissionPolicy, in the emulator.

RBAC (``auth.agent_identity``) says which resources an agent may touch; these checks say what it
may write there, like ``helm/edgemodel/templates/agent-rbac.yaml``'s policy does on a real
cluster (``tests/helm/test_node_isolation.py`` runs the chart's CEL and these checks on the same
requests and expects the same verdicts). One :class:`Check` per ``(group, resource)``: a rule for
another resource (e.g. ``coordination.k8s.io`` ``leases``) is one more entry in :data:`CHECKS`.

The identity of the request is set by the API server per request (:data:`REQUESTER`); controllers
inside the emulator (garbage collector, kubelet) act as the admin and are never checked.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from edgemodel_dev import errors
from edgemodel_dev.auth import ADMIN, Identity

JSON = dict[str, Any]

REQUESTER: ContextVar[Identity] = ContextVar("requester", default=ADMIN)
"""Who sent the request being served (the API server sets it; everything else is the admin)."""


@dataclass(frozen=True)
class Write:
    """One CREATE or UPDATE (patches are updates) as admission sees it."""

    operation: str
    subresource: str
    name: str
    obj: JSON
    old: JSON | None


Check = Callable[[str, Write], str | None]
"""(the agent's node name, the write) -> why it is denied, or None."""


def _models(obj: JSON | None) -> list[Any]:
    return list(((obj or {}).get("spec") or {}).get("models") or [])


def own_edgeagent(node: str, write: Write) -> str | None:
    """An agent writes only the EdgeAgent named after its node, never its spec.models (the operator's)."""
    if write.name != node:
        return f"the edge agent on node {node} may only write the EdgeAgent named {node}, not {write.name}"
    if write.operation == "UPDATE" and write.subresource != "status" and _models(write.obj) != _models(write.old):
        return "spec.models of an EdgeAgent is written only by the operator"
    if write.operation == "CREATE" and _models(write.obj):
        return "an edge agent creates its EdgeAgent without model assignments (the operator writes spec.models)"
    return None


CHECKS: dict[tuple[str, str], Check] = {
    ("edgemodel.io", "edgeagents"): own_edgeagent,
}
"""(API group, plural) -> the check of agents' writes there (the chart's policy for the same resource)."""


def admit(group: str, plural: str, write: Write) -> None:
    """Raise 403 Forbidden when the requester is a node's agent and the policy denies ``write``."""
    node = REQUESTER.get().node
    check = CHECKS.get((group, plural))
    if node is None or check is None:
        return
    denied = check(node, write)
    if denied is not None:
        raise errors.forbidden(
            f'{plural}.{group} "{write.name}" is forbidden: ValidatingAdmissionPolicy '
            f"'edgemodel-agent-own-edgeagent' denied request: {denied}", group, plural, write.name,
        )
