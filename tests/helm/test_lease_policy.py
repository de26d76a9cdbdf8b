"""The ValidatingAdmissionPolicy that lets each agent renew only the heartbeat Lease of its own node,
evaluated with a real CEL implementation (cel-python) on admission requests shaped like the API server's."""

from __future__ import annotations

from typing import Any

import celpy
import pytest

from tests.helm.chart import full, one, render

AGENT_USER = "system:serviceaccount:edge-system:em-edgemodel-agent"
NODE_KEY = "authentication.kubernetes.io/node-name"


def _policy(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render(values or {}), "ValidatingAdmissionPolicy", full("agent-own-lease"))["spec"]


def admit(op: str, name: str, holder: str | None = "edge-1", *, user: str = AGENT_USER,
          node: str | None = "edge-1") -> tuple[bool, str]:
    """(allowed, message) of the policy for one Lease request, as the API server would evaluate it."""
    spec = _policy()
    request = {"operation": op, "userInfo": {"username": user, "extra": {NODE_KEY: [node]} if node else {}}}
    lease = {"metadata": {"name": name, "namespace": "edge-system"},
             "spec": {"holderIdentity": holder} if holder else {}}
    env = celpy.Environment()
    act: dict[str, Any] = {"request": celpy.json_to_cel(request),
                           "object": celpy.json_to_cel(None if op == "DELETE" else lease),
                           "oldObject": celpy.json_to_cel(None if op == "CREATE" else lease)}

    def ev(expr: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expr)).evaluate(activation)

    if not all(ev(m["expression"], act) for m in spec["matchConditions"]):
        return True, "not matched"
    variables = {v["name"]: str(ev(v["expression"], act)) for v in spec["variables"]}
    act["variables"] = celpy.json_to_cel(variables)
    for rule in spec["validations"]:
        if not ev(rule["expression"], act):
            return False, str(ev(rule["messageExpression"], act)) if "messageExpression" in rule else rule["message"]
    return True, ""


def test_policy_matches_leases_of_the_release_namespace_and_binds_deny() -> None:
    spec = _policy()
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["coordination.k8s.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
        "resources": ["leases"]}]
    assert spec["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "edge-system"}}
    assert spec["failurePolicy"] == "Fail"
    binding = one(render({}), "ValidatingAdmissionPolicyBinding", full("agent-own-lease"))
    assert binding["spec"] == {"policyName": full("agent-own-lease"), "validationActions": ["Deny"]}


@pytest.mark.parametrize("op", ["CREATE", "UPDATE"])
def test_an_agent_renews_its_own_lease(op: str) -> None:
    assert admit(op, "edge-1") == (True, "")


@pytest.mark.parametrize("op", ["CREATE", "UPDATE"])
def test_an_agent_may_not_renew_another_nodes_lease(op: str) -> None:
    assert admit(op, "edge-2", "edge-2") == (
        False, "the edge agent on node edge-1 may only renew the Lease named edge-1, not edge-2")


def test_an_agent_may_not_hold_its_lease_for_another_node_or_delete_it() -> None:
    assert admit("UPDATE", "edge-1", "edge-2") == (False, "the Lease of node edge-1 must be held by edge-1")
    assert admit("CREATE", "edge-1", None) == (False, "the Lease of node edge-1 must be held by edge-1")
    assert admit("DELETE", "edge-1") == (False, "edge agents never delete Leases")


def test_a_token_without_node_name_is_refused_and_others_are_not_matched() -> None:
    allowed, message = admit("UPDATE", "edge-1", node=None)
    assert not allowed
    assert "Kubernetes >= 1.30" in message
    assert admit("UPDATE", "edge-2", user="system:serviceaccount:edge-system:em-edgemodel-operator") == (
        True, "not matched")


def test_without_node_isolation_there_is_no_policy_but_the_lease_role_stays() -> None:
    docs = render({"agent": {"nodeIsolation": False}})
    assert not [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    assert one(docs, "Role", full("agent-lease"))["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
